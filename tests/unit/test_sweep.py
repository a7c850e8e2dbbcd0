"""The sweep: sends what never reached the broker, re-queues what lost its worker, purges."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery

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
