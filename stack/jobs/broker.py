"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new `redis.Redis` for every publish, every delivered message and
every ack (`Channel.conn_or_acquire`). With redis-py 5 and later each construction rebuilds the
client's table of response callbacks: about 180 µs of CPU, more than the LPUSH round trip it
wraps, paid on every submit in the API and twice per job in a worker. A client is only a handle
on the channel's connection pool and is thread-safe, so one per pool does the same work.

Everything else is kombu's own: same URLs (redis:// and rediss://), same options, same wire
format; `broker_transport` selects it (see `celery_config`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis

TRANSPORT = "stack.jobs.broker:Transport"
_SCHEMES = frozenset({"redis", "rediss"})


class Channel(kombu_redis.Channel):  # type: ignore[misc]  # kombu ships no type hints
    _client_for_pool: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # kombu caches that one itself
        pool = self.pool  # replaced after a fork or a reconnect: the client must follow it
        cached = self._client_for_pool
        if cached is None or cached[0] is not pool:
            cached = self._client_for_pool = (pool, super()._create_client())
        return cached[1]


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


def declare_on_publish(app: Any) -> list[Any] | None:
    """What a job message's publish declares first: nothing on our Redis transport, Celery's
    default (the queue) on any other.

    A Redis queue is a list that LPUSH creates, and a message to the default exchange goes
    straight to the list its routing key names: declaring the queue changes nothing there, yet
    kombu does it on every publish (maybe_declare binds a copy of the Queue, then finds it in its
    cache): 25-30 µs of a submit's ~170 µs publish, measured in a loop. RabbitMQ drops a message
    for a queue nobody declared yet, so there the declare stays. A new list each time: kombu may
    append to it."""
    return [] if app.conf.broker_transport == TRANSPORT else None


def transport_for(broker_url: str) -> str | None:
    """Our transport for plain Redis URLs; None (kombu picks by scheme) for anything else:
    sentinel://, redis+socket://, amqp://, memory:// keep kombu's own."""
    return TRANSPORT if urlsplit(broker_url).scheme in _SCHEMES else None
