"""The progress reporter: throttled, monotonic, cancellable, never loses the last value."""

from __future__ import annotations

from typing import Any

import pytest

from stack.jobs.liveness import Owner
from stack.jobs.registry import JobCancelled
from stack.jobs.store import JobStore


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[tuple[int, str]] = []
        self.live = True

    def set_progress(self, job_id: str, percent: int, message: str, *, attempt: int) -> bool:
        self.writes.append((percent, message))
        return self.live


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(interval: float = 1.0, start: int = 0):  # type: ignore[no-untyped-def]
    from stack.jobs.progress import ProgressReporter

    store, publisher, clock = FakeStore(), RecordingPublisher(), Clock()
    reporter = ProgressReporter(
        job_id="j1",
        attempt=1,
        store=store,  # type: ignore[arg-type]
        publisher=publisher,
        min_interval=interval,
        start=start,
        clock=clock,
    )
    return reporter, store, publisher, clock


def test_tight_loop_is_throttled_and_last_value_flushed() -> None:
    reporter, store, publisher, clock = make(interval=1.0)
    for i in range(1, 1001):
        reporter(i / 10, f"step {i}")
        clock.now += 0.0005  # 1000 calls in half a second
    assert store.writes == []  # all inside the first interval (the claim wrote the row just now)
    clock.now += 0.6
    reporter(100, "step 1001")
    assert store.writes == [(100, "step 1001")]
    reporter.flush()
    assert len(store.writes) == 1  # nothing new to flush
    assert [e["progress"] for e in publisher.events] == [100]


def test_flush_writes_what_the_throttle_held_back() -> None:
    reporter, store, _, _ = make(interval=1.0)
    reporter(40, "rendering tile 4/10")
    assert store.writes == []
    reporter.flush()
    assert store.writes == [(40, "rendering tile 4/10")]


def test_writes_again_once_the_interval_passed() -> None:
    reporter, store, _, clock = make(interval=0.5)
    reporter(10, "a")
    clock.now += 0.2
    reporter(20, "b")
    clock.now += 0.4
    reporter(30, "c")
    clock.now += 0.1
    reporter(40, "d")
    clock.now += 0.5
    reporter(50, "e")
    assert store.writes == [(30, "c"), (50, "e")]


def test_never_goes_backwards() -> None:
    reporter, store, _, _ = make(interval=0)
    reporter(50, "half")
    reporter(40, "late report of an earlier step")
    reporter(60, "more")
    assert [p for p, _ in store.writes] == [50, 60]
    assert reporter.percent == 60


def test_starts_from_the_stored_progress_of_an_earlier_attempt() -> None:
    reporter, store, _, _ = make(interval=0, start=70)
    reporter(20, "retry re-reporting early steps")
    assert store.writes == []
    reporter(80, "new ground")
    assert store.writes == [(80, "new ground")]


@pytest.mark.parametrize(("given", "stored"), [(-5, 0), (150, 100), (33.9, 33)])
def test_clamped_to_0_100(given: float, stored: int) -> None:
    reporter, store, _, _ = make(interval=0)
    reporter(given, "x")
    assert store.writes[-1][0] == stored


@pytest.mark.parametrize("bad", [float("nan"), "50", None, True])
def test_rejects_non_numbers(bad: Any) -> None:
    reporter, _, _, _ = make()
    with pytest.raises(TypeError, match="0 to 100"):
        reporter(bad)


def test_same_value_same_message_is_not_rewritten() -> None:
    reporter, store, _, _ = make(interval=0)
    reporter(10, "x")
    reporter(10, "x")
    reporter.flush()
    assert len(store.writes) == 1
    reporter(10, "y")  # a new message at the same percent is news
    assert len(store.writes) == 2


def test_revoked_job_raises_cancelled_at_next_write() -> None:
    reporter, store, _, _ = make(interval=0)
    reporter(10)
    store.live = False
    with pytest.raises(JobCancelled):
        reporter(20)


def test_against_the_real_store(runtime) -> None:  # type: ignore[no-untyped-def]
    from stack.jobs.events import NullPublisher
    from stack.jobs.progress import ProgressReporter

    store: JobStore = runtime.store
    job = store.create(kind="demo", queue="default", params={})
    store.claim(job.id, owner=Owner("w"))
    reporter = ProgressReporter(
        job_id=job.id, attempt=1, store=store, publisher=NullPublisher(), min_interval=0
    )
    reporter(40, "rendering tile 4/10")
    stored = store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.progress, stored.message) == ("progress", 40, "rendering tile 4/10")
    store.revoke(job.id)
    with pytest.raises(JobCancelled):
        reporter(50)
