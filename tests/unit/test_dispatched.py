"""Dispatch marks: written off the request path, many per statement, never lost on shutdown."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

from stack.jobs.celery_app import create_celery
from stack.jobs.dispatched import DispatchRecorder
from stack.jobs.models import JobStatus
from stack.jobs.service import JobService
from stack.runtime import Runtime


class Recorded:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.written = threading.Event()

    def __call__(self, job_ids: Sequence[str]) -> int:
        self.calls.append(list(job_ids))
        self.written.set()
        if self.fail:
            raise ConnectionError("database unreachable")
        return len(job_ids)


def test_a_burst_is_marked_in_one_statement() -> None:
    mark = Recorded()
    recorder = DispatchRecorder(mark, linger=0.2)
    for n in range(50):
        recorder.add(f"job-{n}")
    assert mark.written.wait(5), "no dispatch marks written within 5 s"
    recorder.close()
    assert mark.calls == [[f"job-{n}" for n in range(50)]]


def test_close_writes_what_is_pending() -> None:
    mark = Recorded()
    recorder = DispatchRecorder(mark, linger=60)  # would wait a minute, but close does not
    recorder.add("a")
    recorder.add("b")
    recorder.close(timeout=5)
    assert [job for call in mark.calls for job in call] == ["a", "b"]
    recorder.add("late")  # a request finishing after shutdown began: written at once
    assert mark.calls[-1] == ["late"]


def test_batches_are_capped() -> None:
    mark = Recorded()
    recorder = DispatchRecorder(mark, linger=0.2, max_batch=10)
    for n in range(25):
        recorder.add(str(n))
    recorder.close(timeout=5)
    assert [len(call) for call in mark.calls] == [10, 10, 5]


def test_a_failed_write_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    mark = Recorded(fail=True)
    recorder = DispatchRecorder(mark, linger=0)
    with caplog.at_level(logging.WARNING, logger="stack.jobs.dispatched"):
        recorder.add("x")
        recorder.close(timeout=5)
    assert mark.calls == [["x"]]
    assert "1 published jobs not marked dispatched" in caplog.text and "sweep" in caplog.text


def test_marks_reach_the_job_table(runtime: Runtime) -> None:
    store = runtime.store
    jobs = [store.create(kind="demo", queue="default", params={}) for _ in range(3)]
    recorder = DispatchRecorder(store.mark_dispatched, linger=0.01)
    for job in jobs:
        recorder.add(job.id)
    recorder.close(timeout=5)
    assert all(store.get(job.id).dispatched_at is not None for job in jobs)  # type: ignore[union-attr]


def test_a_submit_is_marked_dispatched_by_shutdown(runtime: Runtime) -> None:
    service = JobService(runtime, create_celery(runtime.settings, runtime.registry))  # memory broker
    job = service.submit(runtime.registry.get("demo"), {"seconds": 0})
    assert job.dispatched_at is not None  # what the caller is told
    service.close()  # the API's shutdown
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.PENDING and stored.dispatched_at is not None
