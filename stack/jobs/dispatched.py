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
import queue
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_STOP = object()


class DispatchRecorder:
    def __init__(
        self,
        mark: Callable[[Sequence[str]], object],
        *,
        linger: float = 0.05,
        max_batch: int = 1000,
    ) -> None:
        self._mark = mark  # JobStore.mark_dispatched
        self._linger = linger
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._stopping = threading.Event()

    def add(self, job_id: str) -> None:
        """Remember that `job_id` was published; it is marked within `linger` seconds."""
        if self._closed:
            self._write([job_id])  # after close (a late request): no thread left to do it
            return
        self._queue.put(job_id)
        if self._thread is None:
            self._start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the thread (the API's shutdown)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._stopping.set()
            self._queue.put(_STOP)
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "dispatch marks not written within %g s; the sweep will resend those jobs", timeout
                )

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="stack-dispatch-marks", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            self._stopping.wait(self._linger)  # let the rest of the burst arrive (close cuts it short)
            batch, stop = self._take(first)
            self._write(batch)
            if stop:
                return

    def _take(self, first: object) -> tuple[list[str], bool]:
        """`first` and everything queued behind it; True if a stop was among them."""
        batch: list[str] = []
        stop = False
        item = first
        while True:
            if item is _STOP:
                stop = True
            else:
                batch.append(str(item))
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, stop

    def _write(self, job_ids: list[str]) -> None:
        for start in range(0, len(job_ids), self._max_batch):
            chunk = job_ids[start : start + self._max_batch]
            try:
                self._mark(chunk)
            except Exception as exc:  # the database is down: the sweep resends them later
                log.warning(
                    "%d published jobs not marked dispatched (%s); the sweep will send them again",
                    len(chunk),
                    exc,
                )
