"""The sweep (beat runs it every STACK_SWEEP_INTERVAL): reconciles the job table with reality.

- a running job whose attempt is lost (its worker stopped heartbeating for
  STACK_WORKER_DEAD_AFTER, or is alive but no longer runs it; see stack.jobs.liveness) is queued
  again, or failed once its attempts are spent;
- a job with no heartbeating owner — run inline, or waiting for a retry message the broker may
  have lost — silent far past its time limit or its backoff is queued again the same way;
- a job accepted while the broker was down has no `dispatched_at`: send it now;
- a queue holding fewer messages than it has pending jobs lost some (a Redis restart without
  persistence): send its oldest pending jobs again; a message not lost after all is dropped by
  the claim;
- finished jobs older than STACK_JOB_RETENTION_DAYS are deleted, and workers silent for an hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from stack.doctor.probe import is_redis_url, queue_snapshot, redis_client, sent_pending_by_queue
from stack.errors import UnknownKindError
from stack.jobs.liveness import lost_reason
from stack.jobs.models import Job, JobStatus, as_utc, utcnow
from stack.jobs.service import publish
from stack.logs import job_logging
from stack.runtime import Runtime

log = logging.getLogger(__name__)

BATCH = 100
WORKER_RETENTION = timedelta(hours=1)  # a dead worker's row is kept this long, for doctor
RECOUNT_AFTER = 0.2  # seconds before a queue that looks short is counted again


@dataclass(frozen=True)
class SweepReport:
    dispatched: int = 0
    resent: int = 0
    requeued: int = 0
    failed: int = 0
    purged: int = 0
    broker_down: bool = False


class Sweeper:
    """Runs sweeps for a long-lived process (beat): logs what each did, survives a database
    outage, and judges liveness only once the database has answered it twice in a row — after
    an outage every worker's heartbeat looks old until each has had a chance to beat again."""

    def __init__(self, runtime: Runtime, celery: Celery) -> None:
        self.runtime = runtime
        self.celery = celery
        self._database_ok = True

    def run(self) -> SweepReport | None:
        try:
            report = sweep(self.runtime, self.celery, judge_liveness=self._database_ok)
        except OperationalError as exc:
            if self._database_ok:
                # Down, or not migrated yet (beat may start before the api has migrated).
                log.warning("sweep: the database cannot be used (%s); trying again every sweep", exc.orig)
            self._database_ok = False
            return None
        except Exception:
            log.exception("sweep failed; trying again at the next interval")
            return None
        self._database_ok = True
        return report


def sweep(
    runtime: Runtime, celery: Celery, *, now: datetime | None = None, judge_liveness: bool = True
) -> SweepReport:
    now = now or utcnow()
    requeued, failed = _reclaim_lost(runtime, now) if judge_liveness else (0, 0)
    silent_requeued, silent_failed = _reclaim_silent(runtime, now)
    resent = _resend_lost(runtime, celery, now)  # counts the queues before anything new is sent
    dispatched, broker_down = _dispatch_undispatched(runtime, celery, now)
    purged = _purge(runtime, now)
    report = SweepReport(
        dispatched, resent, requeued + silent_requeued, failed + silent_failed, purged, broker_down
    )
    if dispatched or resent or report.requeued or report.failed or purged or broker_down:
        log.info("sweep: %s", report)
    else:  # every STACK_SWEEP_INTERVAL, forever: seen only with STACK_LOG_LEVEL=debug
        log.debug("sweep: nothing to do")
    return report


def _reclaim_lost(runtime: Runtime, now: datetime) -> tuple[int, int]:
    """Running jobs whose attempt is lost, by their owners' heartbeats."""
    store = runtime.store
    jobs = store.running_owned(limit=BATCH * 10)
    if not jobs:
        return 0, 0
    workers = store.workers(sorted({job.worker_id for job in jobs if job.worker_id}))
    policy = runtime.runner.liveness
    requeued = failed = 0
    for job in jobs:
        worker = workers.get(job.worker_id or "")
        reason = lost_reason(job, worker, now=now, dead_after=policy.dead_after, settle=policy.settle)
        if reason is None:
            continue
        with job_logging(job.id, job.kind):
            released = runtime.runner.release_lost(job, reason, resend=True)
        if released is None:
            continue
        if released.status is JobStatus.PENDING:
            requeued += 1
        else:
            failed += 1
    return requeued, failed


