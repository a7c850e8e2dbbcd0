"""Progress cost: what one `job.progress()` call adds inside a task.

Measured in this process on the very objects a worker's task uses (the runtime's store and Redis
publisher, a claimed job row), so the figure is one UPDATE ... RETURNING plus one PUBLISH, against
the same PostgreSQL and Redis, with the throttle off; and, separately, the cost of a call the
default throttle swallows (what a tight loop of progress calls pays).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.httpload import percentile
from loadtests import stackproc
from stack.config import load_settings
from stack.jobs.liveness import Owner


@dataclass
class ProgressFigures:
    calls: int
    write_p50: float  # seconds per call that writes (throttle off)
    write_p99: float
    throttled_p50: float  # seconds per call the default throttle swallows
    writes_with_default_throttle: int  # of `calls` calls made in a tight loop

    @property
    def write_rate(self) -> float:
        return 1.0 / self.write_p50 if self.write_p50 > 0 else 0.0


def run_progress(*, stack: stackproc.StackEnv, calls: int) -> ProgressFigures:
    from stack.jobs.progress import ProgressReporter
    from stack.runtime import build_runtime

    settings = load_settings(
        redis_url=stack.redis_url, database_url=stack.database_url, data_dir=stack.data_dir
    )
    runtime = build_runtime(settings)
    try:
        store = runtime.store
        job = store.create(kind="demo", queue="default", params={"seconds": 0, "steps": calls})
        claimed = store.claim(job.id, owner=Owner("benchmark"))
        assert claimed is not None
        reporter = ProgressReporter(
            job_id=job.id, attempt=1, store=store, publisher=runtime.publisher, min_interval=0.0, start=0
        )
        reporter(0, "warm-up")  # the first call opens the pool's connection and the publisher's
        timings = []
        for i in range(1, calls + 1):
            started = time.perf_counter()
            reporter(min(99, i * 100 // calls), f"step {i}")  # a new message each time: always a write
            timings.append(time.perf_counter() - started)
        throttled = ProgressReporter(
            job_id=job.id,
            attempt=1,
            store=store,
            publisher=runtime.publisher,
            min_interval=settings.progress_interval,
            start=claimed.progress,
        )
        throttled_timings = []
        for i in range(1, calls + 1):
            started = time.perf_counter()
            throttled(99, f"tight loop {i}")
            throttled_timings.append(time.perf_counter() - started)
        store.succeed(job.id, result=None, attempt=1)
    finally:
        runtime.store.dispose()  # both engines: the store's autocommit twin too
    # The first throttled call writes; the rest are what a tight loop pays per call.
    return ProgressFigures(
        calls=calls,
        write_p50=percentile(timings, 50),
        write_p99=percentile(timings, 99),
        throttled_p50=percentile(throttled_timings[1:], 50),
        writes_with_default_throttle=throttled.writes,
    )
