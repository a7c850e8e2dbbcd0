"""What a process sends to Redis and nobody waits for — job events, metrics — in one pipeline.

Measured on the job path (a no-work job, profiled in a loop): its two events and its metrics
were three Redis round trips, over 40 % of the time the worker spent on the job. Queued here,
they leave the job's path entirely, and a background thread sends whatever gathered within its
linger (LINGER_S for events; stack.jobs.metrics lets its own outbox linger a second) in one
pipeline: one round trip for many jobs under load. Events of one process keep their order (one
queue, one thread).

Both are best effort (the row is the truth; a lost event costs a client one poll), so a Redis
that fails or hangs costs the jobs nothing: the thread warns once per outage, and while it is
stuck at most MAX_PENDING commands wait; newer ones are dropped and counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import redis

from stack.jobs.batching import BatchWriter

log = logging.getLogger(__name__)

Command = Callable[["redis.client.Pipeline"], object]

MAX_PENDING = 10_000
MAX_BATCH = 500


# How long the thread lets a burst gather before it sends. A worker slot draining jobs of no work
# finishes one every 4-5 ms: at 2 ms each job was a pipeline (and a wake-up) of its own; at 10 ms
# two or three share one, and a drain of 2,000 such jobs went from 6.1-6.2 s to 4.9-5.1 s, the
# pool processes' CPU per job from 1,455-1,505 µs to 1,130-1,180 (alternated, one session).
# Events reach subscribers up to 10 ms later: less than a frame of a 60 Hz screen.
LINGER_S = 0.01


class RedisOutbox:
    def __init__(
        self,
        client: redis.Redis,
        *,
        background: bool = True,
        linger: float = LINGER_S,
        name: str = "stack-redis-outbox",
    ) -> None:
        """`background=False`: every send is its own pipeline, in the caller (tests, scripts)."""
        self.client = client
        self._writer: BatchWriter[Command] = BatchWriter(
            self._execute,
            linger=linger,
            max_batch=MAX_BATCH,
            name=name,
            on_error=self._failed,
            max_pending=MAX_PENDING,
            on_overflow=self._overflowed,
        )
        if not background:
            self._writer.close()
        self._lock = threading.Lock()
        self._failing = False  # warn once per outage, not once per batch
        self.dropped = 0

    def send(self, command: Command) -> None:
        self._writer.add(command)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was sent so far reached Redis (or failed to)."""
        return self._writer.flush(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending (a process's shutdown); later sends go out at once."""
        if not self._writer.close(timeout):
            log.warning("job events and metrics not sent to Redis within %g s were dropped", timeout)

    def _execute(self, commands: Sequence[Command]) -> None:
        pipeline = self.client.pipeline(transaction=False)
        for command in commands:
            command(pipeline)
        pipeline.execute()
        with self._lock:
            if self._failing:
                log.info("job events and metrics reach Redis again")
            self._failing = False

    def _failed(self, commands: Sequence[Command], exc: Exception) -> None:
        with self._lock:
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
        log.log(level, "%d job events/metrics not sent to Redis (dropped): %s", len(commands), exc)

    def _overflowed(self, _command: Command) -> None:
        with self._lock:
            self.dropped += 1
            first = self.dropped == 1
        if first:
            log.warning(
                "Redis is not keeping up: over %d job events/metrics wait to be sent; newer ones are dropped",
                MAX_PENDING,
            )
