"""One attempt of one job: claim the row, run the handler, record the outcome.

Shared by the Celery task (worker) and by inline mode (`CELERY_ENABLED=false`), so both take
exactly the same path through the lifecycle; only what happens on `retry` differs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from billiard.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from stack.errors import UnknownKindError
from stack.jobs.events import EventPublisher
from stack.jobs.models import Job, JobStatus
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
class Outcome:
    status: JobStatus | None  # None: nothing ran (job unknown, finished or revoked before start)
    job: Job | None = None
    countdown: float = 0.0


@dataclass
class JobRunner:
    store: JobStore
    registry: JobRegistry
    publisher: EventPublisher
    storage_dir: Path
    retry_policy: RetryPolicy
    progress_interval: float

    def run(self, job_id: str, *, worker: str, resume: bool = False) -> Outcome:
        """`resume`: this message may take over a job marked running (see JobStore.claim)."""
        with self.store.pinned() as store:
            return replace(self, store=store)._attempt(job_id, worker=worker, resume=resume)

    def _attempt(self, job_id: str, *, worker: str, resume: bool) -> Outcome:
        job = self.store.claim(job_id, worker=worker, resume=resume)
        if job is None:
            existing = self.store.get(job_id)
            if existing is None:
                log.error(
                    "job %s is not in the database; is this worker on another DATABASE_URL than the API?",
                    job_id,
                )
            elif existing.status.is_terminal:
                log.info("job %s is already %s; not running it again", job_id, existing.status.value)
            else:
                log.warning(
                    "job %s is already running on %s (attempt %d); dropped a duplicate message",
                    job_id,
                    existing.worker,
                    existing.attempts,
                )
            return Outcome(status=None, job=existing)
        log.info("job %s (%s) attempt %d started on %s", job.id, job.kind, job.attempts, worker)
        self._publish(job)
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
            _check_json(result)  # no flush: success writes progress 100 itself
        except JobCancelled:
            log.info("job %s was cancelled while running; stopped", job.id)
            return Outcome(status=JobStatus.REVOKED, job=self.store.get(job.id))
        except TransientError as exc:
            return self._retry(job, kind, f"{type(exc).__name__}: {exc}")
        except OperationalError:
            raise  # the job database itself is unreachable: nothing to record; the caller retries
        except SoftTimeLimitExceeded:
            return self._fail(job, f"timed out after its soft time limit (attempt {job.attempts})")
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.kind)
            return self._fail(job, f"{type(exc).__name__}: {exc}")
        if not self.store.succeed(job.id, result=result):  # revoked while finishing
            return Outcome(status=JobStatus.REVOKED, job=self.store.get(job.id))
        log.info("job %s (%s) succeeded", job.id, job.kind)
        self.publisher.publish(
            job.id, {"status": JobStatus.SUCCESS.value, "progress": 100, "message": "done"}
        )
        return Outcome(status=JobStatus.SUCCESS)

    def _retry(self, job: Job, kind: JobKind, error: str) -> Outcome:
        max_retries = self.retry_policy.max_retries if kind.max_retries is None else kind.max_retries
        if job.attempts > max_retries:
            return self._fail(job, f"gave up after {job.attempts} attempts; last error: {error}")
        countdown = self.retry_policy.countdown(job.attempts)
        updated = self.store.retry(job.id, error=error, countdown=countdown)
        if updated is None:
            return Outcome(status=JobStatus.REVOKED, job=self.store.get(job.id))
        log.warning(
            "job %s attempt %d failed transiently (%s); retry in %g s", job.id, job.attempts, error, countdown
        )
        self._publish(updated)
        return Outcome(status=JobStatus.RETRY, job=updated, countdown=countdown)

    def _fail(self, job: Job, error: str) -> Outcome:
        failed = self.store.fail(job.id, error=error)
        if failed is None:
            return Outcome(status=JobStatus.REVOKED, job=self.store.get(job.id))
        log.warning("job %s (%s) failed: %s", job.id, job.kind, error)
        self._publish(failed)
        return Outcome(status=JobStatus.FAILURE, job=failed)

    def _publish(self, job: Job) -> None:
        self.publisher.publish(
            job.id, {"status": job.status.value, "progress": job.progress, "message": job.message}
        )


def _check_json(result: object) -> None:
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"handler returned a result that is not JSON-serialisable: {exc}") from exc
