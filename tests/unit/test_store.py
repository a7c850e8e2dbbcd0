"""Job table semantics: atomic claims, monotonic progress, terminal states stay terminal."""

from __future__ import annotations

import json
from datetime import timedelta

import fakeredis
import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from stack.db import make_engine
from stack.jobs.events import RedisPublisher, channel_for
from stack.jobs.liveness import Owner
from stack.jobs.migrate import current_revision, head_revision, upgrade
from stack.jobs.models import JobStatus, as_utc, utcnow
from stack.jobs.store import JobStore
from stack.runtime import Runtime


def test_migration_creates_the_table_and_is_idempotent(runtime: Runtime) -> None:
    assert "stack_jobs" in inspect(runtime.engine).get_table_names()
    assert current_revision(runtime.engine) == head_revision()
    assert upgrade(runtime.engine) == head_revision()


def test_create_is_pending_at_zero(runtime: Runtime) -> None:
    job = runtime.store.create(kind="demo", queue="default", params={"seconds": 1})
    stored = runtime.store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.progress, stored.attempts, stored.dispatched_at) == (
        JobStatus.PENDING,
        0,
        0,
        None,
    )


def test_claim_records_the_owner_and_never_takes_a_running_job(runtime: Runtime) -> None:
    store = runtime.store
    job = store.create(kind="demo", queue="default", params={})
    first = store.claim(job.id, owner=Owner("w1", worker_id="id-1", pid=11))
    assert first is not None and first.attempts == 1
    assert (first.worker, first.worker_id, first.worker_pid) == ("w1", "id-1", 11)
    assert first.claimed_at is not None
    store.set_progress(job.id, 30, "a third", attempt=1)
    assert store.claim(job.id, owner=Owner("w2")) is None  # running: whatever the message


def test_release_then_claim_takes_a_lost_attempt_over(runtime: Runtime) -> None:
    store = runtime.store
    job = store.create(kind="demo", queue="default", params={})
    first = store.claim(job.id, owner=Owner("w1", worker_id="id-1", pid=11))
    assert first is not None
    store.set_progress(job.id, 30, "a third", attempt=1)
    released = store.release(first, reason="w1 died", give_up=None, resend=True)
    assert released is not None
    assert (released.status, released.lost_attempts, released.worker_id) == (JobStatus.PENDING, 1, None)
    assert released.dispatched_at is None  # the sweep sends a new message
    assert store.release(first, reason="twice", give_up=None, resend=True) is None  # moved on already
    second = store.claim(job.id, owner=Owner("w2", worker_id="id-2", pid=22))
    assert second is not None
    assert (second.attempts, second.worker, second.progress) == (2, "w2", 30)
    assert second.started_at == first.started_at
    # The first run, if it still runs somewhere, can record nothing any more.
    assert store.set_progress(job.id, 90, "zombie", attempt=1) is False
    assert store.succeed(job.id, result="zombie", attempt=1) is False
    assert store.fail(job.id, error="zombie", attempt=1) is None
    assert store.succeed(job.id, result="ok", attempt=2) is True


def test_release_of_the_last_attempt_fails_the_job(runtime: Runtime) -> None:
    store = runtime.store
    job = store.create(kind="demo", queue="default", params={})
    claimed = store.claim(job.id, owner=Owner("w1", worker_id="id-1", pid=11))
    assert claimed is not None
    failed = store.release(claimed, reason="died", give_up="worker lost 1 time", resend=False)
    assert failed is not None
    assert (failed.status, failed.error, failed.finished_at is not None) == (
        JobStatus.FAILURE,
        "worker lost 1 time",
        True,
    )


def test_finished_or_revoked_jobs_are_not_claimed(runtime: Runtime) -> None:
    store = runtime.store
    done = store.create(kind="demo", queue="default", params={})
    store.claim(done.id, owner=Owner("w"))
    store.succeed(done.id, result={"ok": True}, attempt=1)
    assert store.claim(done.id, owner=Owner("w")) is None
    revoked = store.create(kind="demo", queue="default", params={})
    assert store.revoke(revoked.id) is not None
    assert store.claim(revoked.id, owner=Owner("w")) is None
    assert store.claim("no-such-id", owner=Owner("w")) is None


def test_progress_in_the_database_never_goes_backwards(runtime: Runtime) -> None:
    store = runtime.store
    job = store.create(kind="demo", queue="default", params={})
    store.claim(job.id, owner=Owner("w"))
    assert store.set_progress(job.id, 60, "sixty", attempt=1)
    assert store.set_progress(job.id, 20, "a retried attempt starting over", attempt=1)
    stored = store.get(job.id)
    assert stored is not None and stored.progress == 60


