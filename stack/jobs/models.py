"""The job table: the one source of truth about a job, whatever the broker says."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, String, Text, false, text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, instrumentation, mapped_column


class JobStatus(StrEnum):
    PENDING = "pending"
    STARTED = "started"
    PROGRESS = "progress"
    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"
    REVOKED = "revoked"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED})


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored time with its zone: SQLite hands datetimes back naive; they were written as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "stack_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100))
    status: Mapped[JobStatus] = mapped_column(
        SAEnum(
            JobStatus,
            native_enum=False,
            length=16,
            values_callable=lambda e: [m.value for m in e],
            validate_strings=True,
        ),
        default=JobStatus.PENDING,
    )
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(String(500), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Every claim adds one: the attempt number is also the fencing token of the attempt's
    # writes (progress and outcome land only while the row is still on that attempt).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts that ended with no outcome: the worker was lost (killed, out of memory) or the
    # database went away mid-attempt. They count against the kind's attempts like any other.
    lost_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)  # node name, for people
    # Who runs the current attempt: the worker instance (a row of stack_workers, heartbeating)
    # and the process in it. NULL for inline runs, which have no heartbeat.
    worker_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set once the broker accepted the message; NULL means "publish never happened" and the
    # sweep re-dispatches it (transactional-outbox style: the row is written before publishing).
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Sent by `stack doctor` to prove a queue end to end: not a user's job, so not listed by default.
    canary: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_stack_jobs_status_created", "status", "created_at"),
        Index("ix_stack_jobs_kind_created", "kind", "created_at"),
        Index("ix_stack_jobs_status_updated", "status", "updated_at"),
    )

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.status} {self.progress}%>"


RUNNING_STATUSES = frozenset({JobStatus.STARTED, JobStatus.PROGRESS})

# The columns every new job starts with, whatever was submitted (stack.jobs.store, direct_sql).
NEW_JOB_STATE: dict[str, Any] = {
    "status": JobStatus.PENDING,
    "progress": 0,
    "message": "queued",
    "attempts": 0,
    "lost_attempts": 0,
}

_new_job = instrumentation.manager_of_class(Job).new_instance
_MAPPER = Job.__mapper__


def job_from_row(values: Mapping[Any, Any]) -> Job:  # a RowMapping: str keys, typed wider
    """A Job holding a row's values (already Python types: `status` a JobStatus), built the way
    the ORM's own loader builds one. `Job(**values)` fires an attribute event per column: 46 µs
    against 3, paid by every claim, status read and submit."""
    if not _MAPPER.configured:
        configure_mappers()  # as Job() would, the first time
    job = _new_job()
    job.__dict__.update(values)
    return job


class Worker(Base):
    """One running worker instance (a `celery worker` main process), heartbeating while alive.

    A new row per start, so jobs of a worker that died and came back under the same node name
    are known to be orphaned. `running` lists the job ids its pool executes at `heartbeat_at`.
    """

    __tablename__ = "stack_workers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    running: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def __repr__(self) -> str:
        return f"<Worker {self.name} {self.id[:8]} beat {self.heartbeat_at}>"
