"""The Celery side of liveness (rules in `stack.jobs.liveness`), in a worker's main process.

- `Liveness`, a worker bootstep: gives the worker instance its id before the pool forks (so every
  pool process can name its owner in the job rows it claims), registers it in `stack_workers`,
  heartbeats from a daemon thread with the ids of the jobs its pool executes, and removes the
  row on shutdown.
- `JobRequest`, the request class of job tasks: when a pool process dies mid-job (native crash,
  OOM, `os._exit`) or is killed at its hard time limit, the main process learns it at once;
  it ends that attempt in the job row right there (queued again, or failed when attempts are
  spent / failed naming the time limit), before Celery requeues or acks the message.

The main process talks to the database through an engine without a pool, so no pooled
connection can ever be inherited by a forked pool process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import bootsteps
from celery.worker import state
from celery.worker.request import Request

from stack.jobs.liveness import Owner, new_worker_id
from stack.jobs.models import RUNNING_STATUSES, Job, JobStatus, utcnow
from stack.logs import job_logging
from stack.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)

# This process's worker instance, set before the pool forks so that pool processes inherit it.
_current: Supervisor | None = None


def current_owner(node_name: str | None) -> Owner:
    """The owner of an attempt run by this process: its worker instance and pid."""
    supervisor = _current
    return Owner(
        name=node_name or (supervisor.name if supervisor else "worker"),
        worker_id=supervisor.worker_id if supervisor else None,
        pid=os.getpid(),
    )


def running_job_ids() -> list[str]:
    """Ids of the tasks this worker's pool executes now (the main process's view)."""
    for _ in range(3):
        try:
            return sorted({request.id for request in list(state.active_requests)})
        except RuntimeError:  # the set changed while being copied; copy again
            continue
    return []


class Supervisor:
    """One worker instance: its id, its heartbeat, and what it does when a pool process dies."""

    def __init__(self, runtime: Runtime, *, name: str, queues: Sequence[str]) -> None:
        self.runtime = runtime
        self.worker_id = new_worker_id()
        self.name = name
        self.queues = list(queues)
        self._running: Callable[[], list[str]] = running_job_ids
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False  # warn once per outage, not every few seconds

    # --- heartbeat --------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._register()
        except Exception as exc:  # e.g. started before the api migrated the database
            self._report_failure(exc)
        self._thread = threading.Thread(target=self._beat_forever, name="stack-heartbeat", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        self.runtime.store.register_worker(
            worker_id=self.worker_id, name=self.name, pid=os.getpid(), queues=self.queues
        )
        # Celery's banner is off (--quiet): this line says what the worker consumes.
        log.info(
            "worker %s (%s) registered; queues: %s; kinds: %s; heartbeat every %g s",
            self.name,
            self.worker_id,
            ", ".join(self.queues),
            ", ".join(kind.name for kind in self.runtime.registry if kind.queue in self.queues) or "none",
            self.runtime.settings.heartbeat_interval,
        )

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.runtime.store.forget_worker(self.worker_id)
        except Exception as exc:  # the sweep treats a silent row as dead anyway
            log.warning("could not remove worker %s from stack_workers: %s", self.name, exc)
        self.runtime.close()  # the events of jobs it released

    def beat(self) -> None:
        at = utcnow()  # before reading `running`: a job claimed before `at` is in the list
        if not self.runtime.store.heartbeat(self.worker_id, running=self._running(), at=at):
            self._register()  # registration failed at start, or the row was cleaned up since

    def _beat_forever(self) -> None:
        interval = self.runtime.settings.heartbeat_interval
        while not self._stopping.wait(interval):
            try:
                self.beat()
            except Exception as exc:
                self._report_failure(exc)
            else:
                if self._failing:
                    log.warning("worker %s: heartbeat recorded again", self.name)
                self._failing = False

    def _report_failure(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            cause = getattr(exc, "orig", None) or exc
            log.warning(
                "worker %s: heartbeat failed (%s); is the database migrated (stack run migrate)? "
                "Past STACK_WORKER_DEAD_AFTER=%g s without one, its running jobs are run elsewhere",
                self.name,
                str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__,
                self.runtime.settings.worker_dead_after,
            )

    # --- a pool process ended without an outcome --------------------------------------------------
    def attempt_ended(
        self, job_id: str, *, pid: int | None, exc: BaseException, hard_limit: float | None
    ) -> None:
        """Record in the job row that the attempt `pid` ran is over: killed at the hard time
        limit (failure), or its process died (queued again, or failed when attempts are spent)."""
        job = self.runtime.store.get(job_id)
        if job is None or job.status not in RUNNING_STATUSES:
            return
        if (job.worker_id, job.worker_pid) != (self.worker_id, pid):
            return  # another attempt owns the row now
        with job_logging(job.id, job.kind):  # JSON lines name the job whose worker was lost
            self._end_attempt(job, pid=pid, exc=exc, hard_limit=hard_limit)

    def _end_attempt(
        self, job: Job, *, pid: int | None, exc: BaseException, hard_limit: float | None
    ) -> None:
        store, runner = self.runtime.store, self.runtime.runner
        if isinstance(exc, TimeLimitExceeded):
            failed = store.fail(
                job.id,
                attempt=job.attempts,
                error=f"killed at its hard time limit of {_seconds(hard_limit)} ({_limit_setting(job.kind)}) "
                f"during attempt {job.attempts}",
            )
            if failed is not None:
                log.warning("job %s (%s) failed: %s", job.id, job.kind, failed.error)
                runner.publish_state(failed)
                runner.metrics.finished(job, JobStatus.FAILURE)
            return
        runner.release_lost(job, f"its process (pid {pid}) died: {exc}", resend=False)


def _seconds(limit: float | None) -> str:
    return f"{limit:g} s" if limit else "its time limit"


def _limit_setting(kind: str) -> str:
    return f"STACK_TASK_TIME_LIMIT, or the time_limit of kind {kind!r}"


def report_attempt_end(request: Any, exc_info: Any) -> None:
    """What the main process learns about a job task's failure that its pool process could not
    record: the process died, or was killed at the hard time limit."""
    exc = getattr(exc_info.exception, "exc", exc_info.exception)  # ExceptionWithTraceback
    cancelled = getattr(request, "_already_cancelled", False) or getattr(request, "_already_revoked", False)
    died = isinstance(exc, WorkerLostError) or (
        isinstance(exc, SystemExit | KeyboardInterrupt) and not cancelled
    )
    if not (died or isinstance(exc, TimeLimitExceeded)) or _current is None:
        return
    hard_limit = (request.time_limits or (None, None))[1] or request.task.time_limit
    hard_limit = hard_limit or request.task.app.conf.task_time_limit
    try:
        _current.attempt_ended(request.id, pid=request.worker_pid, exc=exc, hard_limit=hard_limit)
    except Exception:  # the database may be down: the sweep finds the job by liveness later
        log.exception("job %s: could not record the end of its attempt", request.id)


class JobRequest(Request):  # type: ignore[misc]
    """Celery's request, telling the job row first when an attempt ended in the main process."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        report_attempt_end(self, exc_info)  # before Celery requeues or acks the message
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class Liveness(bootsteps.StartStopStep):
    """The worker bootstep: a Supervisor for this worker instance."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        global _current
        lazy = worker.app.stack_runtime
        queues = sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
        # No pool in the main process: see the module docstring.
        runtime = build_runtime(lazy.settings, lazy.registry, pooled=False)
        self.supervisor = Supervisor(runtime, name=worker.hostname, queues=queues)
        _current = self.supervisor  # before the pool forks
        super().__init__(worker, **kwargs)

    def create(self, worker: Any) -> Supervisor:
        return self.supervisor  # started and stopped (or terminated) with the worker
