"""`GET /api/jobs/{id}/events`: a job's progress as server-sent events, live from Redis pub/sub.

The stream watches the job on the process's EventHub (one shared subscription) first, then reads
the row: an update published in between is not lost. Pub/sub is best effort, so the row is read
again on any status other than progress, when the hub says events were missed, every second while
the hub has no subscription, and after `reread` seconds without news while it has one. A quiet
stream sends a keep-alive comment every `recheck` seconds (proxies close silent connections). The
stream ends with the finished job, result or error included.

Every event has an id that names the job's state (attempt, progress, status, message), and the
stream starts with `retry:`. A stream lives at most STACK_SSE_MAX_SECONDS; the EventSource then
reconnects with `Last-Event-ID`, and the row is sent again only if it changed since.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from stack.jobs.fanout import EventHub, Slot
from stack.jobs.models import JobStatus
from stack.jobs.schemas import JobDetail

log = logging.getLogger(__name__)

Load = Callable[[], Awaitable[JobDetail | None]]
TERMINAL = {s.value for s in JobStatus if s.is_terminal}
RETRY_MS = 2000  # EventSource's reconnection delay, after a lifetime end or a dropped connection
RETRY_AFTER_S = 5  # what a refused client (503) is told to wait
FALLBACK_POLL = 1.0  # seconds between row reads while the hub has no Redis subscription
KEEPALIVE = b": still waiting\n\n"


def sse(data: dict[str, Any] | str, *, event: str = "job", id: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, default=str)
    head = f"id: {id}\n" if id else ""
    return f"{head}event: {event}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True)
class State:
    """What a client has seen of a job; its id is the SSE event id."""

    attempts: int
    status: str
    progress: int
    message: str

    @classmethod
    def of(cls, job: JobDetail) -> State:
        return cls(job.attempts, job.status.value, job.progress, job.message)

    @property
    def id(self) -> str:
        # From the state, not a counter: a counter means nothing to another API process, and a
        # reconnect lands on any of them. The message is hashed to keep the id short.
        return f"{self.attempts}-{self.progress}-{self.status}-{zlib.crc32(self.message.encode()):08x}"

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def event_id(job: JobDetail) -> str:
    return State.of(job).id


def already_finished(job: JobDetail, last_event_id: str | None) -> bool:
    """The client reconnects after it received the finished job: nothing more will come. The
    route answers 204, the one answer that makes an EventSource stop reconnecting."""
    state = State.of(job)
    return state.finished and last_event_id == state.id


async def job_events(
    *,
    job_id: str,
    load: Load,
    hub: EventHub,
    disconnected: Callable[[], Awaitable[bool]],
    recheck: float = 5.0,
    reread: float = 15.0,
    max_seconds: float = 300.0,
    last_event_id: str | None = None,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    # Up to 10% shorter: streams opened together (a deploy, a page of bars) must not all end and
    # reconnect in the same second.
    deadline = loop.time() + max_seconds * random.uniform(0.9, 1.0)
    with hub.watch(job_id) as watch:
        job = await load()
        if job is None:
            return
        read_at = _jittered(loop.time(), reread)
        state = State.of(job)
        sent = last_event_id
        head = f"retry: {RETRY_MS}\n\n".encode()
        if state.id != sent:
            head += sse(job.model_dump(mode="json"), id=state.id)
            sent = state.id
        yield head
        while not state.finished:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return  # lifetime reached: end cleanly, the client reconnects and resumes
            wait = recheck if watch.live else min(recheck, FALLBACK_POLL)
            item = await watch.next(min(wait, remaining))
            if isinstance(item, dict) and item.get("status") == JobStatus.PROGRESS.value:
                update = _progressed(state, item)
                if update is not None and update.id != sent:
                    yield sse({"task_id": job_id, **item}, id=update.id)
                    sent = update.id
                if update is not None:
                    state = update
                continue
            if item is None and (loop.time() >= deadline or await disconnected()):
                # Asked only when quiet: while events flow, a gone client shows when its send
                # fails (or the server cancels the response), and asking costs on every event.
                return
            if item is None and watch.live and loop.time() - read_at < reread:
                # Live and quiet: the subscription would have told. Reading every few seconds is
                # what 2,000 quiet streams cannot afford (400 queries/s); a lost publish still
                # shows within `reread` s.
                yield KEEPALIVE
                continue
            # Started, retried, finished; a resync after missed events; or quiet for long: the
            # row says what is true (and carries the attempt, worker, result or error).
            latest = await load()
            read_at = _jittered(loop.time(), reread)
            if latest is None:
                return
            state = State.of(latest)
            if state.id != sent:
                yield sse(latest.model_dump(mode="json"), id=state.id)
                sent = state.id
            elif item is None:
                yield KEEPALIVE


def _jittered(now: float, reread: float) -> float:
    # Up to 20% earlier: streams opened together must not all read their rows in the same instant.
    return now - random.uniform(0, 0.2 * reread)


def _progressed(state: State, event: dict[str, Any]) -> State | None:
    """The state after a progress event, or None for a late one (progress never goes back within
    a job, so a lower figure is an event overtaken by a row read)."""
    progress = event.get("progress")
    if not isinstance(progress, int) or progress < state.progress:
        return None
    return replace(
        state, status=JobStatus.PROGRESS.value, progress=progress, message=str(event.get("message", ""))
    )


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` that gives its hub slot back however the response ends: finished,
    client gone, cancelled, or failed before the first byte."""

    def __init__(self, content: AsyncIterator[bytes], *, slot: Slot, headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()
