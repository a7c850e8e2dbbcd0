"""The sweep (beat runs it every STACK_SWEEP_INTERVAL): reconciles the job table with reality.

- a job accepted while the broker was down has no `dispatched_at`: send it now;
- a queue holding fewer messages than it has pending jobs lost some (a Redis restart without
  persistence, a worker killed between taking a message and recording it): send its oldest
  pending jobs again; a message that was not lost after all is dropped by the claim;
- a running job silent for longer than its time limit (plus STACK_STALL_MARGIN) lost its worker
  and its message (e.g. a broker restart dropped the unacked copy): queue it again, or fail it
  once its retries are spent;
- finished jobs older than STACK_JOB_RETENTION_DAYS are deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from stack.doctor.probe import is_redis_url, pending_by_queue, queue_depths, redis_client
from stack.errors import UnknownKindError
from stack.jobs.models import Job, JobStatus, as_utc, utcnow
from stack.jobs.service import publish
from stack.runtime import Runtime

log = logging.getLogger(__name__)

BATCH = 100


@dataclass(frozen=True)
class SweepReport:
    dispatched: int = 0
    resent: int = 0
    requeued: int = 0
    failed: int = 0
    purged: int = 0
    broker_down: bool = False


def sweep(runtime: Runtime, celery: Celery, *, now: datetime | None = None) -> SweepReport:
    now = now or utcnow()
    requeued, failed = _reclaim_stalled(runtime, now)
    resent = _resend_lost(runtime, celery, now)  # counts the queues before anything new is sent
    dispatched, broker_down = _dispatch_undispatched(runtime, celery, now)
    purged = _purge(runtime, now)
    report = SweepReport(dispatched, resent, requeued, failed, purged, broker_down)
    if dispatched or resent or requeued or failed or purged or broker_down:
        log.info("sweep: %s", report)
    return report


def _time_limit(runtime: Runtime, job: Job) -> float:
    try:
        kind_limit = runtime.registry.get(job.kind).time_limit
    except UnknownKindError:
        kind_limit = None
    return kind_limit or runtime.settings.task_time_limit


def _reclaim_stalled(runtime: Runtime, now: datetime) -> tuple[int, int]:
    settings = runtime.settings
    shortest = min([settings.task_time_limit, *(k.time_limit for k in runtime.registry if k.time_limit)])
    # A retrying job legitimately waits its backoff before anyone touches it again.
    patience = {JobStatus.RETRY: settings.task_retry_backoff_max}

    def decide(job: Job) -> str | None:
        silent = (now - as_utc(job.updated_at)).total_seconds()
        allowed = _time_limit(runtime, job) + settings.stall_margin + patience.get(job.status, 0)
        if silent < allowed:
            return None
        try:
            kind_retries = runtime.registry.get(job.kind).max_retries
        except UnknownKindError:
            return f"no worker knows kind {job.kind!r} any more"
        retries = settings.task_max_retries if kind_retries is None else kind_retries
        if job.attempts > retries:
            return f"its worker was lost {job.attempts} times (no sign of life for {silent:.0f} s)"
        return "requeue"

    taken = runtime.store.take_stalled(
        silent_since=now - timedelta(seconds=shortest + settings.stall_margin), limit=BATCH, decide=decide
    )
    requeued = [job for job in taken if job.status is JobStatus.PENDING]
    for job in taken:
        outcome = job.message if job.status is JobStatus.PENDING else f"failed: {job.error}"
        log.warning("sweep: job %s (%s) %s", job.id, job.kind, outcome)
    return len(requeued), len(taken) - len(requeued)


def _dispatch_undispatched(runtime: Runtime, celery: Celery, now: datetime) -> tuple[int, bool]:
    created_before = now - timedelta(seconds=runtime.settings.dispatch_grace)
    return _send(runtime, celery, runtime.store.take_undispatched(created_before=created_before, limit=BATCH))


def _resend_lost(runtime: Runtime, celery: Celery, now: datetime) -> int:
    """Pending jobs whose messages are gone from their queue, sent again (oldest first). Only a
    Redis broker's queues are counted (LLEN); other brokers (RabbitMQ) are not looked into."""
    broker = runtime.settings.broker_url
    if not is_redis_url(broker):
        return 0
    pending = {queue: stats.sent for queue, stats in pending_by_queue(runtime.engine).items() if stats.sent}
    if not pending:
        return 0
    try:
        with redis_client(broker, timeout=runtime.settings.broker_timeout) as client:
            queued = queue_depths(client, pending)
    except (redis.RedisError, OSError) as exc:
        log.warning("sweep: could not count the queues, lost messages wait for the next sweep: %s", exc)
        return 0
    dispatched_before = now - timedelta(seconds=runtime.settings.dispatch_grace)
    resent = 0
    for queue, sent in pending.items():
        missing = sent - queued[queue]
        if missing <= 0:
            continue
        jobs = runtime.store.take_lost(
            queue=queue, dispatched_before=dispatched_before, limit=min(missing, BATCH)
        )
        count, broker_down = _send(runtime, celery, jobs)
        if count:
            log.warning(
                "sweep: queue %s holds %d message(s) for %d pending job(s); sent %d again",
                queue,
                queued[queue],
                sent,
                count,
            )
        resent += count
        if broker_down:
            break
    return resent


def _send(runtime: Runtime, celery: Celery, jobs: Sequence[Job]) -> tuple[int, bool]:
    """Publish each job; on a broker error the rest go back to undispatched. (sent, broker down)"""
    sent: list[str] = []
    for job in jobs:
        try:
            publish(celery, runtime.registry.get(job.kind), job.id)
        except UnknownKindError:
            runtime.store.fail(job.id, error=f"no worker knows kind {job.kind!r} any more")
            continue
        except (BrokerError, OSError) as exc:
            log.warning(
                "sweep: broker unreachable, %d job(s) wait for the next sweep: %s", len(jobs) - len(sent), exc
            )
            runtime.store.undo_dispatch([j.id for j in jobs if j.id not in sent])
            return len(sent), True
        sent.append(job.id)
    return len(sent), False


def _purge(runtime: Runtime, now: datetime) -> int:
    days = runtime.settings.job_retention_days
    if not days:
        return 0
    return runtime.store.purge_finished(finished_before=now - timedelta(days=days))
