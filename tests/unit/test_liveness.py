"""Liveness on the worker side: the heartbeat, the main process noticing a dead pool process or a
hard time limit, and the settings that would otherwise run a job twice."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from fastapi.testclient import TestClient
from pydantic import BaseModel

from stack.api.app import create_app
from stack.config import load_settings
from stack.errors import ConfigError
from stack.jobs import supervision
from stack.jobs.celery_app import create_celery, visibility_timeout
from stack.jobs.liveness import Owner
from stack.jobs.migrate import upgrade
from stack.jobs.models import Job, JobStatus, utcnow
from stack.jobs.registry import JobRegistry
from stack.jobs.supervision import Supervisor, report_attempt_end
from stack.runtime import Runtime, build_runtime
from tests.unit.conftest import make_settings


@pytest.fixture
def supervisor(runtime: Runtime) -> Supervisor:
    made = Supervisor(runtime, name="worker@test", queues=["default"])
    made._running = lambda: running
    return made


running: list[str] = []


def claimed(runtime: Runtime, supervisor: Supervisor, *, pid: int = 4242) -> Job:
    job = runtime.store.create(kind="demo", queue="default", params={})
    owner = Owner(supervisor.name, worker_id=supervisor.worker_id, pid=pid)
    taken = runtime.store.claim(job.id, owner=owner)
    assert taken is not None
    return taken


# --- the heartbeat ----------------------------------------------------------------------------------
def test_a_worker_registers_beats_with_its_running_jobs_and_leaves(
    runtime: Runtime, supervisor: Supervisor
) -> None:
    supervisor.start()
    try:
        row = runtime.store.workers()[supervisor.worker_id]
        assert (row.name, row.queues, row.running) == ("worker@test", ["default"], [])
        running[:] = ["job-1"]
        supervisor.beat()
        assert runtime.store.workers()[supervisor.worker_id].running == ["job-1"]
    finally:
        running.clear()
        supervisor.stop()
    assert runtime.store.workers() == {}  # a clean shutdown leaves no row behind


def test_a_worker_started_before_the_migration_registers_once_it_can(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path))  # no tables yet
    supervisor = Supervisor(runtime, name="early@test", queues=["default"])
    supervisor.start()  # logs the failure and carries on
    try:
        upgrade(runtime.engine)
        supervisor.beat()
        assert supervisor.worker_id in runtime.store.workers()
    finally:
        supervisor.stop()


# --- the main process noticing an attempt's end -----------------------------------------------------
def test_a_dead_pool_process_requeues_its_job_at_once(runtime: Runtime, supervisor: Supervisor) -> None:
    job = claimed(runtime, supervisor)
    supervisor.attempt_ended(job.id, pid=4242, exc=WorkerLostError("signal 9"), hard_limit=330)
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.PENDING
    assert stored.lost_attempts == 1 and "its process (pid 4242) died" in stored.message
    assert stored.dispatched_at is not None  # Celery requeues the message itself


def test_a_dead_pool_process_on_the_last_attempt_fails_the_job(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, task_max_retries=0))
    upgrade(runtime.engine)
    supervisor = Supervisor(runtime, name="worker@test", queues=["default"])
    job = claimed(runtime, supervisor)
    supervisor.attempt_ended(job.id, pid=4242, exc=WorkerLostError("signal 9"), hard_limit=330)
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILURE
    assert stored.error is not None
    assert stored.error.startswith("worker lost 1 time while running this job: killed or out of memory?")


def test_the_hard_time_limit_fails_the_job_naming_the_limit(runtime: Runtime, supervisor: Supervisor) -> None:
    job = claimed(runtime, supervisor)
    supervisor.attempt_ended(job.id, pid=4242, exc=TimeLimitExceeded(330), hard_limit=330)
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILURE
    assert stored.error == (
        "killed at its hard time limit of 330 s (STACK_TASK_TIME_LIMIT, or the time_limit of kind "
        "'demo') during attempt 1"
    )


def test_another_process_attempt_is_left_alone(runtime: Runtime, supervisor: Supervisor) -> None:
    job = claimed(runtime, supervisor, pid=1111)  # e.g. a redelivery another pool process claimed
    supervisor.attempt_ended(job.id, pid=4242, exc=WorkerLostError("signal 9"), hard_limit=330)
    assert runtime.store.get(job.id).status is JobStatus.STARTED  # type: ignore[union-attr]


def test_the_main_process_reports_deaths_and_time_limits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int | None, str]] = []
    fake = SimpleNamespace(
        attempt_ended=lambda job_id, *, pid, exc, hard_limit: seen.append((job_id, pid, type(exc).__name__))
    )
    monkeypatch.setattr(supervision, "_current", fake)
    request = SimpleNamespace(
        id="job-1",
        worker_pid=77,
        time_limits=(None, None),
        task=SimpleNamespace(time_limit=None, app=SimpleNamespace(conf=SimpleNamespace(task_time_limit=330))),
    )
    for exc in (WorkerLostError("gone"), TimeLimitExceeded(330), ValueError("a handler's own error")):
        info: Any = SimpleNamespace(exception=exc)
        report_attempt_end(request, info)
    assert seen == [("job-1", 77, "WorkerLostError"), ("job-1", 77, "TimeLimitExceeded")]


# --- settings that would run a job twice ------------------------------------------------------------
class NoParams(BaseModel):
    pass


def registry_with_limit(limit: float) -> JobRegistry:
    registry = JobRegistry()
    registry.kind("slow", params=NoParams, soft_time_limit=limit - 10, time_limit=limit)(lambda p, j: None)
    return registry


def test_the_visibility_timeout_outlasts_the_longest_kind(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert visibility_timeout(settings, registry_with_limit(900)) == 960
    assert visibility_timeout(settings, registry_with_limit(60)) == settings.task_time_limit + 60
    app = create_celery(settings, registry_with_limit(900))
    assert app.conf.broker_transport_options["visibility_timeout"] == 960


def test_an_explicit_visibility_timeout_below_a_kinds_limit_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, visibility_timeout=600)
    with pytest.raises(ConfigError, match=r"STACK_VISIBILITY_TIMEOUT=600 .* job kind 'slow' \(900 s\)"):
        visibility_timeout(settings, registry_with_limit(900))


def test_dead_after_must_cover_two_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv("STACK_WORKER_DEAD_AFTER", "15")
    with pytest.raises(
        ConfigError, match=r"STACK_WORKER_DEAD_AFTER .* at least twice STACK_HEARTBEAT_INTERVAL"
    ):
        load_settings()


# --- results the database cannot store ----------------------------------------------------------------
def test_a_nan_result_fails_the_job_inline_instead_of_a_500(tmp_path: Path) -> None:
    registry = JobRegistry()
    registry.kind("nan", params=NoParams)(lambda params, job: {"score": math.nan})
    settings = make_settings(tmp_path, celery_enabled=False)
    upgrade(build_runtime(settings, registry).engine)
    with TestClient(create_app(settings, registry=registry)) as client:
        response = client.post("/api/jobs/nan", json={})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "failure" and "cannot be stored as JSON" in body["error"]


def test_an_old_heartbeat_is_what_makes_a_worker_dead(runtime: Runtime, supervisor: Supervisor) -> None:
    from stack.jobs.liveness import lost_reason

    job = claimed(runtime, supervisor)
    supervisor.start()
    try:
        worker = runtime.store.workers()[supervisor.worker_id]
        policy = runtime.runner.liveness
        now = utcnow()
        assert lost_reason(job, worker, now=now, dead_after=policy.dead_after, settle=policy.settle) is None
        later = now + timedelta(seconds=policy.dead_after + 1)
        reason = lost_reason(job, worker, now=later, dead_after=policy.dead_after, settle=policy.settle)
        assert reason is not None and "stopped heartbeating" in reason
    finally:
        supervisor.stop()
