"""What the API shows of a job."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stack.jobs.models import Job, JobStatus, as_utc


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    task_id: str = Field(validation_alias="id")
    kind: str
    queue: str
    status: JobStatus
    progress: int = Field(ge=0, le=100)
    message: str
    created_at: datetime
    updated_at: datetime

    @field_validator(
        "created_at", "updated_at", "started_at", "finished_at", mode="after", check_fields=False
    )
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value) if value is not None else None

    @classmethod
    def of(cls, job: Job) -> Self:
        return cls.model_validate(job)


class JobDetail(JobOut):
    attempts: int
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: Any | None = None
    error: str | None = None
    # Why a job has been pending for a while (no worker on its queue, workers busy, broker
    # down); None when nothing looks wrong, or in inline mode. Only GET /api/jobs/{id} sets it.
    hint: str | None = None


class JobList(BaseModel):
    jobs: list[JobDetail]
    count: int