def test_terminal_states_stay_terminal(runtime: Runtime) -> None:
    store = runtime.store
    job = store.create(kind="demo", queue="default", params={})
    store.claim(job.id, owner=Owner("w"))
    store.fail(job.id, error="boom\x00")
    assert store.succeed(job.id, result=1, attempt=1) is False
    assert store.revoke(job.id) is None
    assert store.set_progress(job.id, 90, "late", attempt=1) is False
    stored = store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.error, stored.finished_at is not None) == (
        JobStatus.FAILURE,
        "boom\\0",
        True,
    )


def test_heartbeats_register_refresh_and_forget_workers(runtime: Runtime) -> None:
    store = runtime.store
    store.register_worker(worker_id="id-1", name="worker@a", pid=10, queues=["default"])
    later = utcnow() + timedelta(seconds=5)
    assert store.heartbeat("id-1", running=["j1", "j2"], at=later)
    worker = store.workers()["id-1"]
    assert (worker.name, worker.running, as_utc(worker.heartbeat_at)) == ("worker@a", ["j1", "j2"], later)
    assert store.purge_workers(silent_before=later - timedelta(seconds=1)) == 0
    store.forget_worker("id-1")
    assert store.heartbeat("id-1", running=[], at=later) is False  # gone: the worker registers again
    assert store.workers() == {}


def test_list_filters_and_orders_newest_first(runtime: Runtime) -> None:
    store = runtime.store
    ids = [store.create(kind=k, queue="q", params={}).id for k in ("demo", "write_log", "demo")]
    store.revoke(ids[0])
    assert [j.id for j in store.list(kind="demo")] == [ids[2], ids[0]]
    assert [j.id for j in store.list(status=JobStatus.REVOKED)] == [ids[0]]
    assert len(store.list(limit=2)) == 2


def test_events_are_published_on_the_job_channel() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    subscriber = fakeredis.FakeRedis(server=server).pubsub()
    subscriber.subscribe(channel_for("j1"))
    subscriber.get_message(timeout=1)  # the subscribe confirmation
    RedisPublisher(client).publish("j1", {"status": "progress", "progress": 40})
    message = subscriber.get_message(timeout=1)
    assert message is not None
    assert json.loads(message["data"]) == {"status": "progress", "progress": 40}


def test_publisher_survives_a_dead_redis() -> None:
    publisher = RedisPublisher.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    publisher.publish("j1", {"status": "progress"})  # logs a warning, never raises


def test_created_job_is_pending_and_undispatched_until_marked(runtime: Runtime) -> None:
    store = runtime.store
    job = store.create(kind="demo", queue="default", params={"seconds": 1})
    stored = store.get(job.id)
    assert stored is not None and stored.status is JobStatus.PENDING and stored.params == {"seconds": 1}
    assert stored.dispatched_at is None  # what the sweep looks for
    assert store.mark_dispatched([job.id, "no-such-job"]) == 1
    assert store.get(job.id).dispatched_at is not None  # type: ignore[union-attr]


def test_mark_dispatched_keeps_the_time_a_claim_recorded(runtime: Runtime) -> None:
    store = runtime.store
    job = store.create(kind="demo", queue="default", params={})
    claimed = store.claim(job.id, owner=Owner("w@h"))  # a fast worker can claim before the mark lands
    assert claimed is not None and claimed.dispatched_at is not None
    assert store.mark_dispatched([job.id]) == 0
    assert as_utc(store.get(job.id).dispatched_at) == as_utc(claimed.dispatched_at)  # type: ignore[union-attr, arg-type]


def test_postgresql_unreachable_is_sqlalchemys_operational_error_on_every_direct_write() -> None:
    """The direct statements (stack.jobs.direct_sql) check out raw connections: a refused connect
    must still reach callers as the error the API turns into 503 and a worker into a retry."""
    store = JobStore(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing"))
    assert store._direct is not None
    owner = Owner("w1", worker_id="id-1", pid=11)
    try:
        with pytest.raises(OperationalError):
            store.create(kind="demo", queue="default", params={})
        with pytest.raises(OperationalError):
            store.claim("some-id", owner=owner)
        with pytest.raises(OperationalError):
            store.succeed("some-id", result=None, attempt=1)
        with pytest.raises(OperationalError), store.pinned():
            pass
    finally:
        store.dispose()
