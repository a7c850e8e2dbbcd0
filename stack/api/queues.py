"""`GET /api/queues`: every queue's backlog and consumers, and every worker's heartbeat.

The shape is a contract: the jobs page polls it. One snapshot per API process serves every
caller for a second or two (stack.jobs.overview), and `/metrics` renders the same snapshot.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from stack.api.auth import Scope, require
from stack.jobs.overview import CACHE_SECONDS, Cached, Overview, OverviewSource

router = APIRouter(tags=["queues"])

_state_lock = threading.Lock()


class QueueOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="queue name, as in a job's `queue` and STACK_WORKER_QUEUES")
    kinds: list[str] = Field(description="job kinds routed to this queue")
    depth: int | None = Field(
        description="messages waiting in the broker (Redis LLEN); null when the broker is not Redis "
        "or does not answer"
    )
    pending: int = Field(description="jobs pending in the database (not started yet, or queued again)")
    running: int = Field(description="jobs started or reporting progress")
    oldest_pending_seconds: float | None = Field(
        description="how long the oldest pending job has waited since it was queued (or queued again "
        "after a lost attempt); null when none is pending"
    )
    workers: list[str] = Field(description="node names of the live workers consuming this queue")


class WorkerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="node name, e.g. worker@host")
    queues: list[str] = Field(description="queues it consumes")
    running: list[str] = Field(description="ids of the jobs its pool ran at its last heartbeat")
    last_heartbeat_seconds: float = Field(description="seconds since its last heartbeat")
    alive: bool = Field(description="heard from within STACK_WORKER_DEAD_AFTER")


class QueuesOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "example": {
                "queues": [
                    {
                        "name": "content",
                        "kinds": ["generate_content", "generate_image"],
                        "depth": 3,
                        "pending": 3,
                        "running": 0,
                        "oldest_pending_seconds": 42.5,
                        "workers": [],
                    }
                ],
                "workers": [
                    {
                        "name": "worker@host",
                        "queues": ["default", "logs"],
                        "running": [],
                        "last_heartbeat_seconds": 1.2,
                        "alive": True,
                    }
                ],
                "broker_ok": True,
            }
        },
    )

    queues: list[QueueOut] = Field(
        description="each queue a kind is routed to, `default`, and any other queue holding live jobs"
    )
    workers: list[WorkerOut] = Field(
        description="workers that heartbeat, live ones first; a dead one stays listed for an hour"
    )
    broker_ok: bool = Field(
        description="the broker answered; true when it is not looked into (CELERY_ENABLED=false, or a "
        "broker other than Redis)"
    )


def overview_of(app: FastAPI) -> Cached[Overview]:
    """The app's cached snapshot, built on first use from the JobService the factory installed;
    `/metrics` shares it."""
    cached: Cached[Overview] | None = getattr(app.state, "queue_overview", None)
    if cached is None:
        with _state_lock:
            cached = getattr(app.state, "queue_overview", None)
            if cached is None:
                runtime = app.state.jobs.runtime
                source = OverviewSource(runtime.settings, runtime.registry, runtime.engine)
                cached = Cached(source.snapshot, seconds=CACHE_SECONDS)
                app.state.queue_overview = cached
    return cached


_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No credentials, or unknown ones (`WWW-Authenticate: Bearer`)"},
    403: {"description": "The caller may not read"},
    503: {"description": "The database is unreachable; see /ready"},
}


@router.get(
    "/api/queues",
    response_model=QueuesOut,
    responses=_RESPONSES,
    dependencies=[Depends(require(Scope.READ))],
)
def queues(request: Request) -> Overview:
    """Each queue's depth, pending and running jobs, oldest pending job and live consumers, and
    every worker's last heartbeat. Computed at most every ~1.5 s per API process."""
    return overview_of(request.app).get()
