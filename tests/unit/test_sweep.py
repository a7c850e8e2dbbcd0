"""The sweep: sends what never reached the broker, re-queues what lost its worker, purges."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import fakeredis
import pytest
import redis
from celery import Celery
from sqlalchemy.exc import OperationalError

from stack import cli
from stack.jobs.celery_app import create_celery
from stack.jobs.liveness import Owner
from stack.jobs.migrate import upgrade
from stack.jobs.models import Job, JobStatus, utcnow
from stack.jobs.sweep import Sweeper, SweepReport, sweep
from stack.runtime import Runtime, build_runtime
from tests.unit.conftest import make_settings


@pytest.fixture
def celery(runtime: Runtime) -> Celery:
    return create_celery(runtime.settings, runtime.registry)  # memory transport: publishes succeed


def later(seconds: float):  # type: ignore[no-untyped-def]
    return utcnow() + timedelta(seconds=seconds)


def test_undispatched_job_is_sent_once_after_the_grace(runtime: Runtime, celery: Celery) -> None:
    job = runtime.store.create(kind="demo", queue="default", params={})
    assert sweep(runtime, celery).dispatched == 0  # younger than STACK_DISPATCH_GRACE: may be in flight
    report = sweep(runtime, celery, now=later(runtime.settings.dispatch_grace + 1))
    assert report.dispatched == 1
    assert runtime.store.get(job.id).dispatched_at is not None  # type: ignore[union-attr]
    assert sweep(runtime, celery, now=later(60)).dispatched == 0  # never twice


def test_broker_still_down_leaves_the_job_for_next_time(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, celery_broker_url="redis://127.0.0.1:1/0", broker_timeout=0.3)
    runtime = build_runtime(settings)
    upgrade(runtime.engine)
    job = runtime.store.create(kind="demo", queue="default", params={})
    report = sweep(runtime, create_celery(settings, runtime.registry), now=later(60))
    assert report.broker_down and report.dispatched == 0
    assert runtime.store.get(job.id).dispatched_at is None  # type: ignore[union-attr]


# --- running jobs whose attempt is lost --------------------------------------------------------------
def running_on(runtime: Runtime, worker_id: str = "id-1", *, kind: str = "demo") -> Job:
    """A job claimed by worker `worker_id` (registered, heartbeating now)."""
    store = runtime.store
    if worker_id not in store.workers():
        store.register_worker(worker_id=worker_id, name=f"worker-{worker_id}@host", pid=1, queues=["default"])
    job = store.create(kind=kind, queue="default", params={})
    claimed = store.claim(job.id, owner=Owner(f"worker-{worker_id}@host", worker_id=worker_id, pid=2))
    assert claimed is not None
    return claimed


def test_a_dead_workers_job_is_requeued_and_sent_again(runtime: Runtime, celery: Celery) -> None:
    job = running_on(runtime)
    dead_after = runtime.settings.worker_dead_after
    assert sweep(runtime, celery, now=later(dead_after - 1)).requeued == 0  # may still run
    report = sweep(runtime, celery, now=later(dead_after + 1))
    assert (report.requeued, report.dispatched) == (1, 1)
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.PENDING
    assert "attempt 1 lost" in stored.message and "stopped heartbeating" in stored.message
    assert (stored.attempts, stored.lost_attempts, stored.worker_id) == (1, 1, None)
    assert stored.dispatched_at is not None  # a new message went out


def test_a_live_workers_long_job_is_left_alone(runtime: Runtime, celery: Celery) -> None:
    job = running_on(runtime)
    now = later(runtime.settings.task_time_limit * 10)
    runtime.store.heartbeat("id-1", running=[job.id], at=now)
    assert sweep(runtime, celery, now=now).requeued == 0
    assert runtime.store.get(job.id).status is JobStatus.STARTED  # type: ignore[union-attr]


def test_a_job_its_live_worker_no_longer_runs_is_requeued(runtime: Runtime, celery: Celery) -> None:
    job = running_on(runtime)  # e.g. the database went away mid-attempt: nothing was recorded
    soon = later(1)
    runtime.store.heartbeat("id-1", running=[], at=soon)  # too close to the claim to judge
    assert sweep(runtime, celery, now=soon).requeued == 0
    now = later(runtime.settings.heartbeat_interval + 1)
    runtime.store.heartbeat("id-1", running=[], at=now)
    assert sweep(runtime, celery, now=now).requeued == 1
    stored = runtime.store.get(job.id)
    assert stored is not None and "alive but no longer running it" in stored.message


def test_a_job_of_a_worker_that_shut_down_is_requeued(runtime: Runtime, celery: Celery) -> None:
    job = running_on(runtime)
    runtime.store.forget_worker("id-1")
    assert sweep(runtime, celery).requeued == 1
    assert "is gone" in runtime.store.get(job.id).message  # type: ignore[union-attr]


def test_a_job_that_lost_its_worker_on_every_attempt_fails(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, task_max_retries=1))
    upgrade(runtime.engine)
    celery = create_celery(runtime.settings, runtime.registry)
    job = running_on(runtime, "id-1")
    assert sweep(runtime, celery, now=later(60)).requeued == 1
    runtime.store.register_worker(worker_id="id-2", name="worker-id-2@host", pid=1, queues=["default"])
    runtime.store.claim(job.id, owner=Owner("worker-id-2@host", worker_id="id-2", pid=2))
    report = sweep(runtime, celery, now=later(60))
    assert report.failed == 1
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILURE
    assert stored.error is not None and stored.error.startswith("worker lost 2 times while running this job")
    assert "gave up after 2 of 2 attempts" in stored.error


def test_no_liveness_judgement_right_after_a_database_outage(runtime: Runtime, celery: Celery) -> None:
    running_on(runtime)
    assert sweep(runtime, celery, now=later(600), judge_liveness=False).requeued == 0


def test_the_sweeper_survives_a_database_outage_and_waits_one_sweep_before_judging(
    runtime: Runtime, celery: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeper = Sweeper(runtime, celery)
    judged: list[bool] = []

    def fake_sweep(runtime: Runtime, celery: Celery, *, judge_liveness: bool) -> SweepReport:
        judged.append(judge_liveness)
        if len(judged) == 2:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return SweepReport()

    monkeypatch.setattr("stack.jobs.sweep.sweep", fake_sweep)
    results = [sweeper.run() for _ in range(4)]
    assert results[1] is None and results[3] is not None
    assert judged == [True, True, False, True]


def test_an_inline_job_silent_past_its_time_limit_is_requeued(runtime: Runtime, celery: Celery) -> None:
    job = runtime.store.create(kind="demo", queue="default", params={})
    runtime.store.claim(job.id, owner=Owner.inline())  # an API process that died mid-job
    settings = runtime.settings
    assert sweep(runtime, celery, now=later(settings.task_time_limit)).requeued == 0
    report = sweep(runtime, celery, now=later(settings.task_time_limit + settings.stall_margin + 1))
    assert (report.requeued, report.dispatched) == (1, 1)
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.PENDING and stored.lost_attempts == 1


def test_a_retry_whose_message_was_lost_is_sent_again(runtime: Runtime, celery: Celery) -> None:
    job = runtime.store.create(kind="demo", queue="default", params={})
    runtime.store.claim(job.id, owner=Owner("w", worker_id="id-1", pid=2))
    runtime.store.retry(job.id, error="flaky", countdown=1, attempt=1)
    settings = runtime.settings
    patience = settings.task_retry_backoff_max + settings.worker_dead_after
    assert sweep(runtime, celery, now=later(patience - 1)).requeued == 0  # its countdown may run
    assert sweep(runtime, celery, now=later(patience + 1)).requeued == 1
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.PENDING and stored.lost_attempts == 0


def test_finished_jobs_past_retention_are_purged(runtime: Runtime, celery: Celery) -> None:
    store = runtime.store
    old = store.create(kind="demo", queue="default", params={})
    store.claim(old.id, owner=Owner("w"))
    store.succeed(old.id, result=None, attempt=1)
    live = store.create(kind="demo", queue="default", params={})
    store.mark_dispatched([old.id, live.id])
    report = sweep(runtime, celery, now=later(runtime.settings.job_retention_days * 86400 + 60))
    assert report.purged == 1
    assert store.get(old.id) is None and store.get(live.id) is not None


# --- messages the broker lost ----------------------------------------------------------------------
@pytest.fixture
def on_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Runtime, fakeredis.FakeRedis]:
    """A runtime whose broker is Redis (a fake one the sweep counts queues on); messages still go
    out through the memory transport of the `celery` fixture."""
    runtime = build_runtime(make_settings(tmp_path, celery_broker_url="redis://127.0.0.1:6399/0"))
    upgrade(runtime.engine)
    broker = fakeredis.FakeRedis()
    monkeypatch.setattr("stack.jobs.sweep.redis_client", lambda url, timeout: broker)
    return runtime, broker


def sent_jobs(runtime: Runtime, count: int, queue: str = "default") -> list[str]:
    ids = [runtime.store.create(kind="demo", queue=queue, params={}).id for _ in range(count)]
    for job_id in ids:  # one by one: the oldest is marked first
        runtime.store.mark_dispatched([job_id])
    return ids


def test_pending_jobs_missing_from_their_queue_are_sent_again_oldest_first(
    on_redis: tuple[Runtime, fakeredis.FakeRedis], celery: Celery
) -> None:
    runtime, broker = on_redis
    oldest, middle, newest = sent_jobs(runtime, 3)
    broker.lpush("app:default", "the message of one of them")  # the queue lost the other two
    grace = runtime.settings.dispatch_grace
    assert sweep(runtime, celery).resent == 0  # within the grace a worker may be claiming them
    report = sweep(runtime, celery, now=later(grace + 1))
    assert report.resent == 2
    renewed = {job_id: runtime.store.get(job_id).dispatched_at for job_id in (oldest, middle, newest)}  # type: ignore[union-attr]
    assert renewed[oldest] > renewed[newest] and renewed[middle] > renewed[newest]  # type: ignore[operator]
    broker.lpush("app:default", "re-sent 1", "re-sent 2")
    assert sweep(runtime, celery, now=later(grace + 2)).resent == 0  # the queue holds them all now


def test_a_message_in_a_workers_hands_is_not_lost(
    on_redis: tuple[Runtime, fakeredis.FakeRedis], celery: Celery
) -> None:
    runtime, broker = on_redis
    oldest, taken, _queued = sent_jobs(runtime, 3)
    broker.lpush("app:default", "the message of the queued one")
    # A worker took one: kombu keeps it in `unacked` until the job is acknowledged.
    message = {"headers": {"id": taken, "task": "jobs.demo"}, "body": "..."}
    broker.hset("app:unacked", "delivery-tag-1", json.dumps([message, "", "default"]))
    report = sweep(runtime, celery, now=later(runtime.settings.dispatch_grace + 1))
    assert report.resent == 1  # only the oldest one was lost
    assert runtime.store.get(oldest).dispatched_at > runtime.store.get(taken).dispatched_at  # type: ignore[union-attr,operator]


def test_a_backlog_in_its_queue_is_left_alone(
    on_redis: tuple[Runtime, fakeredis.FakeRedis], celery: Celery
) -> None:
    runtime, broker = on_redis
    sent_jobs(runtime, 2, queue="content")  # no worker consumes `content`: both messages wait
    broker.lpush("app:content", "a", "b")
    runtime.store.create(kind="demo", queue="default", params={})  # never sent: the other rule's
    report = sweep(runtime, celery, now=later(600))
    assert (report.resent, report.dispatched) == (0, 1)


def test_an_unreachable_redis_leaves_lost_jobs_for_the_next_sweep(
    on_redis: tuple[Runtime, fakeredis.FakeRedis], celery: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, _broker = on_redis
    sent_jobs(runtime, 1)

    def unreachable(url: str, timeout: float) -> fakeredis.FakeRedis:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

    monkeypatch.setattr("stack.jobs.sweep.redis_client", unreachable)
    assert sweep(runtime, celery, now=later(60)).resent == 0


# --- `stack sweep`: the same, once, by hand -------------------------------------------------------
@pytest.mark.parametrize(
    ("broker", "exit_code", "printed"),
    [("memory://", 0, "dispatched 1"), ("redis://127.0.0.1:1/0", 1, "broker_down True")],
)
def test_stack_sweep_runs_it_once_and_says_what_it_did(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    broker: str,
    exit_code: int,
    printed: str,
) -> None:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    runtime = build_runtime(make_settings(tmp_path, database_url=database))
    upgrade(runtime.engine)
    runtime.store.create(kind="demo", queue="default", params={})  # never sent
    for name, value in {
        "DATABASE_URL": database,
        "CELERY_BROKER_URL": broker,
        "STACK_DISPATCH_GRACE": "0",
        "STACK_BROKER_TIMEOUT": "0.3",
    }.items():
        monkeypatch.setenv(name, value)
    cli.get_settings.cache_clear()
    try:
        assert cli.main(["sweep"]) == exit_code
    finally:
        cli.get_settings.cache_clear()
    assert printed in capsys.readouterr().out
