"""Job metrics that outlive the process that saw them: histograms and counters kept in Redis.

A job finishes in a prefork pool process, a lost attempt is released by beat or by a worker's
main process, and `/metrics` is answered by whichever API process Prometheus reaches: a counter
in any one process's memory would be missed (or reset) by most scrapes. So every process adds
its observations to shared Redis hashes, and the API renders their totals (stack.api.metrics).

One hash per metric under `<namespace>:stack:metrics:` (STACK_NAMESPACE). A field names one
series, its label values as a JSON array; a histogram's fields add `|` and a bucket's upper
bound (or `sum`). Buckets are stored per bucket, not cumulated, so one observation is one
HINCRBY plus one HINCRBYFLOAT, sent with the job's events through the process's outbox
(stack.jobs.outbox): off the job's path, many jobs per round trip.

Best effort, like the events: a Redis that does not answer costs a log line, never a job.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import redis

from stack.jobs.models import Job, JobStatus, as_utc, utcnow
from stack.jobs.outbox import RedisOutbox
from stack.jobs.registry import JobRegistry

log = logging.getLogger(__name__)

KEY_PREFIX = "stack:metrics:"
SUM = "sum"
INF = "+Inf"


@dataclass(frozen=True)
class Metric:
    name: str  # the Prometheus name, without `_total` for counters
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()  # empty: a counter

    @property
    def key(self) -> str:
        """The hash's name within a namespace; `key_in` gives the Redis key."""
        return KEY_PREFIX + self.name.removeprefix("stack_")

    def key_in(self, prefix: str) -> str:
        return prefix + self.key

    @property
    def is_histogram(self) -> bool:
        return bool(self.buckets)


# Jobs run from milliseconds to the 330 s default time limit (or a kind's longer one).
DURATION = Metric(
    "stack_job_duration_seconds",
    "Time from the claim of a job's last attempt to its outcome, by kind and outcome",
    ("kind", "status"),
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
WAIT = Metric(
    "stack_job_wait_seconds",
    "Time from submit to the first start of a job, by queue (observed when the job finishes)",
    ("queue",),
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
FAILURES = Metric("stack_job_failures", "Jobs that ended in failure, by kind", ("kind",))
RETRIES = Metric("stack_job_retries", "Attempts that failed transiently and were retried, by kind", ("kind",))
WORKER_LOST = Metric(
    "stack_worker_lost",
    "Attempts lost with their worker (killed, out of memory, node lost) and taken over, by kind",
    ("kind",),
)
METRICS = (DURATION, WAIT, FAILURES, RETRIES, WORKER_LOST)
OUTCOMES = (JobStatus.SUCCESS, JobStatus.FAILURE)  # the `status` values of DURATION


def series_field(labels: Sequence[str]) -> str:
    return json.dumps(list(labels), separators=(",", ":"))


def bucket_bound(metric: Metric, value: float) -> str:
    """The field suffix of the (non-cumulative) bucket `value` falls into."""
    for bound in metric.buckets:
        if value <= bound:
            return repr(float(bound))
    return INF


class MetricsRecorder(Protocol):
    """What the runner tells about a job's life; implementations never raise."""

    def finished(self, job: Job, status: JobStatus, *, lost: bool = False) -> None:
        """`job` (the row as claimed) ended with `status`; `lost`: its last attempt was lost."""

    def retried(self, job: Job) -> None: ...

    def lost(self, job: Job) -> None:
        """An attempt of `job` was lost with its worker; the job is queued again."""


class NullRecorder:
    """Inline mode (no Redis), and runners built without metrics."""

    def finished(self, job: Job, status: JobStatus, *, lost: bool = False) -> None:
        pass

    def retried(self, job: Job) -> None:
        pass

    def lost(self, job: Job) -> None:
        pass


class RedisRecorder:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "",
        outbox: RedisOutbox | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._prefix = prefix  # Settings.redis_prefix: the namespace's keys only
        # A process's shared outbox sends off the job's path; without one, each outcome is its
        # own round trip, in the caller (scripts, tests).
        self._outbox = outbox or RedisOutbox(client, background=False)
        self._clock = clock

    def finished(self, job: Job, status: JobStatus, *, lost: bool = False) -> None:
        # Computed now, not when the outbox sends it: the duration ends here.
        duration = _seconds(job.claimed_at, self._clock()) if job.claimed_at is not None else None

        def add(pipeline: redis.client.Pipeline) -> None:
            if duration is not None:
                self._observe(pipeline, DURATION, (job.kind, status.value), duration)
            if job.started_at is not None and job.created_at is not None:  # the claim keeps the first start
                self._observe(pipeline, WAIT, (job.queue,), _seconds(job.created_at, job.started_at))
            if status is JobStatus.FAILURE:
                self._count(pipeline, FAILURES, job)
            if lost:
                self._count(pipeline, WORKER_LOST, job)

        self._outbox.send(add)

    def retried(self, job: Job) -> None:
        self._outbox.send(lambda pipeline: self._count(pipeline, RETRIES, job))

    def lost(self, job: Job) -> None:
        self._outbox.send(lambda pipeline: self._count(pipeline, WORKER_LOST, job))

    def _count(self, pipeline: redis.client.Pipeline, metric: Metric, job: Job) -> None:
        pipeline.hincrby(metric.key_in(self._prefix), series_field((job.kind,)), 1)

    def _observe(
        self, pipeline: redis.client.Pipeline, metric: Metric, labels: Sequence[str], value: float
    ) -> None:
        key, series = metric.key_in(self._prefix), series_field(labels)
        pipeline.hincrby(key, f"{series}|{bucket_bound(metric, value)}", 1)
        pipeline.hincrbyfloat(key, f"{series}|{SUM}", value)


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (as_utc(end) - as_utc(start)).total_seconds())


# --- reading them back (the API) -------------------------------------------------------------------------
@dataclass(frozen=True)
class HistogramSeries:
    labels: tuple[str, ...]
    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), +Inf last
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


