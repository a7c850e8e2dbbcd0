"""The `hint` of a job that waits: which reason is chosen, when the cache refreshes, and the API
field (memory transport, no servers)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stack.jobs.hints import HintCache, QueueView, select_hint
from stack.jobs.models import Job, JobStatus
from tests.unit.test_api import client_for

BROKER = "redis://:***@h:6379/0"


def healthy(**overrides: object) -> QueueView:
    values: dict[str, object] = {
        "at": time.monotonic(),
        "broker": BROKER,
        "workers": ("content@h", "default@h"),
        "consumers": {"content": ("content@h",), "default": ("default@h",), "logs": ()},
        "depths": {"content": 0, "default": 0, "logs": 0},
    }
    values.update(overrides)
    return QueueView(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("view", "queue", "dispatched", "expected"),
    [
        (healthy(broker_ok=False), "content", True, f"the broker is unreachable ({BROKER})"),
        (healthy(), "content", False, "not handed to the broker yet"),
        (healthy(workers=(), consumers={}), "content", True, f"no worker is running on {BROKER}"),
        (healthy(), "logs", True, "no worker consumes queue 'logs'; start one: STACK_WORKER_QUEUES=logs"),
        (healthy(depths={"content": 7}), "content", True, "workers are alive but all busy (queue depth 7)"),
        (healthy(unacked=2), "content", True, "workers are alive but all busy (queue depth 0)"),
        (healthy(), "content", True, "its message is no longer in queue 'content' (lost by the broker"),
    ],
)
def test_select_hint(view: QueueView, queue: str, dispatched: bool, expected: str) -> None:
    hint = select_hint(view, queue, dispatched=dispatched)
    assert hint is not None and hint.startswith(expected), hint


def test_no_hint_when_nothing_looks_wrong() -> None:
    # Not a Redis broker: the queue cannot be looked into, so an empty one proves nothing.
    assert select_hint(healthy(depths=None), "content", dispatched=True) is None


def job(status: JobStatus = JobStatus.PENDING, age: float = 60, queue: str = "logs") -> Job:
    created = datetime.now(UTC) - timedelta(seconds=age)
    return Job(id="j", kind="k", queue=queue, status=status, created_at=created, dispatched_at=created)


def test_cache_hints_only_old_pending_jobs_and_only_once_it_knows() -> None:
    cache = HintCache(lambda: healthy(), hint_after=10)
    assert cache.hint_for(job(age=60)) is None  # nothing known yet: the refresher was woken
    cache.refresh()
    assert cache.hint_for(job(age=60)) == (
        "no worker consumes queue 'logs'; start one: STACK_WORKER_QUEUES=logs stack run worker"
    )
    assert cache.hint_for(job(age=3)) is None  # not late yet
    assert cache.hint_for(job(JobStatus.STARTED)) is None


def test_naive_sqlite_timestamps_are_utc() -> None:
    cache = HintCache(lambda: healthy(), hint_after=10)
    cache.refresh()
    naive = job(age=60)
    naive.created_at = naive.created_at.replace(tzinfo=None)
    assert cache.hint_for(naive) is not None


def test_a_stale_view_is_not_trusted() -> None:
    now = [1000.0]
    cache = HintCache(lambda: healthy(at=now[0]), hint_after=0, clock=lambda: now[0])
    cache.refresh()
    assert cache.hint_for(job()) is not None
    now[0] += 60
    assert cache.hint_for(job()) is None


def test_refresher_runs_on_demand_only_and_stops_promptly() -> None:
    calls: list[float] = []
    probed = threading.Event()

    def probe() -> QueueView:
        calls.append(time.monotonic())
        probed.set()
        return healthy()

    cache = HintCache(probe, hint_after=10, refresh_every=0.05)
    cache.start()
    try:
        time.sleep(0.2)
        assert calls == []  # idle API: no broadcast at all
        cache.hint_for(job(age=3))
        time.sleep(0.1)
        assert calls == []  # a young job does not ask
        cache.hint_for(job(age=60))
        assert probed.wait(2)
        time.sleep(0.2)
        assert len(calls) >= 2  # keeps refreshing while asked
    finally:
        started = time.monotonic()
        cache.stop()
        assert time.monotonic() - started < 1


def test_a_failing_probe_keeps_the_refresher_alive(caplog: pytest.LogCaptureFixture) -> None:
    def probe() -> QueueView:
        raise ConnectionError("boom")

    cache = HintCache(probe)
    cache.refresh()
    assert cache.view is None and "refreshing the hint cache failed" in caplog.text


# --- the API field ----------------------------------------------------------------------------------
def test_api_hint_from_the_real_probe_on_the_memory_transport(tmp_path: Path) -> None:
    started = time.monotonic()
    with client_for(tmp_path) as api:
        task_id = api.post("/api/jobs/write_log", json={"event": "x"}).json()["task_id"]
        assert api.get(f"/api/jobs/{task_id}").json()["hint"] is None  # young job
        cache: HintCache = api.app.state.hints  # type: ignore[attr-defined]
        cache.hint_after = 0
        cache.refresh()  # nobody answers the broadcast on the memory transport
        assert api.get(f"/api/jobs/{task_id}").json()["hint"] == (
            "no worker is running on memory://; start one: stack run worker"
        )
    assert time.monotonic() - started < 5  # start-up, one refresh, shutdown


def test_inline_mode_has_no_hint_cache(tmp_path: Path) -> None:
    with client_for(tmp_path, celery_enabled=False) as api:
        body = api.post("/api/jobs/demo", json={"seconds": 0}).json()
        assert api.app.state.hints is None  # type: ignore[attr-defined]
        assert api.get(f"/api/jobs/{body['task_id']}").json()["hint"] is None


# --- a running job whose worker went silent ---------------------------------------------------------
def running_job(silent_for: float) -> Job:
    now = datetime.now(UTC)
    return Job(
        id="j1",
        kind="demo",
        queue="default",
        status=JobStatus.PROGRESS,
        worker="one@h",
        worker_id="w1",
        updated_at=now - timedelta(seconds=silent_for),
    )


def worker_silent_for(seconds: float | None):  # type: ignore[no-untyped-def]
    from stack.jobs.models import Worker

    def lookup(ids: list[str]) -> dict[str, Worker]:
        if seconds is None:
            return {}
        beat = datetime.now(UTC) - timedelta(seconds=seconds)
        return {"w1": Worker(id="w1", name="one@h", pid=1, queues=[], running=["j1"], heartbeat_at=beat)}

    return lookup


@pytest.mark.parametrize(
    ("job_silent", "worker_silent", "expected"),
    [
        (2, 100, None),  # the job moves: its worker is not even looked up
        (60, 1, None),  # the worker beats: a long step between two progress reports
        (60, 12, "one@h has sent no heartbeat for 12 s (killed or out of memory?); the sweep runs"),
        (60, 100, "one@h has sent no heartbeat for 100 s; beat's sweep should have queued the job again"),
        (60, None, "one@h is gone; beat's sweep should have queued the job again"),
    ],
)
def test_a_silent_running_job_says_its_worker_stopped_heartbeating(
    job_silent: float, worker_silent: float | None, expected: str | None
) -> None:
    from stack.config import Settings
    from stack.jobs.hints import owner_hint

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    hint = owner_hint(running_job(job_silent), settings=settings, workers=worker_silent_for(worker_silent))
    if expected is None:
        assert hint is None
    else:
        assert hint is not None and hint.startswith(expected), hint
