"""Live job events on Redis pub/sub, for streaming to clients. Best effort: the row is the truth,
so a lost event costs a client one poll, never a job."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import redis

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "stack:jobs:"


def channel_for(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


class EventPublisher(Protocol):
    def publish(self, job_id: str, event: dict[str, Any]) -> None: ...


class NullPublisher:
    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        pass


class RedisPublisher:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0) -> RedisPublisher:
        return cls(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout))

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        try:
            self._client.publish(channel_for(job_id), json.dumps(event, default=str))
        except redis.RedisError as exc:
            log.warning("could not publish progress of job %s: %s", job_id, exc)
