"""The progress reporter a handler calls: `job.progress(40, "rendering tile 4/10")`.

Throttled, because a handler in a tight loop must not turn into a database load test; monotonic,
because a progress bar that jumps back looks broken; and the last value is never lost, because
`flush()` writes whatever the throttle held back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from stack.jobs.events import EventPublisher
from stack.jobs.models import JobStatus
from stack.jobs.registry import JobCancelled
from stack.jobs.store import JobStore


class ProgressReporter:
    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        store: JobStore,
        publisher: EventPublisher,
        min_interval: float,
        start: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._store = store
        self._publisher = publisher
        self._min_interval = min_interval
        self._clock = clock
        self._written = start
        self._written_message: str | None = None
        self._latest = start
        self._latest_message = ""
        # The claim just wrote the row: a job shorter than the interval costs no progress write.
        self._last_write_at = clock()
        self.writes = 0

    @property
    def percent(self) -> int:
        return self._latest

    def __call__(self, percent: float, message: str = "") -> None:
        if not isinstance(percent, int | float) or isinstance(percent, bool) or math.isnan(percent):
            raise TypeError(f"progress percent must be a number from 0 to 100, got {percent!r}")
        value = min(100, max(0, int(percent)))
        if value < self._latest:
            return  # never backwards; a retried attempt re-reporting early steps is not news
        self._latest = value
        self._latest_message = str(message)
        if self._clock() - self._last_write_at >= self._min_interval:
            self.flush()

    def flush(self) -> None:
        """Write the latest value if it differs from the stored one."""
        if self._latest == self._written and self._latest_message == self._written_message:
            return
        live = self._store.set_progress(self.job_id, self._latest, self._latest_message, attempt=self.attempt)
        self._last_write_at = self._clock()
        self._written, self._written_message = self._latest, self._latest_message
        self.writes += 1
        if not live:  # revoked, or this attempt was judged lost and the job taken over
            raise JobCancelled(f"job {self.job_id} was cancelled or moved on from attempt {self.attempt}")
        self._publisher.publish(
            self.job_id,
            {"status": JobStatus.PROGRESS.value, "progress": self._latest, "message": self._latest_message},
        )
