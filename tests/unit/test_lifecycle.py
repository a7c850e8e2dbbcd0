"""A job's whole life, through the runner and through an in-process Celery worker (memory
transport, real task messages; never task_always_eager)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from stack.jobs.celery_app import create_celery
from stack.jobs.liveness import Owner
from stack.jobs.migrate import upgrade
from stack.jobs.models import Job, JobStatus
from stack.jobs.runner import Abandoned, AttemptAbandoned
from stack.jobs.service import JobService, publish
from stack.runtime import Runtime, build_runtime
from tests.unit.conftest import make_settings

ALL_QUEUES = ["default", "content", "logs"]


def wait_for(predicate: Callable[[], Job | None], what: str, timeout: float = 10.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = predicate()
        if job is not None:
            return job
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def until_status(runtime: Runtime, job_id: str, *statuses: JobStatus) -> Job:
    def check() -> Job | None:
        job = runtime.store.get(job_id)
        return job if job is not None and job.status in statuses else None

    last = runtime.store.get(job_id)
    try:
        return wait_for(check, f"job {job_id} to reach {', '.join(statuses)}")
    except AssertionError as exc:
        last = runtime.store.get(job_id)
        raise AssertionError(f"{exc}; it is {last.status if last else 'missing'}: {last!r}") from None


# --- the runner alone ---------------------------------------------------------------------------
def submit_row(runtime: Runtime, kind: str, **params: object) -> str:
    spec = runtime.registry.get(kind)
    return runtime.store.create(kind=kind, queue=spec.queue, params=spec.validate(params).model_dump()).id


def test_runner_success_goes_0_to_100_with_result(runtime: Runtime) -> None:
    job_id = submit_row(runtime, "demo", seconds=0, steps=4)
    outcome = runtime.runner.run(job_id, owner=Owner("w@test"))
    assert outcome.status is JobStatus.SUCCESS
    job = runtime.store.get(job_id)
    assert job is not None
    assert (job.status, job.progress, job.attempts, job.worker) == (JobStatus.SUCCESS, 100, 1, "w@test")
    assert job.result == {"steps": 4, "seconds": 0.0, "attempt": 1}
    assert job.started_at is not None and job.finished_at is not None


def test_runner_failure_records_the_error(runtime: Runtime) -> None:
    job_id = submit_row(runtime, "demo", seconds=0, steps=5, fail_at=3)
    assert runtime.runner.run(job_id, owner=Owner("w")).status is JobStatus.FAILURE
    job = runtime.store.get(job_id)
    assert job is not None and job.status is JobStatus.FAILURE
    assert job.error is not None and "failed at step 3" in job.error
    assert job.progress == 40  # steps 1 and 2 completed


def test_runner_transient_error_asks_for_retry_then_gives_up(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, task_max_retries=1))
    upgrade(runtime.engine)
    job_id = submit_row(runtime, "demo", seconds=0, transient_failures=5)
    first = runtime.runner.run(job_id, owner=Owner("w"))
    assert first.status is JobStatus.RETRY and first.countdown > 0
    stored = runtime.store.get(job_id)
    assert (
        stored is not None and stored.status is JobStatus.RETRY and "transient failure 1/5" in stored.message
    )
    second = runtime.runner.run(job_id, owner=Owner("w"))
    assert second.status is JobStatus.FAILURE
    assert second.job is not None and "gave up after 2 of 2 attempts" in (second.job.error or "")


def test_runner_does_not_rerun_a_finished_job(runtime: Runtime) -> None:
    job_id = submit_row(runtime, "demo", seconds=0)
    runtime.runner.run(job_id, owner=Owner("w"))
    again = runtime.runner.run(job_id, owner=Owner("w"))
    assert again.status is None
    job = runtime.store.get(job_id)
    assert job is not None and job.attempts == 1


def test_runner_unknown_job_id_is_a_noop(runtime: Runtime) -> None:
    assert runtime.runner.run("missing", owner=Owner("w")).status is None


def test_runner_result_must_be_json(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from stack.jobs.registry import JobRegistry

    registry = JobRegistry()

    class NoParams(BaseModel):
        pass

    @registry.kind("bad", params=NoParams)
    def bad(params: NoParams, job: object) -> object:
        return {"when": object()}

    runtime = build_runtime(make_settings(tmp_path), registry)
    upgrade(runtime.engine)
    job_id = runtime.store.create(kind="bad", queue="default", params={}).id
    outcome = runtime.runner.run(job_id, owner=Owner("w"))
    assert outcome.status is JobStatus.FAILURE
    assert outcome.job is not None and "cannot be stored as JSON" in (outcome.job.error or "")


# --- through Celery: an in-process worker on the memory transport ---------------------------------
@pytest.fixture(scope="module")
def worker_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = build_runtime(make_settings(tmp_path_factory.mktemp("worker")))
    upgrade(runtime.engine)
    yield runtime
    runtime.store.dispose()


@pytest.fixture(scope="module")
def service(worker_runtime: Runtime) -> Iterator[JobService]:
    app = create_celery(worker_runtime.settings, worker_runtime.registry)
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.stack_runtime._runtime = worker_runtime  # type: ignore[attr-defined]  # same SQLite file
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        queues=ALL_QUEUES,
        loglevel="WARNING",
        shutdown_timeout=10,
    ):
        service = JobService(worker_runtime, app)
        yield service
        service.close()


def test_worker_runs_job_to_success_with_progress(service: JobService) -> None:
    runtime = service.runtime
    job = service.submit(runtime.registry.get("demo"), {"seconds": 0.2, "steps": 4})
    assert job.status is JobStatus.PENDING and job.dispatched_at is not None
    done = until_status(runtime, job.id, JobStatus.SUCCESS, JobStatus.FAILURE)
    assert done.status is JobStatus.SUCCESS and done.progress == 100 and done.attempts == 1
    assert done.dispatched_at is not None  # never left for the sweep to send again


def test_worker_retries_transient_failures_until_success(service: JobService) -> None:
    runtime = service.runtime
    job = service.submit(runtime.registry.get("demo"), {"seconds": 0, "transient_failures": 2})
    done = until_status(runtime, job.id, JobStatus.SUCCESS, JobStatus.FAILURE)
    assert done.status is JobStatus.SUCCESS
    assert done.attempts == 3
    assert done.result == {"steps": 10, "seconds": 0.0, "attempt": 3}


def test_worker_failure(service: JobService) -> None:
    runtime = service.runtime
    job = service.submit(runtime.registry.get("demo"), {"seconds": 0, "steps": 2, "fail_at": 1})
    done = until_status(runtime, job.id, JobStatus.SUCCESS, JobStatus.FAILURE)
    assert done.status is JobStatus.FAILURE and "fail_at=1" in (done.error or "")


def test_cancel_stops_a_running_job(service: JobService) -> None:
    runtime = service.runtime
    job = service.submit(runtime.registry.get("demo"), {"seconds": 5, "steps": 50})
    until_status(runtime, job.id, JobStatus.PROGRESS)
    revoked = service.cancel(job.id)
    assert revoked is not None and revoked.status is JobStatus.REVOKED
    time.sleep(0.3)  # a running handler notices at its next progress report (every 0.1 s)
    job_after = runtime.store.get(job.id)
    assert job_after is not None
    assert job_after.status is JobStatus.REVOKED and job_after.progress < 100


def test_a_duplicate_message_never_runs_a_running_job_twice(
    service: JobService, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = service.runtime
    kind = runtime.registry.get("demo")
    job = service.submit(kind, {"seconds": 0.6, "steps": 6})
    until_status(runtime, job.id, JobStatus.PROGRESS)
    with caplog.at_level(logging.WARNING, logger="stack.jobs.runner"):
        publish(service.celery, kind, job.id)  # what a re-send by the sweep would deliver
        done = until_status(runtime, job.id, JobStatus.SUCCESS, JobStatus.FAILURE)
    assert done.status is JobStatus.SUCCESS and done.attempts == 1
    assert f"job {job.id} is already running" in caplog.text


def test_a_database_outage_mid_job_is_retried_and_resumes(
    service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    runtime = service.runtime
    store_type = type(runtime.store)
    real_set_progress = store_type.set_progress
    failed: list[str] = []

    def first_write_fails(self: object, job_id: str, percent: int, message: str, *, attempt: int) -> bool:
        if not failed:
            failed.append(job_id)
            raise OperationalError("UPDATE stack_jobs ...", {}, Exception("server closed the connection"))
        return real_set_progress(self, job_id, percent, message, attempt=attempt)  # type: ignore[arg-type]

    monkeypatch.setattr(store_type, "set_progress", first_write_fails)
    job = service.submit(runtime.registry.get("demo"), {"seconds": 0.1, "steps": 2})
    # The row stays `started` through the outage; the task's retry must take it over.
    done = until_status(runtime, job.id, JobStatus.SUCCESS, JobStatus.FAILURE)
    assert failed == [job.id]
    assert done.status is JobStatus.SUCCESS and done.attempts == 2


def test_routes_each_kind_to_its_queue(runtime: Runtime) -> None:
    app = create_celery(runtime.settings, runtime.registry)
    routes = app.conf.task_routes
    assert routes["jobs.generate_image"] == {"queue": "content"}
    assert routes["jobs.write_log"] == {"queue": "logs"}
    assert routes["jobs.demo"] == {"queue": "default"}
    conf = app.conf
    assert (conf.task_serializer, conf.accept_content) == ("json", ["json"])
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_database_outage_mid_job_is_not_recorded_as_the_jobs_failure(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    job_id = submit_row(runtime, "demo", seconds=0, steps=3)

    def database_gone(*args: object, **kwargs: object) -> bool:
        raise OperationalError("UPDATE stack_jobs ...", {}, Exception("server closed the connection"))

    monkeypatch.setattr(type(runtime.store), "set_progress", database_gone)
    with pytest.raises(AttemptAbandoned) as abandoned:  # the Celery task turns this into a retry
        runtime.runner.run(job_id, owner=Owner("w", worker_id="id-1"))
    assert abandoned.value.abandoned == Abandoned(worker_id="id-1", attempt=1)
    job = runtime.store.get(job_id)
    assert job is not None and job.status is JobStatus.STARTED and job.error is None
