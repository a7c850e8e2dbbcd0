"""An attempt's writes on a real PostgreSQL: the statements of stack.jobs.direct_sql keep the rules
of the portable ones (stack.jobs.store) and fail the way SQLAlchemy's execution would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import DataError, OperationalError

from stack.config import normalise_database_url
from stack.db import make_engine
from stack.jobs.liveness import Owner
from stack.jobs.migrate import upgrade
from stack.jobs.models import Job, JobStatus
from stack.jobs.store import JobStore, NewJob

pytestmark = pytest.mark.e2e

OWNER = Owner("one@host", worker_id="w-1", pid=4321)
# What an attempt's writes decide; ids and times differ from run to run.
DECIDED = ("kind", "status", "progress", "message", "params", "result", "error", "attempts", "worker")


@pytest.fixture(scope="module")
def engine_url(stack_database_url: str) -> str:
    url = normalise_database_url(stack_database_url)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["direct", "portable"])
def store(request: pytest.FixtureRequest, engine_url: str) -> Iterator[JobStore]:
    store = JobStore(make_engine(engine_url))
    assert store._direct is not None, "PostgreSQL through psycopg should take the direct statements"
    if request.param == "portable":
        store._direct = None
    yield store
    store.dispose()


def decided(job: Job | None) -> dict[str, Any]:
    assert job is not None
    return {name: getattr(job, name) for name in DECIDED}


def backend_pid(pinned: JobStore) -> int:
    """The PostgreSQL backend of the connection a pinned store holds for its attempt."""
    pooled = pinned._pinned_raw or (pinned._pinned.connection if pinned._pinned else None)
    assert pooled is not None, "not a pinned store"
    return int(pooled.driver_connection.info.backend_pid)  # type: ignore[union-attr]


def one_attempt(store: JobStore) -> dict[str, Any]:
    """Every rule of one attempt's claim, progress and success; what the row ends as."""
    job = store.create(kind="demo", queue="default", params={"seconds": 0, "text": "é ✓"})
    with store.pinned() as pinned:
        claimed = pinned.claim(job.id, owner=OWNER)
        assert claimed is not None and claimed.status is JobStatus.STARTED and claimed.attempts == 1
        assert (claimed.worker, claimed.worker_id, claimed.worker_pid) == ("one@host", "w-1", 4321)
        assert claimed.claimed_at is not None and claimed.started_at == claimed.claimed_at
        assert claimed.params == {"seconds": 0, "text": "é ✓"}
        assert pinned.claim(job.id, owner=OWNER) is None, "a running job is never claimed twice"
        assert pinned.set_progress(job.id, 60, "more than half", attempt=1)
        assert pinned.set_progress(job.id, 30, "late news", attempt=1)
        assert (pinned.get(job.id) or job).progress == 60, "progress never goes back"
        assert not pinned.set_progress(job.id, 70, "from a lost attempt", attempt=2)
        assert not pinned.succeed(job.id, result={"from": "a lost attempt"}, attempt=2)
        assert pinned.succeed(job.id, result={"image": "ok.png", "sizes": [1, 2.5]}, attempt=1)
        assert not pinned.succeed(job.id, result={"again": True}, attempt=1), "success is terminal"
        assert not pinned.set_progress(job.id, 80, "after the end", attempt=1)
        assert pinned.claim(job.id, owner=OWNER) is None, "a finished job is never claimed"
    return decided(store.get(job.id))


def test_one_attempt_follows_the_rules_and_ends_as_the_portable_statements_do(store: JobStore) -> None:
    assert one_attempt(store) == {
        "kind": "demo",
        "status": JobStatus.SUCCESS,
        "progress": 100,
        "message": "done",
        "params": {"seconds": 0, "text": "é ✓"},
        "result": {"image": "ok.png", "sizes": [1, 2.5]},
        "error": None,
        "attempts": 1,
        "worker": "one@host",
    }


def test_a_revoked_job_refuses_the_running_attempts_writes(store: JobStore) -> None:
    job = store.create(kind="demo", queue="default", params={})
    assert store.claim(job.id, owner=OWNER) is not None
    assert store.revoke(job.id) is not None
    assert not store.set_progress(job.id, 50, "still going", attempt=1)
    assert not store.succeed(job.id, result=None, attempt=1)
    assert decided(store.get(job.id))["status"] is JobStatus.REVOKED


def test_a_value_the_database_refuses_is_sqlalchemys_error_and_the_connection_stays(
    store: JobStore,
) -> None:
    job = store.create(kind="demo", queue="default", params={})
    with store.pinned() as pinned:
        with pytest.raises(DataError) as refused:
            pinned.claim(job.id, owner=Owner("n" * 300, worker_id="w-1", pid=1))  # worker is 255 long
        assert isinstance(refused.value.orig, psycopg.errors.StringDataRightTruncation)
        assert not refused.value.connection_invalidated
        assert pinned.claim(job.id, owner=OWNER) is not None, "the same connection goes on"


def test_a_connection_lost_mid_attempt_is_sqlalchemys_operational_error_and_leaves_the_pool(
    store: JobStore, engine_url: str
) -> None:
    job = store.create(kind="demo", queue="default", params={})
    admin = make_engine(engine_url, autocommit=True)
    try:
        with store.pinned() as pinned:
            assert pinned.claim(job.id, owner=OWNER) is not None
            pid = backend_pid(pinned)
            with admin.connect() as connection:
                connection.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
            with pytest.raises(OperationalError) as lost:
                pinned.succeed(job.id, result={"n": 1}, attempt=1)
            assert lost.value.connection_invalidated
        with store.pinned() as fresh:  # the pool hands out a new connection, not the dead one
            assert fresh.succeed(job.id, result={"n": 1}, attempt=1)
    finally:
        admin.dispose()
    assert decided(store.get(job.id))["result"] == {"n": 1}


def test_jobs_submitted_together_are_inserted_all_or_none(store: JobStore) -> None:
    group = [
        NewJob(kind=f"kind{n}", queue=f"queue{n}", params={"n": n, "text": "é\"'"}, canary=n == 2)
        for n in range(3)
    ]
    made = store.create_many(group)
    for job, new in zip(made, group, strict=True):
        stored = store.get(job.id)
        assert stored is not None
        assert (stored.kind, stored.queue, stored.params, stored.canary) == (
            new.kind,
            new.queue,
            new.params,
            new.canary,
        )
        assert (stored.status, stored.progress, stored.message) == (JobStatus.PENDING, 0, "queued")
        assert (stored.attempts, stored.lost_attempts, stored.dispatched_at) == (0, 0, None)
        assert stored.created_at == stored.updated_at == job.created_at
    before = len(store.list(limit=1000))
    refused = NewJob(kind="k" * 101, queue="default", params={})  # kind is 100 long
    with pytest.raises(DataError):
        store.create_many([NewJob(kind="demo", queue="default", params={}), refused])
    assert len(store.list(limit=1000)) == before, "the group's other row must not stay"
