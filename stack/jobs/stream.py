"""`GET /api/jobs/{id}/events`: a job's progress as server-sent events, live from Redis pub/sub.

Subscribe first, then read the row: an update published in between is not lost. Pub/sub is best
effort, so while nothing arrives the row is re-read every `recheck` seconds (which also sends a
keep-alive through proxies); a client that reconnects simply gets the current row first. The
stream ends with the finished job, result or error included.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from stack.jobs.events import channel_for
from stack.jobs.models import JobStatus
from stack.jobs.schemas import JobDetail

log = logging.getLogger(__name__)

Load = Callable[[], Awaitable[JobDetail | None]]
TERMINAL = {s.value for s in JobStatus if s.is_terminal}


def sse(data: dict[str, Any] | str, *, event: str = "job") -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, default=str)
    return f"event: {event}\ndata: {payload}\n\n".encode()


async def job_events(
    *,
    job_id: str,
    load: Load,
    redis_client: aioredis.Redis | None,
    disconnected: Callable[[], Awaitable[bool]],
    recheck: float = 5.0,
) -> AsyncIterator[bytes]:
    pubsub = await _subscribe(redis_client, job_id)
    try:
        job = await load()
        if job is None:
            return
        yield sse(job.model_dump(mode="json"))
        while job.status.value not in TERMINAL and not await disconnected():
            event = await _next_event(pubsub, timeout=recheck)
            if event is not None and event.get("status") not in TERMINAL:
                yield sse({"task_id": job_id, **event})
                continue
            # Finished, or quiet for a while: the row says what is true (and may carry a result).
            latest = await load()
            if latest is None:
                return
            if latest.model_dump() != job.model_dump():
                yield sse(latest.model_dump(mode="json"))
            else:
                yield b": still waiting\n\n"
            job = latest
    finally:
        if pubsub is not None:
            await pubsub.aclose()


async def _subscribe(client: aioredis.Redis | None, job_id: str) -> aioredis.client.PubSub | None:
    if client is None:
        return None
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel_for(job_id))
    except aioredis.RedisError as exc:
        log.warning("events of job %s: Redis unreachable (%s); falling back to reading the row", job_id, exc)
        await pubsub.aclose()
        return None
    return pubsub


async def _next_event(pubsub: aioredis.client.PubSub | None, *, timeout: float) -> dict[str, Any] | None:
    if pubsub is None:
        await asyncio.sleep(min(timeout, 1.0))  # no Redis: poll the row instead
        return None
    try:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
    except aioredis.RedisError:
        await asyncio.sleep(1.0)  # Redis went away mid-stream: read the row at a calm pace
        return None
    if message is None:
        return None
    try:
        event: dict[str, Any] = json.loads(message["data"])
    except (TypeError, ValueError):
        return None
    return event