@dataclass(frozen=True)
class Recorded:
    histograms: dict[str, list[HistogramSeries]]
    counters: dict[str, list[tuple[tuple[str, ...], float]]]


def known_series(registry: JobRegistry) -> dict[str, list[tuple[str, ...]]]:
    """{metric name: label values} of the series every scrape shows, at 0 until their first
    observation: Prometheus's increase() cannot see a series' first step up from nothing, so a
    kind's first failure would otherwise never raise an alert."""
    kinds = sorted(kind.name for kind in registry)
    queues = sorted({"default", *registry.queues()})
    per_kind: list[tuple[str, ...]] = [(kind,) for kind in kinds]
    return {
        DURATION.name: [(kind, status.value) for kind in kinds for status in OUTCOMES],
        WAIT.name: [(queue,) for queue in queues],
        FAILURES.name: per_kind,
        RETRIES.name: per_kind,
        WORKER_LOST.name: per_kind,
    }


def read_recorded(
    client: redis.Redis,
    metrics: Iterable[Metric] = METRICS,
    *,
    known: Mapping[str, Iterable[tuple[str, ...]]] | None = None,
    prefix: str = "",
) -> Recorded:
    """Every metric's series (of the namespace `prefix`, Settings.redis_prefix), in one round
    trip; the `known` ones at 0 if never observed."""
    metrics = list(metrics)
    known = known or {}
    pipeline = client.pipeline(transaction=False)
    for metric in metrics:
        pipeline.hgetall(metric.key_in(prefix))
    raw = pipeline.execute()
    histograms, counters = {}, {}
    for metric, fields in zip(metrics, raw, strict=True):
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        expected = known.get(metric.name, ())
        if metric.is_histogram:
            histograms[metric.name] = decode_histogram(metric, decoded, known=expected)
        else:
            values = dict.fromkeys(expected, 0.0)
            for field, value in decoded.items():
                if (labels := _labels(field, metric)) is not None:
                    values[labels] = float(value)
            counters[metric.name] = sorted(values.items())
    return Recorded(histograms=histograms, counters=counters)


def decode_histogram(
    metric: Metric, fields: Mapping[str, str], *, known: Iterable[tuple[str, ...]] = ()
) -> list[HistogramSeries]:
    """Cumulative buckets per series. Bounds found in Redis but no longer configured (the
    buckets changed in an upgrade) are kept, so `_count` still counts every observation."""
    per_series: dict[tuple[str, ...], dict[float, int]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for field, value in fields.items():
        series, _, suffix = field.rpartition("|")
        labels = _labels(series, metric)
        if labels is None:
            continue
        if suffix == SUM:
            sums[labels] = float(value)
            continue
        try:
            bound = math.inf if suffix == INF else float(suffix)
        except ValueError:
            continue
        per_series.setdefault(labels, {})[bound] = int(float(value))
    result = []
    for labels in sorted(per_series.keys() | sums.keys() | set(known)):
        counts = per_series.get(labels, {})
        running, buckets = 0, []
        for bound in sorted({*map(float, metric.buckets), *counts, math.inf}):
            running += counts.get(bound, 0)
            buckets.append((bound, running))
        result.append(HistogramSeries(labels=labels, buckets=tuple(buckets), sum=sums.get(labels, 0.0)))
    return result


def _labels(series: str, metric: Metric) -> tuple[str, ...] | None:
    try:
        values = json.loads(series)
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != len(metric.labels):
        return None
    return tuple(str(v) for v in values)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