def _time_limit(runtime: Runtime, job: Job) -> float:
    try:
        kind_limit = runtime.registry.get(job.kind).time_limit
    except UnknownKindError:
        kind_limit = None
    return kind_limit or runtime.settings.task_time_limit


def _reclaim_silent(runtime: Runtime, now: datetime) -> tuple[int, int]:
    """Jobs with no heartbeating owner: running inline (an API process that died) past its time
    limit + STACK_STALL_MARGIN, or retrying past the longest backoff + STACK_WORKER_DEAD_AFTER
    (the worker holding its retry message died; the broker would hand it out only after the
    visibility timeout)."""
    settings = runtime.settings
    retry_patience = settings.task_retry_backoff_max + settings.worker_dead_after

    def patience(job: Job) -> float:
        if job.status is JobStatus.RETRY:
            return retry_patience
        return _time_limit(runtime, job) + settings.stall_margin

    shortest = min(
        retry_patience,
        settings.stall_margin
        + min([settings.task_time_limit, *(k.time_limit for k in runtime.registry if k.time_limit)]),
    )

    def decide(job: Job) -> str | None:
        silent = (now - as_utc(job.updated_at)).total_seconds()
        if silent < patience(job):
            return None
        if job.status is JobStatus.RETRY:
            return "requeue"  # its attempt ended; only its message is missing
        allowed = runtime.runner.max_attempts(job.kind)
        if job.attempts >= allowed:
            return (
                f"its inline run showed no sign of life for {silent:.0f} s; attempts spent ({job.attempts})"
            )
        return "requeue"

    taken = runtime.store.take_stalled(
        silent_since=now - timedelta(seconds=shortest), limit=BATCH, decide=decide
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
    """Pending jobs whose messages are gone from the broker, sent again (oldest first). Only a
    Redis broker is looked into; other brokers (RabbitMQ) keep their messages through restarts."""
    broker = runtime.settings.broker_url
    if not is_redis_url(broker):
        return 0
    try:
        with redis_client(broker, timeout=runtime.settings.broker_timeout) as client:
            missing = _missing_messages(runtime, client, now)
            if missing:  # a message in a worker's hands between queue and unacked: look again
                time.sleep(RECOUNT_AFTER)
                again = _missing_messages(runtime, client, now)
                missing = {q: min(n, again.get(q, 0)) for q, n in missing.items() if again.get(q, 0) > 0}
    except (redis.RedisError, OSError) as exc:
        log.warning("sweep: could not count the queues, lost messages wait for the next sweep: %s", exc)
        return 0
    dispatched_before = now - timedelta(seconds=runtime.settings.dispatch_grace)
    resent = 0
    for queue, count in missing.items():
        jobs = runtime.store.take_lost(
            queue=queue, dispatched_before=dispatched_before, limit=min(count, BATCH)
        )
        sent, broker_down = _send(runtime, celery, jobs)
        if sent:
            log.warning(
                "sweep: %d message(s) of queue %s were lost by the broker; sent %d again", count, queue, sent
            )
        resent += sent
        if broker_down:
            break
    return resent


def _missing_messages(runtime: Runtime, client: redis.Redis, now: datetime) -> dict[str, int]:
    """{queue: lost messages}: pending jobs sent well before a snapshot of the broker that are
    neither queued nor in a worker's hands (unacknowledged) in it. Counting in this order never
    takes a message being handed to a worker for a lost one; a message of a job sent after the
    snapshot is not counted at all (so losses may be seen a sweep late, never wrongly)."""
    sent_before = now - timedelta(seconds=runtime.settings.dispatch_grace)
    queues = sorted(set(runtime.registry.queues()) | {"default"})
    depths, in_hands = queue_snapshot(client, queues, prefix=runtime.settings.redis_prefix)
    sent = sent_pending_by_queue(runtime.engine, sent_before=sent_before, excluding=in_hands)
    return {q: n - depths.get(q, 0) for q, n in sent.items() if n > depths.get(q, 0)}


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
    runtime.store.purge_workers(silent_before=now - WORKER_RETENTION)
    days = runtime.settings.job_retention_days
    if not days:
        return 0
    return runtime.store.purge_finished(finished_before=now - timedelta(days=days))
