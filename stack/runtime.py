"""The objects a process needs, wired from settings: engine, store, registry, runner.

Built lazily and once per process (after a prefork worker forks, never before), so nothing
connects at import time and no connection is shared across a fork.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine

from stack.config import Settings
from stack.db import engine_from_settings
from stack.jobs.events import EventPublisher, NullPublisher, RedisPublisher
from stack.jobs.metrics import METRICS_LINGER_S, MetricsRecorder, NullRecorder, RedisRecorder
from stack.jobs.outbox import RedisOutbox
from stack.jobs.registry import JobRegistry, load_registry
from stack.jobs.runner import JobRunner, LivenessPolicy, RetryPolicy
from stack.jobs.store import JobStore


@dataclass
class Runtime:
    settings: Settings
    registry: JobRegistry
    engine: Engine
    store: JobStore

    @functools.cached_property
    def event_redis(self) -> redis.Redis | None:
        """The Redis of events and metrics (one connection pool for both); None inline, which
        runs with no Redis at all. Connects on first use. Both are best effort, so a Redis that
        does not answer costs a job one immediate retry, not redis-py's default ten with backoff
        (4.5 s per event or outcome when the port refuses, measured; far longer when it hangs)."""
        if not self.settings.celery_enabled:
            return None
        timeout = self.settings.broker_timeout
        return redis.Redis.from_url(
            self.settings.effective_redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )

    @functools.cached_property
    def outbox(self) -> RedisOutbox | None:
        """Events leave the job's path here: one pipeline for many (stack.jobs.outbox)."""
        return None if self.event_redis is None else RedisOutbox(self.event_redis)

    @functools.cached_property
    def metrics_outbox(self) -> RedisOutbox | None:
        """Metrics, summed in the process for up to a second (stack.jobs.metrics)."""
        if self.event_redis is None:
            return None
        return RedisOutbox(self.event_redis, linger=METRICS_LINGER_S, name="stack-metrics-outbox")

    @functools.cached_property
    def publisher(self) -> EventPublisher:
        if self.event_redis is None:
            return NullPublisher()
        return RedisPublisher(self.event_redis, prefix=self.settings.redis_prefix, outbox=self.outbox)

    @functools.cached_property
    def metrics(self) -> MetricsRecorder:
        if self.event_redis is None:
            return NullRecorder()
        return RedisRecorder(self.event_redis, prefix=self.settings.redis_prefix, outbox=self.metrics_outbox)

    def close(self) -> None:
        """Send what the outboxes still hold: a process's shutdown (the API's, a worker's)."""
        for name in ("outbox", "metrics_outbox"):
            outbox = self.__dict__.get(name)  # never built: nothing was sent
            if outbox is not None:
                outbox.close()

    @functools.cached_property
    def runner(self) -> JobRunner:
        s = self.settings
        return JobRunner(
            store=self.store,
            registry=self.registry,
            publisher=self.publisher,
            storage_dir=s.effective_storage_dir,
            retry_policy=RetryPolicy(
                max_retries=s.task_max_retries,
                backoff=s.task_retry_backoff,
                backoff_max=s.task_retry_backoff_max,
            ),
            progress_interval=s.progress_interval,
            liveness=LivenessPolicy(dead_after=s.worker_dead_after, settle=s.heartbeat_interval),
            metrics=self.metrics,
        )


def build_runtime(settings: Settings, registry: JobRegistry | None = None, *, pooled: bool = True) -> Runtime:
    """`pooled=False`: connections are opened per use and never kept (a process that forks)."""
    engine = engine_from_settings(settings, pooled=pooled)
    return Runtime(
        settings=settings,
        registry=registry or load_registry(settings.kinds),
        engine=engine,
        store=JobStore(
            engine, autocommit_engine=engine_from_settings(settings, autocommit=True, pooled=pooled)
        ),
    )
