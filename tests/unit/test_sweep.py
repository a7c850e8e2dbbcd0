"""The sweep: sends what never reached the broker, re-queues what lost its worker, purges."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import fakeredis
import pytest
import redis
from celery import Celery

from stack import cli
from stack.jobs.celery_app import create_celery
from stack.jobs.migrate import upgrade
from stack.jobs.models import JobStatus, utcnow
from stack.jobs.sweep import sweep
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


def test_job_silent_past_its_time_limit_is_requeued_then_dispatched(runtime: Runtime, celery: Celery) -> None:
    job = runtime.store.create(kind="demo", queue="default", params={})
    runtime.store.claim(job.id, worker="gone@host")
    settings = runtime.settings
    assert sweep(runtime, celery, now=later(settings.task_time_limit)).requeued == 0  # may still run
    report = sweep(runtime, celery, now=later(settings.task_time_limit + settings.stall_margin + 1))
    assert (report.requeued, report.dispatched) == (1, 1)
    stored = runtime.store.get(job.id)
    assert stored is not None
    assert stored.status is JobStatus.PENDING and "worker was lost" in stored.message
    assert stored.dispatched_at is not None and stored.attempts == 1


def test_job_that_lost_its_worker_too_often_fails(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, task_max_retries=0))
    upgrade(runtime.engine)
    job = runtime.store.create(kind="demo", queue="default", params={})
    runtime.store.claim(job.id, worker="gone@host")
    s = runtime.settings
    report = sweep(
        runtime, create_celery(s, runtime.registry), now=later(s.task_time_limit + s.stall_margin + 1)
    )
    assert report.failed == 1
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILURE
    assert "worker was lost 1 times" in (stored.error or "")


def test_finished_jobs_past_retention_are_purged(runtime: Runtime, celery: Celery) -> None:
    store = runtime.store
    old = store.create(kind="demo", queue="default", params={})
    store.claim(old.id, worker="w")
    store.succeed(old.id, result=None)
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
    broker.lpush("default", "the message of one of them")  # the queue lost the other two
    grace = runtime.settings.dispatch_grace
    assert sweep(runtime, celery).resent == 0  # within the grace a worker may be claiming them
    report = sweep(runtime, celery, now=later(grace + 1))
    assert report.resent == 2
    renewed = {job_id: runtime.store.get(job_id).dispatched_at for job_id in (oldest, middle, newest)}  # type: ignore[union-attr]
    assert renewed[oldest] > renewed[newest] and renewed[middle] > renewed[newest]  # type: ignore[operator]
    broker.lpush("default", "re-sent 1", "re-sent 2")
    assert sweep(runtime, celery, now=later(grace + 2)).resent == 0  # the queue holds them all now


def test_a_backlog_in_its_queue_is_left_alone(
    on_redis: tuple[Runtime, fakeredis.FakeRedis], celery: Celery
) -> None:
    runtime, broker = on_redis
    sent_jobs(runtime, 2, queue="content")  # no worker consumes `content`: both messages wait
    broker.lpush("content", "a", "b")
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
