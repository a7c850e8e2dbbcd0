"""Recording `dispatched_at` off the request path: one UPDATE for every job published meanwhile.

A submit is a committed INSERT, then the publish. Marking the row dispatched is what tells the
sweep not to send it again, but nobody else waits for it: done inline it was a third round trip
(and a second commit) on every submit. Here a background thread lets a burst gather for
`linger` seconds and marks it in one statement.

If the process dies before a batch is written, or the write fails, those rows stay unmarked and
the sweep sends them again after STACK_DISPATCH_GRACE: a job may get a second message, never
none. The second one is dropped by its claim if the job is running or finished (JobStore.claim).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from stack.jobs.batching import BatchWriter

log = logging.getLogger(__name__)


class DispatchRecorder(BatchWriter[str]):
    def __init__(
        self,
        mark: Callable[[Sequence[str]], object],  # JobStore.mark_dispatched
        *,
        linger: float = 0.05,
        max_batch: int = 1000,
    ) -> None:
        super().__init__(
            mark, linger=linger, max_batch=max_batch, name="stack-dispatch-marks", on_error=_not_marked
        )

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is pending and stop the thread (the API's shutdown)."""
        written = super().close(timeout)
        if not written:
            log.warning("dispatch marks not written within %g s; the sweep will resend those jobs", timeout)
        return written


def _not_marked(job_ids: Sequence[str], exc: Exception) -> None:
    # The database is down: the sweep resends them later.
    log.warning(
        "%d published jobs not marked dispatched (%s); the sweep will send them again", len(job_ids), exc
    )
