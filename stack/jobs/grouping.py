"""The API's submits, written a group at a time: every submit that arrives while a group is being
written goes into the next one.

A submit is a committed INSERT and a broker publish. One request at a time, a burst pays a thread
hop, a database round trip and commit, and a broker round trip per request; grouped, it pays them
once per group (JobService.submit_many). Nothing waits for a group to fill: a lone submit is
written at once, and a burst groups itself by the time each write takes (a database's group
commit, applied to requests). The groups are written by a BatchWriter's thread, so the event
loops serving requests never block on the database or the broker; each request waits for its own
outcome, handed back to its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from kombu import Producer

from stack.jobs.batching import BatchWriter
from stack.jobs.models import Job
from stack.jobs.registry import JobKind
from stack.jobs.service import JobService, Submit

_Waiting = tuple[Submit, "asyncio.Future[Job]"]


class GroupSubmitter:
    def __init__(self, service: JobService, *, max_group: int = 256) -> None:
        self._service = service
        self._writer: BatchWriter[_Waiting] = BatchWriter(
            self._write,
            linger=0,
            max_batch=max_group,  # bounds one transaction and one broker pipeline
            name="stack-submits",
            on_error=self._failed,
        )
        self._producer: Producer | None = None  # the writer thread's, for all its publishes

    async def submit(self, kind: JobKind, params: dict[str, Any]) -> Job:
        """The job, committed and published (or deferred) when this returns; raises what
        `JobService.submit` would. A caller cancelled meanwhile (its client left) cancels only
        its wait: its job is made all the same, as a synchronous submit's would be."""
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._writer.add(((kind, params), future))
        return await future

    def close(self) -> None:
        """Write what is waiting; the API calls it once it serves no more requests."""
        self._writer.close()
        if self._producer is not None:
            self._producer.release()

    def _write(self, group: Sequence[_Waiting]) -> None:
        if self._producer is None and self._service.celery is not None:
            self._producer = self._service.celery.producer_pool.acquire(block=True)
        outcomes = self._service.submit_many([submit for submit, _ in group], producer=self._producer)
        _settle([future for _, future in group], outcomes)

    def _failed(self, group: Sequence[_Waiting], exc: Exception) -> None:
        # The database is down (or the write broke): each caller raises it, a 503 for an outage.
        _settle([future for _, future in group], [exc] * len(group))


def _settle(futures: list[asyncio.Future[Job]], outcomes: list[Job | Exception]) -> None:
    """Hand each outcome to its future, on the future's own loop: one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Job], Job | Exception]]]
    by_loop = defaultdict(list)
    for future, outcome in zip(futures, outcomes, strict=True):
        by_loop[future.get_loop()].append((future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[Job], Job | Exception]]) -> None:
    for future, outcome in settled:
        if future.cancelled():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
