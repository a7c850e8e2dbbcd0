"""Submitting and cancelling jobs: what the API (or any caller) does, broker or not."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from stack.jobs.models import Job, JobStatus
from stack.jobs.registry import JobKind
from stack.runtime import Runtime

log = logging.getLogger(__name__)

DEFERRED_MESSAGE = "queued; not dispatched yet: the broker was unreachable"


class JobService:
    def __init__(self, runtime: Runtime, celery: Celery | None) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.registry = runtime.registry
        self.celery = celery  # None: inline mode (CELERY_ENABLED=false)

    @property
    def inline(self) -> bool:
        return self.celery is None

    def submit(self, kind: JobKind, params: dict[str, Any]) -> Job:
        """Write the row first, then publish: a broker outage leaves a pending row to dispatch
        later, never a message about a job that does not exist."""
        job = self.store.create(kind=kind.name, queue=kind.queue, params=params)
        if self.celery is None:
            return self._run_inline(job.id)
        return self._dispatch(job, kind)

    def _dispatch(self, job: Job, kind: JobKind) -> Job:
        assert self.celery is not None
        try:
            self.celery.send_task(kind.task_name, args=[job.id], task_id=job.id, queue=kind.queue)
        except (BrokerError, OSError) as exc:
            log.warning("job %s accepted but not dispatched, broker unreachable: %s", job.id, exc)
            return self.store.note(job.id, DEFERRED_MESSAGE) or job
        self.store.mark_dispatched(job.id)
        return job

    def _run_inline(self, job_id: str) -> Job:
        runner = self.runtime.runner
        while True:
            outcome = runner.run(job_id, worker="inline")
            if outcome.status is not JobStatus.RETRY:
                break
            time.sleep(outcome.countdown)
        job = self.store.get(job_id)
        assert job is not None
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Revoke the row (the truth) and tell the workers (best effort). A running handler stops
        at its next progress report. Returns None if the job does not exist."""
        revoked = self.store.revoke(job_id)
        if revoked is None:
            return self.store.get(job_id)
        if self.celery is not None:
            try:
                self.celery.control.revoke(job_id)
            except (BrokerError, OSError) as exc:
                log.warning("job %s revoked in the database; workers not told: %s", job_id, exc)
        return revoked
