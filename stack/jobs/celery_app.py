"""The Celery application: one task per job kind, routed to the kind's queue.

Tasks carry only the job id (JSON, never pickle). The row holds params, progress and result, so a
message can be lost, duplicated or redelivered without the job's truth changing.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict
from typing import Any

from celery import Celery, Task, signals
from sqlalchemy.exc import OperationalError

import stack.jobs.control  # noqa: F401  # registers the stack_fingerprint remote-control command in workers
from stack.config import VISIBILITY_MARGIN, Settings
from stack.errors import ConfigError
from stack.jobs.broker import transport_for
from stack.jobs.models import JobStatus
from stack.jobs.registry import TASK_PREFIX, JobKind, JobRegistry
from stack.jobs.runner import Abandoned, AttemptAbandoned
from stack.jobs.supervision import JobRequest, Liveness, current_owner
from stack.logs import configure_for, job_logging
from stack.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)

BEAT_SCHEDULER = "stack.jobs.beat:SweepingScheduler"


def visibility_timeout(settings: Settings, registry: JobRegistry) -> float:
    """How long Redis waits before handing an unacknowledged job to another worker: past the
    longest time limit of any kind, or a slow job's message would be redelivered while it runs.
    (Such a copy is dropped at its claim, since the owner is alive; the broker still had to
    carry it.) An explicit STACK_VISIBILITY_TIMEOUT shorter than a kind's limit is refused."""
    longest_kind = max(registry, key=lambda k: k.time_limit or 0, default=None)
    kind_limit = (longest_kind.time_limit or 0) if longest_kind else 0
    if settings.visibility_timeout is None:
        return max(settings.task_time_limit, kind_limit) + VISIBILITY_MARGIN
    if longest_kind is not None and kind_limit >= settings.visibility_timeout:
        raise ConfigError(
            f"STACK_VISIBILITY_TIMEOUT={settings.visibility_timeout:g} is not longer than the "
            f"time_limit of job kind {longest_kind.name!r} ({kind_limit:g} s): Redis would hand its "
            f"running job to a second worker. Raise STACK_VISIBILITY_TIMEOUT above {kind_limit:g}, "
            "or unset it (it then defaults to the longest time limit + 60 s)."
        )
    return settings.visibility_timeout


