"""Writes that nobody waits for, taken off the caller's path and done many at a time.

A background thread takes what callers `add`, lets a burst gather for `linger` seconds (0: no
wait; a burst still gathers behind a write in progress) and hands it to `write` in batches of
at most `max_batch`. Users: dispatch marks (one UPDATE for many submits), the Redis outbox (one
pipeline for many jobs' events and metrics) and the API's submits (stack.jobs.grouping).

Nothing here is durable: what a killed process had not written yet is lost, so only writes
whose loss something else repairs (the sweep resends unmarked jobs; an event is best effort), or
whose callers wait for them (a submit's request answers only once its group is written), belong
here. `close` writes what is pending; an `add` after it writes at once, in the caller.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_STOP = object()


class _Flush:
    """A marker: set once everything added before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


class BatchWriter(Generic[T]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], object],
        *,
        linger: float,
        max_batch: int,
        name: str,
        on_error: Callable[[Sequence[T], Exception], None],
        max_pending: int | None = None,
        on_overflow: Callable[[T], None] | None = None,
    ) -> None:
        self._write_batch = write
        self._linger = linger
        self._max_batch = max_batch
        self._name = name
        self._on_error = on_error
        # A writer that cannot keep up (its server hangs) must not grow without bound.
        self._max_pending = max_pending
        self._on_overflow = on_overflow
        self._lock = threading.Lock()
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def add(self, item: T) -> None:
        """Queue `item`: written within `linger` seconds, plus the time of the writes before it."""
        if self._closed:
            self._write([item])  # after close (a late request, a sync writer): no thread to do it
            return
        if self._pid != os.getpid():
            self._reset()  # inherited through a fork: the parent's thread does not exist here
        if self._max_pending is not None and self._queue.qsize() >= self._max_pending:
            if self._on_overflow is not None:
                self._on_overflow(item)
            return
        self._queue.put(item)
        if self._thread is None:
            self._start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was added so far is written; False if that took over `timeout`."""
        if self._closed or self._thread is None or self._pid != os.getpid():
            return True
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is pending and stop the thread (a process's shutdown). False if the
        pending writes did not finish within `timeout`."""
        with self._lock:
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
        if thread is None:
            return True
        self._stopping.set()
        self._queue.put(_STOP)
        thread.join(timeout)
        return not thread.is_alive()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if self._linger > 0:
                self._stopping.wait(self._linger)  # let the rest of the burst arrive (close cuts it short)
            batch, markers, stop = self._take(first)
            self._write(batch)
            for marker in markers:
                marker.done.set()
            if stop:
                return

    def _take(self, first: object) -> tuple[list[T], list[_Flush], bool]:
        """`first` and everything queued behind it, the flush markers among them, and whether a
        stop was among them."""
        batch: list[T] = []
        markers: list[_Flush] = []
        stop = False
        item = first
        while True:
            if item is _STOP:
                stop = True
            elif isinstance(item, _Flush):
                markers.append(item)
            else:
                batch.append(item)  # type: ignore[arg-type]  # only add() puts anything else
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, markers, stop

    def _write(self, items: list[T]) -> None:
        for start in range(0, len(items), self._max_batch):
            chunk = items[start : start + self._max_batch]
            try:
                self._write_batch(chunk)
            except Exception as exc:  # the server is down: the caller's policy says what is lost
                self._on_error(chunk, exc)
