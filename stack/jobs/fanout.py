"""One Redis pub/sub connection per API process, shared by all its event streams.

A connection per stream does not scale: 160 streams once held 100 Redis connections (the rest
failed with "Too many connections") and 295 open files in one process. Here a single reader task
holds ONE connection subscribed to `<namespace>:stack:jobs:*` and hands each message to the small queues of
the streams watching that job; a stream only registers and unregisters locally.

PSUBSCRIBE rather than SUBSCRIBE/UNSUBSCRIBE per watched job: registering a stream costs no Redis
round trip and no await (so cleanup also works in a cancelled stream), and once the pattern is
confirmed no event can slip between "watching" and "the stream reads the row". The price is that
the process receives every job's events, watched or not; they are small and throttled by
STACK_PROGRESS_INTERVAL, and a message nobody here watches is dropped before it is even parsed.

Redis may restart: the reader reconnects with backoff (jittered, so a fleet does not stampede).
While it is down `connected` is False and streams re-read the row at a calm pace instead; when it
is back every stream is told to re-read the row once, for what it missed meanwhile.

The hub also counts the streams it admitted (STACK_SSE_MAX_STREAMS): each costs a socket, a task
and a queue, so past the cap a client is refused rather than the process running out of files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stack.jobs.events import CHANNEL_PREFIX

log = logging.getLogger(__name__)

CLIENT_NAME: Final = "stack-api-events"  # shows in CLIENT LIST: whose connection this is


class Resync:
    """Put in a watch's queue when events may have been missed: read the row, it is the truth."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()
Item = dict[str, Any] | Resync


class Watch:
    """One stream's view of one job: the events the hub received for it, in a bounded queue."""

    def __init__(self, hub: EventHub, job_id: str, *, maxsize: int) -> None:
        self.job_id = job_id
        self._hub = hub
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize)

    @property
    def live(self) -> bool:
        """True while the hub's subscription stands: events arrive without asking the row."""
        return self._hub.connected

    def push(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # A client too slow to keep up must not grow memory or hold the others back: drop what
            # it has not read yet; the row it re-reads carries the latest state anyway.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    async def next(self, timeout: float) -> Item | None:
        """The next event or RESYNC; None when nothing came within `timeout` seconds."""
        if not self._queue.empty():
            return self._queue.get_nowait()  # no timer to arm and cancel: the common case under load
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None


class Slot:
    """One admitted stream; `release` (idempotent) gives its place back."""

    def __init__(self, hub: EventHub) -> None:
        self._hub: EventHub | None = hub

    def release(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub._release()


ClientFactory = Callable[[], aioredis.Redis]


class EventHub:
    """Fan-out of job events to the streams of this process. `redis_url=None` (inline mode, or
    no Redis at all): never connects, streams only poll the row."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        max_streams: int = 1000,
        connect_timeout: float = 2.0,
        client_factory: ClientFactory | None = None,
        backoff: tuple[float, float] = (0.2, 10.0),
        ping_after: float = 15.0,
        queue_size: int = 16,
        prefix: str = "",
    ) -> None:
        self.max_streams = max_streams
        # Only this namespace's jobs (Settings.redis_prefix): another app's events never arrive.
        self._channels = prefix + CHANNEL_PREFIX
        self._factory = client_factory or (_client_factory(redis_url, connect_timeout) if redis_url else None)
        self._backoff = backoff
        self._ping_after = ping_after
        self._queue_size = queue_size
        self._watches: dict[str, set[Watch]] = {}
        self._streams = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._closed = False
        self.connects = 0  # subscriptions established, reconnections included

    @property
    def streams(self) -> int:
        return self._streams

    @property
    def connected(self) -> bool:
        return self._connected

    def admit(self) -> Slot | None:
        """A place for one more stream, or None when STACK_SSE_MAX_STREAMS are open."""
        if self._streams >= self.max_streams:
            return None
        self._streams += 1
        return Slot(self)

    def _release(self) -> None:
        self._streams -= 1

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """Receive `job_id`'s events while inside the block. Synchronous on purpose: it
        registers before the caller reads the row, and unregisters even in a cancelled task."""
        self._ensure_running()
        watch = Watch(self, job_id, maxsize=self._queue_size)
        self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(job_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[job_id]

    def watching(self) -> int:
        return sum(len(w) for w in self._watches.values())

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            # Not `await task`: a cancel that lands as the client library's own wait_for finishes
            # can be lost (Python 3.11), and awaiting would then hang the shutdown. The loops also
            # stop on `_closed`; past the grace the task is left to die with the loop.
            await asyncio.wait([task], timeout=2.0)
        self._connected = False

    def _ensure_running(self) -> None:
        # Started lazily by the first stream: nothing connects at import or app creation, and the
        # task runs on the loop that serves the requests.
        if self._factory is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._connected = False
            self._task = loop.create_task(self._run(), name="stack-event-hub")

    async def _run(self) -> None:
        assert self._factory is not None
        delay = self._backoff[0]
        failures = 0
        while not self._closed:
            before = self.connects
            try:
                await self._session(self._factory)
            except (aioredis.RedisError, OSError, ValueError) as exc:
                if self.connects > before:
                    delay, failures = self._backoff[0], 0  # it had worked: start the backoff over
                failures += 1
                # One warning per outage, not one per attempt of a long outage.
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level, "job events: Redis subscription down (%s); streams read the rows meanwhile", exc
                )
            finally:
                self._connected = False
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff[1])

    async def _session(self, factory: ClientFactory) -> None:
        """One connection's life: subscribe, then dispatch until it fails."""
        client = factory()
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe(self._channels + "*")
            pinged = False
            while not self._closed:
                message = await pubsub.get_message(timeout=self._ping_after)
                if message is None:
                    # Quiet for a while: a half-open connection (a host gone without a FIN) would
                    # never say it died; a PING left unanswered does.
                    if pinged:
                        raise aioredis.ConnectionError(f"no answer to PING within {self._ping_after:g} s")
                    await pubsub.ping()
                    pinged = True
                    continue
                pinged = False
                kind = message["type"]
                if kind == "pmessage":
                    self._dispatch(message["channel"], message["data"])
                elif kind == "psubscribe":
                    self._subscribed()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    def _subscribed(self) -> None:
        self._connected = True
        self.connects += 1
        log.log(
            logging.INFO if self.connects == 1 else logging.WARNING,
            "job events: subscribed to %s (subscription #%d)",
            self._channels + "*",
            self.connects,
        )
        # Whatever was published while nobody listened (before the first subscription, or during
        # an outage) is lost to pub/sub: every stream re-reads its row once.
        for watches in self._watches.values():
            for watch in watches:
                watch.push(RESYNC)

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode(errors="replace") if isinstance(channel, bytes) else channel
        if not name.startswith(self._channels):
            return
        watches = self._watches.get(name[len(self._channels) :])
        if not watches:
            return  # nobody here watches this job: not worth parsing
        try:
            event = json.loads(data)
        except ValueError:
            return
        if isinstance(event, dict):
            for watch in watches:
                watch.push(event)  # shared: streams copy before they add anything


def _client_factory(url: str, connect_timeout: float) -> ClientFactory:
    def connect() -> aioredis.Redis:
        # No retries inside redis-py: a failed read surfaces at once, so `connected` turns False
        # and the streams fall back to the row while _run reconnects at its own pace.
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            client_name=CLIENT_NAME,
            retry=Retry(NoBackoff(), 0),
        )

    return connect