def celery_config(settings: Settings, registry: JobRegistry) -> dict[str, Any]:
    timeout = settings.broker_timeout
    visibility = visibility_timeout(settings, registry)
    transport_options: dict[str, Any] = {
        # Unacked jobs come back after this long when a whole worker died (SIGKILL, OOM, node
        # lost); the sweep re-queues them much sooner, by liveness (STACK_WORKER_DEAD_AFTER).
        "visibility_timeout": visibility,
        # Look for such abandoned jobs every few seconds, not kombu's default of every ~100 s.
        "unacked_restore_interval": int(max(1, min(10, visibility // 4))),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, 5.0),
    }
    if settings.redis_prefix:
        # Every key and channel of the broker (and of a Redis result backend) starts with the
        # namespace: two apps on one Redis each have their own `default` queue, their own
        # worker mailboxes (pidbox) and their own unacked hash. Other brokers ignore it.
        transport_options["global_keyprefix"] = settings.redis_prefix
    return {
        # Beat runs the sweep itself, on time even when every worker slot is busy.
        "beat_scheduler": BEAT_SCHEDULER,
        "broker_url": settings.broker_url,
        "broker_transport": transport_for(settings.broker_url),
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,  # the job row is the result store
        "task_default_queue": "default",
        "task_routes": {k.task_name: {"queue": k.queue} for k in registry},
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "worker_prefetch_multiplier": 1,  # long jobs: a busy worker must not hoard queued ones
        "worker_send_task_events": True,  # Flower shows tasks
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": timeout,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "redis_socket_connect_timeout": timeout,
        "redis_socket_timeout": max(timeout, 5.0),
        "task_publish_retry_policy": {
            # At submit time a dead broker must cost the client about a second, not hang it:
            # the row is already written and the sweep dispatches it later.
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    }


class LazyRuntime:
    """The process's Runtime, built by the first task that needs it: after the prefork fork, so
    children never share the parent's connections; one for all kinds, so one engine per process."""

    def __init__(self, settings: Settings, registry: JobRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._runtime: Runtime | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def get(self) -> Runtime:
        with self._lock:
            if self._runtime is not None and self._pid != os.getpid():
                # Inherited through a fork: drop the parent's pooled connections unclosed (closing
                # them would end the parent's sessions) and build this process's own.
                self._runtime.store.dispose(close=False)
                self._runtime = None
            if self._runtime is None:
                self._runtime = build_runtime(self.settings, self.registry)
                self._pid = os.getpid()
                # Weakly held (a bound method): an app built and dropped, as tests do, leaves none.
                signals.worker_process_shutdown.connect(self._on_shutdown)  # a pool process
                signals.worker_shutdown.connect(self._on_shutdown)  # solo/threads: jobs ran here
            return self._runtime

    def _on_shutdown(self, **_: Any) -> None:
        """Send the events and metrics the outbox still holds before the process exits."""
        if self._runtime is not None and self._pid == os.getpid():
            self._runtime.close()


class NotAStackMessage(Exception):
    """A task message with no job row behind it. Declared in the task's `throws`: Celery records
    a failure (Flower shows why) and logs it in one line, without a traceback."""


def _job_message(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Abandoned | None]:
    """The job id (and take-over token) of a message stack sent: args [job_id], the job id as
    task id, at most an `abandoned` token. Anything else was sent some other way (`celery call`,
    `send_task` by hand) with no job row behind it: refused, not recorded as a success."""
    job_id = args[0] if len(args) == 1 else None
    token = kwargs.get("abandoned")
    kind_name = task.name.removeprefix(TASK_PREFIX)
    if job_id is None or job_id != task.request.id or set(kwargs) - {"abandoned"}:
        log.warning(
            "refused a %s message not sent by stack (args %.100r, kwargs %.100r): submit jobs through "
            "POST /api/jobs/%s, which records the job before sending it",
            task.name,
            list(args),
            kwargs,
            kind_name,
        )
        raise NotAStackMessage(f"not a stack job message; submit through POST /api/jobs/{kind_name}")
    if isinstance(token, dict) and isinstance(token.get("attempt"), int):
        return job_id, Abandoned(worker_id=token.get("worker_id"), attempt=token["attempt"])
    return job_id, None


def _register(app: Celery, runtime: LazyRuntime, kind: JobKind) -> None:
    options: dict[str, Any] = {}
    if kind.soft_time_limit is not None:
        options["soft_time_limit"] = kind.soft_time_limit
    if kind.time_limit is not None:
        options["time_limit"] = kind.time_limit

    @app.task(
        name=kind.task_name,
        bind=True,
        max_retries=None,
        shared=False,
        Request=JobRequest,
        throws=(NotAStackMessage,),
        **options,
    )
    def run_job(self: Task, *args: Any, **kwargs: Any) -> None:
        job_id, abandoned = _job_message(self, args, kwargs)
        current = runtime.get()
        owner = current_owner(self.request.hostname)
        try:
            with job_logging(job_id, kind.name):
                outcome = current.runner.run(job_id, owner=owner, abandoned=abandoned)
        except (AttemptAbandoned, OperationalError) as exc:
            # The database went away (restart, failover): nothing about the job could be
            # recorded, so run it again later. A retry of an attempt already claimed carries
            # its token: that attempt's owner is alive, yet the attempt is over.
            if isinstance(exc, AttemptAbandoned):
                kwargs = {"abandoned": asdict(exc.abandoned)}
            countdown = current.runner.retry_policy.countdown(self.request.retries + 1)
            cause = exc.cause.orig if isinstance(exc, AttemptAbandoned) else exc.orig
            log.warning("job %s: database unreachable (%s); retrying in %g s", job_id, cause, countdown)
            raise self.retry(countdown=countdown, kwargs=kwargs) from exc
        if outcome.status is JobStatus.RETRY:
            raise self.retry(countdown=outcome.countdown, kwargs={})


def use_stack_logging(settings: Settings) -> None:
    """Celery's worker and beat log through stack's handler and format (stack.logs): a receiver
    of `setup_logging` stops Celery from installing its own (`[date: LEVEL/Process]`) on the
    root logger, in the main process and in every pool process alike. `celeryd_init` comes first,
    before the worker's privilege check warns: its warning is then one line in the same format."""

    def setup(loglevel: int | str | None = None, **_: Any) -> None:
        configure_for(settings, level=loglevel or None)

    def early(**_: Any) -> None:
        configure_for(settings)

    # Strong references under fixed ids: one receiver per process, whichever app connected first.
    signals.setup_logging.connect(setup, weak=False, dispatch_uid="stack.logs.setup_logging")
    signals.celeryd_init.connect(early, weak=False, dispatch_uid="stack.logs.celeryd_init")


def create_celery(settings: Settings, registry: JobRegistry) -> Celery:
    app = Celery("stack", set_as_current=False)
    app.conf.update(celery_config(settings, registry))
    use_stack_logging(settings)
    app.stack_runtime = LazyRuntime(settings, registry)  # type: ignore[attr-defined]
    app.steps["worker"].add(Liveness)
    for kind in registry:
        _register(app, app.stack_runtime, kind)  # type: ignore[attr-defined]
    return app
