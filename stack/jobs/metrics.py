"""Job metrics that outlive the process that saw them: histograms and counters kept in Redis.

A job finishes in a prefork pool process, a lost attempt is released by beat or by a worker's
main process, and `/metrics` is answered by whichever API process Prometheus reaches: a counter
in any one process's memory would be missed (or reset) by most scrapes. So every process adds
its observations to shared Redis hashes, and the API renders their totals (stack.api.metrics).

One hash per metric under `<namespace>:stack:metrics:` (STACK_NAMESPACE). A field names one
series, its label values as a JSON array; a histogram's fields add `|` and a bucket's upper
bound (or `sum`). Buckets are stored per bucket, not cumulated, so observations add up: a
process sums its own for up to METRICS_LINGER_S and sends one HINCRBY per bucket and one
HINCRBYFLOAT per sum through its metrics outbox (stack.jobs.outbox), off the job's path. A
scrape sees a job's outcome a second late at most; Prometheus scrapes every 15 s or so.

Best effort, like the events: a Redis that does not answer costs a log line, never a job.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
from collections import defaultdict
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
METRICS_LINGER_S = 1.0
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
    return _series_field(tuple(labels))


@functools.lru_cache(maxsize=1024)  # a process sees a few kinds and queues, every job
def _series_field(labels: tuple[str, ...]) -> str:
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
    """Observations are added up in the process and sent as one HINCRBY per series and bucket
    when the outbox goes (a metrics outbox lingers a second): sent as they came, they were four of
    a job's six Redis commands."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "",
        outbox: RedisOutbox | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._prefix = prefix  # Settings.redis_prefix: the namespace's keys only
        # A process's metrics outbox sends off the job's path; without one, each outcome is its
        # own round trip, in the caller (scripts, tests).
        self._outbox = outbox or RedisOutbox(client, background=False)
        self._clock = clock
        self._lock = threading.Lock()
        self._tally: defaultdict[tuple[str, str], float] = defaultdict(float)  # (key, field): not sent yet
        self._pid = os.getpid()

    def finished(self, job: Job, status: JobStatus, *, lost: bool = False) -> None:
        # Computed now, not when the outbox sends it: the duration ends here.
        increments: list[tuple[Metric, Sequence[str], float | None]] = []
        if job.claimed_at is not None:
            increments.append((DURATION, (job.kind, status.value), _seconds(job.claimed_at, self._clock())))
        if job.started_at is not None and job.created_at is not None:  # the claim keeps the first start
            increments.append((WAIT, (job.queue,), _seconds(job.created_at, job.started_at)))
        if status is JobStatus.FAILURE:
            increments.append((FAILURES, (job.kind,), None))
        if lost:
            increments.append((WORKER_LOST, (job.kind,), None))
        self._add(increments)

    def retried(self, job: Job) -> None:
        self._add([(RETRIES, (job.kind,), None)])

    def lost(self, job: Job) -> None:
        self._add([(WORKER_LOST, (job.kind,), None)])

    def _add(self, increments: Sequence[tuple[Metric, Sequence[str], float | None]]) -> None:
        """Each (metric, labels, observed value; None for a counter) into the tally; the first
        addition since the last send queues the next send."""
        with self._lock:
            if self._pid != os.getpid():  # inherited through a fork: the parent sends its own
                self._tally, self._pid = defaultdict(float), os.getpid()
            first = not self._tally
            for metric, labels, value in increments:
                key, series = metric.key_in(self._prefix), series_field(labels)
                if value is None:
                    self._tally[(key, series)] += 1
                else:
                    self._tally[(key, f"{series}|{bucket_bound(metric, value)}")] += 1
                    self._tally[(key, f"{series}|{SUM}")] += value
        if first:
            self._outbox.send(self._send_tally)

    def _send_tally(self, pipeline: redis.client.Pipeline) -> None:
        with self._lock:
            tally, self._tally = self._tally, defaultdict(float)
        for (key, field), amount in tally.items():
            if field.endswith(f"|{SUM}"):
                pipeline.hincrbyfloat(key, field, amount)
            else:
                pipeline.hincrby(key, field, int(amount))


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
