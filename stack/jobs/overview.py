"""The queues at a glance: what waits where, who consumes it, and whether the broker answers.

Served as `GET /api/queues` (stack.api.queues) and as the gauges of `/metrics`
(stack.api.metrics), from one snapshot that costs one GROUP BY over the live jobs (the status
indexes find them; finished jobs are never read), one read of `stack_workers` and one Redis
pipeline. Each API process keeps the snapshot for a second or two, so a wall of browser tabs
polling, and Prometheus scraping, cost the database the same as one client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, func, select

from stack.config import Settings
from stack.doctor.probe import is_redis_url, queue_depths
from stack.jobs.models import RUNNING_STATUSES, Job, JobStatus, Worker, as_utc, utcnow
from stack.jobs.registry import JobRegistry

log = logging.getLogger(__name__)

# Not finished: the statuses a job can be counted in while it still matters to a queue.
LIVE_STATUSES = (JobStatus.PENDING, JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.RETRY)
DEFAULT_QUEUE = "default"  # Celery's task_default_queue (stack.jobs.celery_app)
CACHE_SECONDS = 1.5
BROKER_TIMEOUT = 1.0  # a dead broker must not hold a page (or a scrape) for long

T = TypeVar("T")


@dataclass(frozen=True)
class JobCount:
    queue: str
    kind: str
    status: JobStatus
    count: int
    oldest: datetime | None  # the earliest `updated_at`: for pending jobs, when they were queued


@dataclass(frozen=True)
class QueueState:
    name: str
    kinds: list[str]
    depth: int | None  # messages in the broker's list; None: not a Redis broker, or unreachable
    pending: int
    running: int
    oldest_pending_seconds: float | None
    workers: list[str]  # node names of the live workers consuming it


@dataclass(frozen=True)
class WorkerState:
    name: str
    queues: list[str]
    running: list[str]
    last_heartbeat_seconds: float
    alive: bool


@dataclass(frozen=True)
class Overview:
    queues: list[QueueState]
    workers: list[WorkerState]
    broker_ok: bool
    jobs: list[JobCount]  # per queue, kind and live status: the `stack_jobs` gauge


def redis_client(url: str, *, timeout: float) -> redis.Redis:
    """A client that gives up at once: redis-py's default retries (10, with backoff) would hold
    a page or a scrape for seconds on a Redis that refuses connections. One retry, right away,
    still replaces a pooled connection that a Redis restart closed."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1)
    )


# --- reading ---------------------------------------------------------------------------------------------
def count_live_jobs(engine: Engine) -> tuple[list[JobCount], list[Worker]]:
    """Live jobs per queue, kind and status, and every worker row, on one connection."""
    query = (
        select(Job.queue, Job.kind, Job.status, func.count(), func.min(Job.updated_at))
        .where(Job.status.in_(LIVE_STATUSES))
        .group_by(Job.queue, Job.kind, Job.status)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
        workers = [Worker(**row._mapping) for row in connection.execute(select(Worker.__table__)).all()]
    counts = [JobCount(row[0], row[1], JobStatus(row[2]), int(row[3]), row[4]) for row in rows]
    return counts, workers


def build_overview(
    *,
    registry: JobRegistry,
    jobs: Sequence[JobCount],
    workers: Iterable[Worker],
    depths: Mapping[str, int] | None,
    broker_ok: bool,
    dead_after: float,
    now: datetime,
) -> Overview:
    """Every queue a kind is routed to, "default", and any other queue holding live jobs (a
    kind since renamed or moved); workers alive when heard from within `dead_after`."""
    kinds_of: dict[str, list[str]] = {DEFAULT_QUEUE: []}
    for kind in registry:
        kinds_of.setdefault(kind.queue, []).append(kind.name)
    for count in jobs:
        kinds_of.setdefault(count.queue, [])

    worker_states = sorted(
        (_worker_state(worker, now=now, dead_after=dead_after) for worker in workers),
        key=lambda w: (not w.alive, w.name, w.last_heartbeat_seconds),
    )
    queues = []
    for name in sorted(kinds_of):
        mine = [c for c in jobs if c.queue == name]
        pending = [c for c in mine if c.status is JobStatus.PENDING]
        since = [as_utc(c.oldest) for c in pending if c.oldest is not None]
        queues.append(
            QueueState(
                name=name,
                kinds=sorted(kinds_of[name]),
                depth=depths.get(name) if depths is not None else None,
                pending=sum(c.count for c in pending),
                running=sum(c.count for c in mine if c.status in RUNNING_STATUSES),
                oldest_pending_seconds=max(0.0, (now - min(since)).total_seconds()) if since else None,
                workers=sorted({w.name for w in worker_states if w.alive and name in w.queues}),
            )
        )
    return Overview(queues=queues, workers=worker_states, broker_ok=broker_ok, jobs=list(jobs))


def _worker_state(worker: Worker, *, now: datetime, dead_after: float) -> WorkerState:
    silent = max(0.0, (now - as_utc(worker.heartbeat_at)).total_seconds())
    return WorkerState(
        name=worker.name,
        queues=sorted(worker.queues or []),
        running=list(worker.running or []),
        last_heartbeat_seconds=round(silent, 3),
        alive=silent <= dead_after,  # the rule of stack.jobs.liveness.lost_reason
    )


class OverviewSource:
    """Takes snapshots for one API process. Its Redis client is built on first use and kept,
    so a refresh every second or two reuses one connection."""

    def __init__(self, settings: Settings, registry: JobRegistry, engine: Engine) -> None:
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self._client: redis.Redis | None = None

    @property
    def inline(self) -> bool:
        return not self.settings.celery_enabled

    def snapshot(self) -> Overview:
        jobs, workers = count_live_jobs(self.engine)  # OperationalError: the caller's 503
        depths, broker_ok = self._depths({DEFAULT_QUEUE, *self.registry.queues(), *(c.queue for c in jobs)})
        return build_overview(
            registry=self.registry,
            jobs=jobs,
            workers=workers,
            depths=depths,
            broker_ok=broker_ok,
            dead_after=self.settings.worker_dead_after,
            now=utcnow(),
        )

    def _depths(self, queues: Iterable[str]) -> tuple[dict[str, int] | None, bool]:
        """(depth per queue or None, broker answered). Inline mode has no broker to fail; a
        broker other than Redis is not looked into (its depth is null, and it counts as up)."""
        url = self.settings.broker_url
        if self.inline or not is_redis_url(url):
            return None, True
        if self._client is None:
            self._client = redis_client(url, timeout=min(self.settings.broker_timeout, BROKER_TIMEOUT))
        try:
            return queue_depths(self._client, sorted(queues), prefix=self.settings.redis_prefix), True
        except (redis.RedisError, OSError) as exc:
            log.debug("queue overview: broker unreachable: %s", exc)
            return None, False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Cached(Generic[T]):
    """A value computed at most once per `seconds`, by one caller at a time: the callers that
    arrive meanwhile wait for that computation instead of repeating it. A failure is kept as
    long, so an outage is not hammered by every waiting caller in turn."""

    def __init__(
        self, compute: Callable[[], T], *, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: T | None = None
        self._error: Exception | None = None

    def get(self) -> T:
        with self._lock:
            if self._clock() - self._at >= self.seconds:
                try:
                    self._value, self._error = self._compute(), None
                except Exception as exc:
                    self._value, self._error = None, exc
                self._at = self._clock()
            if self._error is not None:
                raise self._error
            assert self._value is not None
            return self._value
