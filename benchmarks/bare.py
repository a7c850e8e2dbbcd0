"""The baselines our job layer is measured against: what a team writes without it.

- `create_bare_app_from_env`: a FastAPI endpoint that only calls `apply_async` (no row, no
  validation), served by the same uvicorn command line as ours; and the status pair of the usual
  tutorial (`POST /tasks`, `GET /tasks/{id}` reading `AsyncResult(id).state` from the result
  backend), what the 0→100 benchmark polls;
- `celery_app`: a Celery app with one no-op task and the very same Celery settings as the stack
  (`celery_config`) but kombu's stock Redis transport, run by the same worker command line.

Both are built from the same environment settings (REDIS_URL, ...) as the stack's processes.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from fastapi import FastAPI, status

from stack.config import Settings, get_settings
from stack.jobs.celery_app import celery_config
from stack.jobs.registry import JobRegistry

NOOP_TASK = "bench.noop"
NOOP_STORED_TASK = "bench.noop_stored"  # a no-op whose result a status endpoint can read
BARE_QUEUE = "bench"


def create_bare_celery(settings: Settings) -> Celery:
    app = Celery("bench", set_as_current=False)
    app.conf.update(celery_config(settings, JobRegistry()))
    app.conf.task_default_queue = BARE_QUEUE
    # Stock kombu, as a team without this toolkit runs it: our Redis transport (one client per
    # channel, stack/jobs/broker.py) is part of what "ours" measures.
    app.conf.broker_transport = None

    @app.task(name=NOOP_TASK)
    def noop(job_id: str) -> None:
        return None

    # The stack's config ignores results (the job row is its result store); a team polling
    # Celery for completion stores them, so this one does.
    @app.task(name=NOOP_STORED_TASK, ignore_result=False)
    def noop_stored(job_id: str) -> None:
        return None

    return app


def create_bare_app(settings: Settings) -> FastAPI:
    celery = create_bare_celery(settings)
    noop = celery.tasks[NOOP_TASK]
    app = FastAPI()

    # A sync endpoint like ours: apply_async blocks on the broker, so FastAPI runs it in its
    # threadpool either way.
    @app.post("/enqueue", status_code=status.HTTP_202_ACCEPTED)
    def enqueue() -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        noop.apply_async(args=[task_id], task_id=task_id, queue=BARE_QUEUE)
        return {"task_id": task_id, "status": "pending"}

    stored = celery.tasks[NOOP_STORED_TASK]

    @app.post("/tasks", status_code=status.HTTP_202_ACCEPTED)
    def submit_task() -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        stored.apply_async(args=[task_id], task_id=task_id, queue=BARE_QUEUE)
        return {"task_id": task_id, "status": "PENDING"}

    @app.get("/tasks/{task_id}")
    def task_status(task_id: str) -> dict[str, Any]:
        return {"task_id": task_id, "status": celery.AsyncResult(task_id).state}

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def create_bare_app_from_env() -> FastAPI:
    return create_bare_app(get_settings())


def __getattr__(name: str) -> Any:
    # `celery -A benchmarks.bare:celery_app worker`: built on first access, not at import.
    if name == "celery_app":
        app = create_bare_celery(get_settings())
        globals()["celery_app"] = app
        return app
    raise AttributeError(name)
