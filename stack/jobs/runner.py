"""One attempt of one job: claim the row, run the handler, record the outcome.

Shared by the Celery task (worker) and by inline mode (`CELERY_ENABLED=false`), so both take
exactly the same path through the lifecycle; only what happens on `retry` differs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from billiard.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from stack.errors import UnknownKindError
from stack.jobs.events import EventPublisher
from stack.jobs.liveness import Owner, attempts_allowed, give_up_error, lost_reason
from stack.jobs.metrics import MetricsRecorder, NullRecorder
from stack.jobs.models import Job, JobStatus, utcnow
from stack.jobs.progress import ProgressReporter
from stack.jobs.registry import JobCancelled, JobContext, JobKind, JobRegistry, TransientError
from stack.jobs.store import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff: float
    backoff_max: float

    def countdown(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class LivenessPolicy:
    """When a running job's owner counts as dead (see stack.jobs.liveness.lost_reason)."""

    dead_after: float = 30.0
    settle: float = 5.0


@dataclass(frozen=True)
class Outcome:
    status: JobStatus | None  # None: nothing ran (job unknown, finished, revoked or running)
    job: Job | None = None
    countdown: float = 0.0


@dataclass(frozen=True)
class Abandoned:
    """The attempt a message's sender gave up with nothing recorded (the database went away):
    that message alone may take the job over from it, since its owner is alive and well."""

    worker_id: str | None
    attempt: int


class AttemptAbandoned(Exception):
    """The database became unreachable mid-attempt: nothing about the job could be recorded.
    The caller runs it again later, carrying `abandoned` so the new message may take over."""

    def __init__(self, job_id: str, abandoned: Abandoned, cause: OperationalError) -> None:
        super().__init__(
            f"job {job_id}: attempt {abandoned.attempt} abandoned, database unreachable: {cause}"
        )
        self.abandoned = abandoned
        self.cause = cause


