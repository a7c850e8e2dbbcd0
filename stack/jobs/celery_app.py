"""The Celery application: one task per job kind, routed to the kind's queue.

Tasks carry only the job id (JSON, never pickle). The row holds params, progress and result, so a
message can be lost, duplicated or redelivered without the job's truth changing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import OperationalError

import stack.jobs.control  # noqa: F401  # registers the stack_fingerprint remote-control command in workers
from stack.config import Settings
from stack.jobs.broker import transport_for
from stack.jobs.models import JobStatus
from stack.jobs.registry import JobKind, JobRegistry
from stack.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)

SWEEP_TASK = "stack.sweep"
# Every worker that serves all queues serves `default`; the split-queue Procfile has one for it.
SWEEP_QUEUE = "default"


def celery_config(settings: Settings, registry: JobRegistry) -> dict[str, Any]:
    timeout = settings.broker_timeout
    visibility = settings.effective_visibility_timeout
    transport_options = {
        # Unacked jobs come back after this long when a whole worker died (SIGKILL, OOM, node
        # lost); it must outlast the longest job or a slow job would run twice.
        "visibility_timeout": visibility,
        # Look for such abandoned jobs every few seconds, not kombu's default of every ~100 s.
        "unacked_restore_interval": int(max(1, min(10, visibility // 4))),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, 5.0),
    }
    return {
        "beat_schedule": {
            "stack-sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval,
                # A sweep nobody ran in time is superseded by the next one.
                "options": {"queue": SWEEP_QUEUE, "expires": settings.sweep_interval},
            }
        },
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
        "task_routes": {SWEEP_TASK: {"queue": SWEEP_QUEUE}}
        | {k.task_name: {"queue": k.queue} for k in registry},
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
        self._settings = settings
        self._registry = registry
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()

    def get(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = build_runtime(self._settings, self._registry)
            return self._runtime


def _register(app: Celery, runtime: LazyRuntime, kind: JobKind) -> None:
    options: dict[str, Any] = {}
    if kind.soft_time_limit is not None:
        options["soft_time_limit"] = kind.soft_time_limit
    if kind.time_limit is not None:
        options["time_limit"] = kind.time_limit

    @app.task(name=kind.task_name, bind=True, max_retries=None, shared=False, **options)
    def run_job(self: Task, job_id: str) -> None:
        current = runtime.get()
        # The broker flags a message it hands out again after its worker was lost; a retry is
        # sent by the attempt that gave up. Either may take over a row marked running.
        resume = bool((self.request.delivery_info or {}).get("redelivered")) or self.request.retries > 0
        try:
            outcome = current.runner.run(job_id, worker=self.request.hostname or "worker", resume=resume)
        except OperationalError as exc:
            # The database went away (restart, failover): nothing about the job could be
            # recorded, so run the whole attempt again later rather than lose it.
            countdown = current.runner.retry_policy.countdown(self.request.retries + 1)
            log.warning("job %s: database unreachable (%s); retrying in %g s", job_id, exc.orig, countdown)
            raise self.retry(countdown=countdown) from exc
        if outcome.status is JobStatus.RETRY:
            raise self.retry(countdown=outcome.countdown)


def _register_sweep(app: Celery, runtime: LazyRuntime) -> None:
    @app.task(name=SWEEP_TASK, shared=False, acks_late=False, ignore_result=True)
    def run_sweep() -> dict[str, object]:
        from stack.jobs.sweep import sweep

        return asdict(sweep(runtime.get(), app))


def create_celery(settings: Settings, registry: JobRegistry) -> Celery:
    app = Celery("stack", set_as_current=False)
    app.conf.update(celery_config(settings, registry))
    app.stack_runtime = LazyRuntime(settings, registry)  # type: ignore[attr-defined]
    for kind in registry:
        _register(app, app.stack_runtime, kind)  # type: ignore[attr-defined]
    _register_sweep(app, app.stack_runtime)  # type: ignore[attr-defined]
    return app
