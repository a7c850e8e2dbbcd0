"""Submitting and cancelling jobs: what the API (or any caller) does, broker or not."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from stack.jobs.dispatched import DispatchRecorder
from stack.jobs.liveness import Owner
from stack.jobs.models import Job, JobStatus, utcnow
from stack.jobs.registry import JobKind
from stack.runtime import Runtime

log = logging.getLogger(__name__)

DEFERRED_MESSAGE = "queued; not dispatched yet: the broker was unreachable"


def publish(celery: Celery, kind: JobKind, job_id: str) -> None:
    """The one way a job message is sent: the job id only, to the kind's queue, no result
    subscription (the row is the result store)."""
    celery.send_task(
        kind.task_name,
        args=[job_id],
        task_id=job_id,
        queue=kind.queue,
        ignore_result=True,
        # What Celery would compute with saferepr (shown by Flower), for a tenth of the cost.
        argsrepr=repr([job_id]),
        kwargsrepr="{}",
    )


class JobService:
    def __init__(self, runtime: Runtime, celery: Celery | None) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.registry = runtime.registry
        self.celery = celery  # None: inline mode (CELERY_ENABLED=false)
        self.dispatched = DispatchRecorder(self.store.mark_dispatched)

    def close(self) -> None:
        """Write what is still pending (dispatch marks, events); the API calls it on shutdown."""
        self.dispatched.close()
        self.runtime.close()

    @property
    def inline(self) -> bool:
        return self.celery is None

    def submit(self, kind: JobKind, params: dict[str, Any]) -> Job:
        """Commit the row, then publish: a broker outage leaves a pending row to dispatch later,
        never a message about a job that does not exist."""
        job = self.store.create(kind=kind.name, queue=kind.queue, params=params)
        if self.celery is None:
            return self._run_inline(job.id)
        if not self.dispatch(job):
            return self.store.note(job.id, DEFERRED_MESSAGE) or job
        job.dispatched_at = utcnow()
        self.dispatched.add(job.id)
        return job

    def dispatch(self, job: Job) -> bool:
        """Publish one job's message to its queue; False (logged) when the broker is unreachable."""
        assert self.celery is not None
        try:
            publish(self.celery, self.registry.get(job.kind), job.id)
        except (BrokerError, OSError) as exc:
            log.warning("job %s accepted but not dispatched, broker unreachable: %s", job.id, exc)
            return False
        return True

    def _run_inline(self, job_id: str) -> Job:
        runner = self.runtime.runner
        while True:
            outcome = runner.run(job_id, owner=Owner.inline())
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
