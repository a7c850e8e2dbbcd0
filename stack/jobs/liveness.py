"""Who runs an attempt, and when that attempt is known to be over without an outcome.

Every worker instance (a `celery worker` main process) has a row in `stack_workers` that it
refreshes every STACK_HEARTBEAT_INTERVAL seconds with the ids of the jobs its pool is executing.
Every claim writes its owner into the job row: the worker instance, the process and the time.
A running job's attempt is lost, and only then may anyone else take the job, when

- its worker instance stopped heartbeating for STACK_WORKER_DEAD_AFTER seconds (SIGKILL, OOM,
  a lost node) or is gone from the table (it shut down), or
- its worker is alive but, in a heartbeat taken after the claim, no longer executes the job
  (the attempt ended without recording anything: e.g. the database went away mid-attempt).

This module holds the rules only; `stack.jobs.supervision` is the Celery side (heartbeat thread,
the main process noticing a dead pool process) and the sweep applies the rules on a schedule.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime

from stack.jobs.models import RUNNING_STATUSES, Job, Worker, as_utc


@dataclass(frozen=True)
class Owner:
    """Who runs an attempt: a worker instance's id (None inline: no heartbeat), its node name
    for people, and the process executing the handler."""

    name: str
    worker_id: str | None = None
    pid: int = 0

    @classmethod
    def inline(cls) -> Owner:
        return cls(name="inline", pid=os.getpid())


def new_worker_id() -> str:
    return str(uuid.uuid4())


def default_node_name() -> str:
    return f"worker@{socket.gethostname()}"


def lost_reason(
    job: Job, worker: Worker | None, *, now: datetime, dead_after: float, settle: float
) -> str | None:
    """Why the running attempt of `job` is known to be over with no outcome, or None when its
    owner may still be running it (or the job is not running, or has no heartbeating owner).

    `settle`: how long after a claim the worker's heartbeat must be before a job missing from
    its list counts as not running (a pool process claims the job a moment after the main
    process learns it took the task; under load that moment can stretch)."""
    if job.status not in RUNNING_STATUSES or job.worker_id is None:
        return None
    who = job.worker or "its worker"
    if worker is None:
        return f"{who} is gone (it stopped, or was lost and cleaned up)"
    silent = (now - as_utc(worker.heartbeat_at)).total_seconds()
    if silent > dead_after:
        return f"{who} stopped heartbeating {silent:.0f} s ago (killed, out of memory, or its node lost)"
    claimed = job.claimed_at
    settled = claimed is not None and (as_utc(worker.heartbeat_at) - as_utc(claimed)).total_seconds() > settle
    if settled and job.id not in worker.running:
        return f"{who} is alive but no longer running it (the attempt ended without an outcome)"
    return None


def attempts_allowed(max_retries: int) -> int:
    return max_retries + 1


def give_up_error(job: Job, reason: str, *, allowed: int) -> str:
    """The final error of a job whose last allowed attempt was lost."""
    lost = job.lost_attempts + 1
    if lost == job.attempts:
        return (
            f"worker lost {lost} time{'s' if lost > 1 else ''} while running this job: killed or out of "
            f"memory? (last: {reason}); gave up after {job.attempts} of {allowed} attempts"
        )
    return f"gave up after {job.attempts} of {allowed} attempts; the last one was lost: {reason}"