@dataclass
class JobRunner:
    store: JobStore
    registry: JobRegistry
    publisher: EventPublisher
    storage_dir: Path
    retry_policy: RetryPolicy
    progress_interval: float
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    # Histograms and counters shared by every process (Redis); one round trip per outcome.
    metrics: MetricsRecorder = field(default_factory=NullRecorder)

    def run(self, job_id: str, *, owner: Owner, abandoned: Abandoned | None = None) -> Outcome:
        with self.store.pinned() as store:
            return replace(self, store=store)._attempt(job_id, owner=owner, abandoned=abandoned)

    def max_attempts(self, kind_name: str) -> int:
        try:
            kind_retries = self.registry.get(kind_name).max_retries
        except UnknownKindError:
            kind_retries = None
        return attempts_allowed(self.retry_policy.max_retries if kind_retries is None else kind_retries)

    def release_lost(self, job: Job, reason: str, *, resend: bool) -> Job | None:
        """End `job`'s attempt, known to be lost for `reason`: queued again, or failed when it
        was the last one allowed. None when the row had moved on already."""
        allowed = self.max_attempts(job.kind)
        give_up = give_up_error(job, reason, allowed=allowed) if job.attempts >= allowed else None
        released = self.store.release(job, reason=reason, give_up=give_up, resend=resend)
        if released is None:
            return None
        if released.status is JobStatus.FAILURE:
            log.warning("job %s (%s) failed: %s", job.id, job.kind, released.error)
            self.metrics.finished(job, JobStatus.FAILURE, lost=True)
        else:
            log.warning(
                "job %s (%s) attempt %d lost: %s; queued again", job.id, job.kind, job.attempts, reason
            )
            self.metrics.lost(job)
        self.publish_state(released)
        return released

    def _attempt(self, job_id: str, *, owner: Owner, abandoned: Abandoned | None) -> Outcome:
        job = self.store.claim(job_id, owner=owner)
        if job is None:
            existing = self.store.get(job_id)
            job = self._take_over(existing, owner=owner, abandoned=abandoned) if existing else None
            if job is None:
                if existing is None:
                    log.error(
                        "job %s is not in the database; is this worker on another DATABASE_URL than the API?",
                        job_id,
                    )
                return Outcome(status=None, job=existing)
        log.info("job %s (%s) attempt %d started on %s", job.id, job.kind, job.attempts, owner.name)
        try:
            return self._run_claimed(job)
        except OperationalError as exc:
            raise AttemptAbandoned(job.id, Abandoned(owner.worker_id, job.attempts), exc) from exc

    def _take_over(self, job: Job, *, owner: Owner, abandoned: Abandoned | None) -> Job | None:
        """The claim found `job` not claimable. If it is running and its attempt is known to be
        lost, end that attempt and claim the job for a new one; otherwise this message is a
        duplicate (or late) and is dropped."""
        if job.status.is_terminal:
            log.info("job %s is already %s; not running it again", job.id, job.status.value)
            return None
        if abandoned is not None and (job.worker_id, job.attempts) == (
            abandoned.worker_id,
            abandoned.attempt,
        ):
            reason: str | None = "the database was unreachable mid-attempt"
        else:
            workers = self.store.workers([job.worker_id]) if job.worker_id else {}
            reason = lost_reason(
                job,
                workers.get(job.worker_id or ""),
                now=utcnow(),
                dead_after=self.liveness.dead_after,
                settle=self.liveness.settle,
            )
        if reason is None:
            log.warning(
                "job %s is already running on %s (attempt %d); dropped a duplicate message",
                job.id,
                job.worker,
                job.attempts,
            )
            return None
        released = self.release_lost(job, reason, resend=False)
        if released is None or released.status is not JobStatus.PENDING:
            return None
        return self.store.claim(job.id, owner=owner)

    def _run_claimed(self, job: Job) -> Outcome:
        self.publish_state(job)
        try:
            kind = self.registry.get(job.kind)
            params = kind.validate(job.params)
        except UnknownKindError as exc:
            return self._fail(job, f"{exc}; this worker's STACK_KINDS does not define it")
        except ValidationError as exc:
            return self._fail(job, f"stored params are no longer valid for {job.kind}: {exc}")
        return self._execute(job, kind, params)

    def _execute(self, job: Job, kind: JobKind, params: object) -> Outcome:
        reporter = ProgressReporter(
            job_id=job.id,
            attempt=job.attempts,
            store=self.store,
            publisher=self.publisher,
            min_interval=self.progress_interval,
            start=job.progress,
        )
        context = JobContext(
            id=job.id,
            kind=job.kind,
            attempt=job.attempts,
            storage_dir=self.storage_dir,
            progress=reporter,
        )
        try:
            result = kind.handler(params, context)
            _check_storable(result)  # no flush: success writes progress 100 itself
        except JobCancelled:
            return self._stopped(job)
        except TransientError as exc:
            return self._retry(job, kind, f"{type(exc).__name__}: {exc}")
        except OperationalError:
            raise  # the job database itself is unreachable: nothing to record; the caller retries
        except SoftTimeLimitExceeded:
            return self._fail(job, f"timed out after its soft time limit (attempt {job.attempts})")
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.kind)
            return self._fail(job, f"{type(exc).__name__}: {exc}")
        try:
            stored = self.store.succeed(job.id, result=result, attempt=job.attempts)
        except OperationalError:
            raise
        except DBAPIError as exc:  # a value the database refuses, whatever json.dumps allowed
            return self._fail(job, f"the database refused the handler's result: {exc.orig}")
        if not stored:  # revoked (or taken over) while finishing
            return self._stopped(job)
        log.info("job %s (%s) succeeded", job.id, job.kind)
        self.publisher.publish(
            job.id, {"status": JobStatus.SUCCESS.value, "progress": 100, "message": "done"}
        )
        self.metrics.finished(job, JobStatus.SUCCESS)
        return Outcome(status=JobStatus.SUCCESS)

    def _stopped(self, job: Job) -> Outcome:
        """The row stopped being this attempt's while it ran: revoked, or taken over after the
        attempt was judged lost (its worker looked dead). Either way this run records nothing."""
        now = self.store.get(job.id)
        if now is not None and now.status is JobStatus.REVOKED:
            log.info("job %s was cancelled while running; stopped", job.id)
            return Outcome(status=JobStatus.REVOKED, job=now)
        log.warning(
            "job %s attempt %d stopped: the job moved on without it (now %s, attempt %s)",
            job.id,
            job.attempts,
            now.status.value if now else "deleted",
            now.attempts if now else "-",
        )
        return Outcome(status=None, job=now)

    def _retry(self, job: Job, kind: JobKind, error: str) -> Outcome:
        allowed = self.max_attempts(kind.name)
        if job.attempts >= allowed:
            return self._fail(job, f"gave up after {job.attempts} of {allowed} attempts; last error: {error}")
        countdown = self.retry_policy.countdown(job.attempts)
        updated = self.store.retry(job.id, error=error, countdown=countdown, attempt=job.attempts)
        if updated is None:
            return self._stopped(job)
        log.warning(
            "job %s attempt %d failed transiently (%s); retry in %g s", job.id, job.attempts, error, countdown
        )
        self.publish_state(updated)
        self.metrics.retried(job)
        return Outcome(status=JobStatus.RETRY, job=updated, countdown=countdown)

    def _fail(self, job: Job, error: str) -> Outcome:
        failed = self.store.fail(job.id, error=error, attempt=job.attempts)
        if failed is None:
            return self._stopped(job)
        log.warning("job %s (%s) failed: %s", job.id, job.kind, error)
        self.publish_state(failed)
        self.metrics.finished(job, JobStatus.FAILURE)
        return Outcome(status=JobStatus.FAILURE, job=failed)

    def publish_state(self, job: Job) -> None:
        self.publisher.publish(
            job.id, {"status": job.status.value, "progress": job.progress, "message": job.message}
        )


def _check_storable(result: object) -> None:
    """Strict JSON, as the database stores it: NaN and Infinity are not JSON (PostgreSQL refuses
    them). What else the database refuses fails the job when the result is written."""
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"handler returned a result that cannot be stored as JSON: {exc}") from exc
