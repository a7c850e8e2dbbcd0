"""Live job events on Redis pub/sub, for streaming to clients. Best effort: the row is the truth,
so a lost event costs a client one poll, never a job."""

from __future__ import annotations

import json
from typing import Any, Protocol

import redis

from stack.jobs.outbox import RedisOutbox

CHANNEL_PREFIX = "stack:jobs:"  # after the namespace's prefix (Settings.redis_prefix)
# One encoder for every event: json.dumps(..., default=str) builds a new one per call.
_encode = json.JSONEncoder(default=str).encode


def channel_for(job_id: str, *, prefix: str = "") -> str:
    return prefix + CHANNEL_PREFIX + job_id


class EventPublisher(Protocol):
    def publish(self, job_id: str, event: dict[str, Any]) -> None: ...


class NullPublisher:
    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        pass


class RedisPublisher:
    def __init__(self, client: redis.Redis, *, prefix: str = "", outbox: RedisOutbox | None = None) -> None:
        self._prefix = prefix
        # A process's shared outbox publishes off the job's path; without one, each event is its
        # own round trip, in the caller (scripts, tests).
        self._outbox = outbox or RedisOutbox(client, background=False)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0, prefix: str = "") -> RedisPublisher:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client, prefix=prefix)

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        channel, message = channel_for(job_id, prefix=self._prefix), _encode(event)
        self._outbox.send(lambda pipeline: pipeline.publish(channel, message))
