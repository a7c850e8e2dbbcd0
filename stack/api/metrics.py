"""`GET /metrics`: Prometheus text format, READ scope like the rest of the API.

Prometheus authenticates with a read-only token in its scrape config (deploy/prometheus/README.md):

    authorization:
      type: Bearer
      credentials_file: /etc/prometheus/stack-token   # one of STACK_API_TOKENS, e.g. `<token>:read`

Nothing here lives in one process's memory, so whichever API process (WEB_CONCURRENCY > 1) a
scrape reaches answers the same: the gauges come from the database and the broker at scrape time
(the snapshot `/api/queues` serves, stack.jobs.overview), the histograms and counters from the
Redis hashes every worker, pool process and beat adds to (stack.jobs.metrics). Per-process
metrics (CPU, memory, GC) are left out on purpose: they would describe one random API process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import redis
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy.exc import SQLAlchemyError

from stack.api.auth import Scope, require
from stack.api.queues import overview_of
from stack.config import Settings
from stack.doctor.probe import is_redis_url
from stack.jobs import metrics as recorded
from stack.jobs.overview import (
    BROKER_TIMEOUT,
    CACHE_SECONDS,
    LIVE_STATUSES,
    Cached,
    Overview,
    redis_client,
)
from stack.jobs.registry import JobRegistry

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])

_state_lock = threading.Lock()
# The classic text format, which every Prometheus reads (our names need none of 1.0.0's escaping);
# prometheus_client's CONTENT_TYPE_LATEST changes with its version.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StackCollector(Collector):
    """Renders a fresh (at most CACHE_SECONDS old) snapshot at every scrape."""

    def __init__(self, settings: Settings, registry: JobRegistry, overview: Cached[Overview]) -> None:
        self.registry = registry
        self.overview = overview
        # Only a Redis broker is looked into (queue depths); others are not probed at all.
        self.broker_probed = settings.celery_enabled and is_redis_url(settings.broker_url)
        # Inline mode records nothing (stack.runtime): there is no Redis to read.
        self.recorded: Cached[recorded.Recorded] | None = None
        if settings.celery_enabled:
            url = settings.effective_redis_url
            timeout = min(settings.broker_timeout, BROKER_TIMEOUT)
            client = redis_client(url, timeout=timeout)  # connects on first use, not here
            known, prefix = recorded.known_series(registry), settings.redis_prefix
            self.recorded = Cached(
                lambda: recorded.read_recorded(client, known=known, prefix=prefix), seconds=CACHE_SECONDS
            )

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "stack_up", "Whether the scrape could read this component (1) or not (0)", labels=["component"]
        )
        try:
            overview: Overview | None = self.overview.get()
        except SQLAlchemyError as exc:
            log.warning("/metrics: database unreachable, job and queue gauges left out: %s", exc)
            overview = None
        up.add_metric(["database"], 1 if overview is not None else 0)
        if overview is not None:
            yield from self._gauges(overview)
            if self.broker_probed:
                up.add_metric(["broker"], 1 if overview.broker_ok else 0)
        if self.recorded is not None:
            try:
                found: recorded.Recorded | None = self.recorded.get()
            except (redis.RedisError, OSError) as exc:
                log.warning("/metrics: redis unreachable, histograms and counters left out: %s", exc)
                found = None
            up.add_metric(["redis"], 1 if found is not None else 0)
            if found is not None:
                yield from _recorded_families(found)
        yield up

    def _gauges(self, overview: Overview) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "stack_jobs",
            "Jobs not finished yet, by queue, kind and status",
            labels=["queue", "kind", "status"],
        )
        counts = {
            (kind.queue, kind.name, status.value): 0 for kind in self.registry for status in LIVE_STATUSES
        }
        for count in overview.jobs:
            counts[(count.queue, count.kind, count.status.value)] = count.count
        for labels, value in sorted(counts.items()):
            jobs.add_metric(list(labels), value)
        yield jobs

        depth = GaugeMetricFamily(
            "stack_queue_depth",
            "Messages waiting in the broker's queue (Redis brokers only)",
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "stack_queue_oldest_pending_seconds",
            "How long the oldest pending job of the queue has waited since it was queued (0: none)",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "stack_workers", "Live workers consuming the queue (heartbeating)", labels=["queue"]
        )
        for queue in overview.queues:
            if queue.depth is not None:
                depth.add_metric([queue.name], queue.depth)
            oldest.add_metric([queue.name], queue.oldest_pending_seconds or 0.0)
            consumers.add_metric([queue.name], len(queue.workers))
        yield from (depth, oldest, consumers)

        dead = GaugeMetricFamily(
            "stack_dead_workers",
            "Workers that stopped heartbeating without shutting down (their rows are kept for an hour)",
        )
        dead.add_metric([], sum(1 for worker in overview.workers if not worker.alive))
        yield dead


def _recorded_families(found: recorded.Recorded) -> Iterator[Metric]:
    for metric in recorded.METRICS:
        if metric.is_histogram:
            histogram = HistogramMetricFamily(metric.name, metric.help, labels=list(metric.labels))
            for series in found.histograms.get(metric.name, []):
                buckets = [(floatToGoString(bound), float(count)) for bound, count in series.buckets]
                histogram.add_metric(list(series.labels), buckets, series.sum)
            yield histogram
        else:
            counter = CounterMetricFamily(metric.name, metric.help, labels=list(metric.labels))
            for labels, value in found.counters.get(metric.name, []):
                counter.add_metric(list(labels), value)
            yield counter


def registry_of(app: FastAPI) -> CollectorRegistry:
    registry: CollectorRegistry | None = getattr(app.state, "metrics_registry", None)
    if registry is None:
        with _state_lock:
            registry = getattr(app.state, "metrics_registry", None)
            if registry is None:
                runtime = app.state.jobs.runtime
                # auto_describe off: registering must not run a scrape (nothing connects early).
                registry = CollectorRegistry(auto_describe=False)
                registry.register(StackCollector(runtime.settings, runtime.registry, overview_of(app)))
                app.state.metrics_registry = registry
    return registry


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(require(Scope.READ))],
    responses={
        200: {"description": "Prometheus text exposition format", "content": {"text/plain": {}}},
        401: {"description": "No credentials, or unknown ones (`WWW-Authenticate: Bearer`)"},
        403: {"description": "The caller may not read"},
    },
)
def metrics(request: Request) -> Response:
    """Queues, workers and jobs for Prometheus. Send a READ token: `authorization: {type:
    Bearer, credentials_file: ...}` in the scrape config."""
    return Response(generate_latest(registry_of(request.app)), media_type=CONTENT_TYPE)
