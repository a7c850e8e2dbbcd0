"""Every read and write of the job table. Each state change is one atomic UPDATE ... WHERE,
so concurrent workers, a cancel and a redelivered message can never undo each other."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

from stack.db import make_engine, session_factory
from stack.jobs import direct_sql
from stack.jobs.direct_sql import DirectWrites
from stack.jobs.liveness import Owner
from stack.jobs.models import (
    NEW_JOB_STATE,
    RUNNING_STATUSES,
    TERMINAL_STATUSES,
    Job,
    JobStatus,
    Worker,
    job_from_row,
    utcnow,
)

_TABLE: Table = Job.__table__  # type: ignore[assignment]  # a Table at runtime
_WORKERS: Table = Worker.__table__  # type: ignore[assignment]


def _status_in(statuses: Iterable[JobStatus]) -> ColumnElement[bool]:
    """`status IN ('a', 'b')` with our own constants written into the SQL. A list of plain values
    would be an expanding parameter, whose SQL SQLAlchemy renders again on every execution: a
    claim took 581 µs of client CPU with it, 448 µs without (a success write 312 → 205 µs)."""
    return _TABLE.c.status.in_([literal_column(f"'{JobStatus(status).value}'") for status in statuses])


_LIVE = ~_status_in(TERMINAL_STATUSES)


def _live_update(**values: Any) -> Update:
    return update(_TABLE).where(_TABLE.c.id == bindparam("job_id"), _LIVE).values(**values)


# The per-job statements, built once: constructing a SQLAlchemy expression costs more Python
# than executing its cached compiled form. Values come in as bind parameters.
# Only a job nobody runs is claimed: pending, or retrying. A running job is taken over only
# after its lost attempt was released (`release`), so two runs of one job never overlap.
_CLAIM = (
    _live_update(
        status=JobStatus.STARTED,
        attempts=_TABLE.c.attempts + 1,
        worker=bindparam("worker"),
        worker_id=bindparam("worker_id"),
        worker_pid=bindparam("worker_pid"),
        claimed_at=bindparam("now"),
        message="started",
        started_at=func.coalesce(_TABLE.c.started_at, bindparam("now")),
        dispatched_at=func.coalesce(_TABLE.c.dispatched_at, bindparam("now")),
        updated_at=bindparam("now"),
    )
    .where(_status_in([JobStatus.PENDING, JobStatus.RETRY]))
    .returning(*_TABLE.c)
)


def _attempt_update(**values: Any) -> Update:
    """A write of one attempt: it lands only while the row is live and still on that attempt
    (the attempt number is the fencing token), so a run that was taken over records nothing."""
    return _live_update(**values).where(_TABLE.c.attempts == bindparam("attempt"))


_GET = select(_TABLE).where(_TABLE.c.id == bindparam("job_id"))
_INSERT = insert(_TABLE)
_MARK_DISPATCHED = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(bindparam("job_ids", expanding=True)), _TABLE.c.dispatched_at.is_(None))
    .values(dispatched_at=bindparam("now"))
)
_PROGRESS = _attempt_update(
    status=JobStatus.PROGRESS,
    progress=case((_TABLE.c.progress < bindparam("percent"), bindparam("percent")), else_=_TABLE.c.progress),
    message=bindparam("text"),
    updated_at=bindparam("now"),
)
_SUCCEED = _attempt_update(
    status=JobStatus.SUCCESS,
    progress=100,
    message="done",
    result=bindparam("outcome", type_=_TABLE.c.result.type),
    error=None,
    updated_at=bindparam("now"),
    finished_at=bindparam("now"),
)


# One of DirectWrites' statements, unbound: called with the store's DirectWrites.
DirectWrite = Callable[[DirectWrites, PoolProxiedConnection, Mapping[str, Any]], bool]


@dataclass(frozen=True)
class NewJob:
    """A job to create: what a submit knows before its row exists."""

    kind: str
    queue: str
    params: dict[str, Any]
    canary: bool = False


def new_job_id() -> str:
    return str(uuid.uuid4())


def clean_text(text: str, *, limit: int | None = 500) -> str:
    """Text PostgreSQL can store (no NUL character), cut to the column's length."""
    text = str(text).replace("\x00", "\\0")
    return text if limit is None else text[:limit]


class JobStore:
    def __init__(self, engine: Engine, *, autocommit_engine: Engine | None = None) -> None:
        self.engine = engine
        # The hot paths (every submit, claim, progress write and status read) are single
        # statements: an autocommit twin of the engine saves them a BEGIN and a COMMIT each.
        self._fast = autocommit_engine or make_engine(engine.url, autocommit=True)
        self._session_factory: sessionmaker[Session] = session_factory(self._fast)
        self._transactions: sessionmaker[Session] = session_factory(engine)
        self._pinned: Connection | None = None
        # A job's insert and its attempts' claim, progress and outcome in PostgreSQL's own SQL
        # (stack.jobs.direct_sql) on a pooled connection's psycopg connection; elsewhere (SQLite)
        # the statements above.
        self._direct = direct_sql.DirectWrites(self._fast) if direct_sql.is_direct(self._fast) else None
        self._pinned_raw: PoolProxiedConnection | None = None

    @contextmanager
    def pinned(self) -> Iterator[JobStore]:
        """This store on one connection, for writes that belong together — a job attempt's claim,
        progress and outcome: one pool checkout (and pre-ping) per attempt, not one per write.
        A worker holds at most one per slot, which its pool is sized for anyway."""
        view = copy.copy(self)
        if self._direct is None:
            with self._fast.connect() as connection:
                view._pinned = connection
                yield view
            return
        # The attempt's own writes need no SQLAlchemy Connection (its set-up and close were 15 %
        # of an attempt's CPU); its rare other statements (a refused claim's read, a take-over, a
        # failure) take a connection of their own.
        with self._raw() as raw:
            view._pinned_raw = raw
            yield view

    @property
    def _sessions(self) -> sessionmaker[Session]:
        if self._pinned is None:
            return self._session_factory
        # Built on demand: most attempts only run the statements of stack.jobs.direct_sql.
        return sessionmaker(bind=self._pinned, expire_on_commit=False)

    def dispose(self, *, close: bool = True) -> None:
        """`close=False` in a forked child: forget the parent's connections without closing."""
        self._fast.dispose(close=close)
        self.engine.dispose(close=close)

    # --- reads ------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        # Core and a prebuilt statement: status polling is the most frequent request there is.
        with self._autocommit() as connection:
            row = connection.execute(_GET, {"job_id": job_id}).one_or_none()
        return job_from_row(row._mapping) if row is not None else None

    def list(
        self,
        *,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 50,
        canaries: bool = False,
    ) -> Sequence[Job]:
        """Newest first; doctor's canary jobs only with `canaries`."""
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if not canaries:
            query = query.where(Job.canary.is_(False))
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        with self._sessions() as session:
            return session.scalars(query).all()

    # --- writes from the API ------------------------------------------------------------------------
    def create(self, *, kind: str, queue: str, params: dict[str, Any], canary: bool = False) -> Job:
        """Insert a pending job, committed when this returns: only then may its message go out,
        since a worker may claim it at once. It has no `dispatched_at` until `mark_dispatched`;
        a row left without one is a job the sweep must send."""
        return self.create_many([NewJob(kind=kind, queue=queue, params=params, canary=canary)])[0]

    def create_many(self, new_jobs: Sequence[NewJob]) -> Sequence[Job]:
        """`create` for jobs submitted together, all committed or none: one autocommitted
        statement on PostgreSQL (stack.jobs.direct_sql), a transaction elsewhere."""
        now = utcnow()
        rows = [
            {
                "id": new_job_id(),
                "kind": new.kind,
                "queue": new.queue,
                "params": new.params,
                "created_at": now,
                "updated_at": now,
                "canary": new.canary,
                **NEW_JOB_STATE,
            }
            for new in new_jobs
        ]
        if self._direct is not None:
            with self._raw() as raw:
                self._direct.insert(raw, rows)
        else:
            # One row: a single autocommitted statement, no BEGIN and COMMIT round trips.
            with self._autocommit() if len(rows) == 1 else self.engine.begin() as connection:
                connection.execute(_INSERT, rows)
        return [job_from_row(row) for row in rows]

    def mark_dispatched(self, job_ids: Sequence[str]) -> int:
        """Record that these jobs' messages were published (one statement for many jobs); a job
        a worker already claimed keeps the time its claim recorded."""
        if not job_ids:
            return 0
        with self._autocommit() as connection:
            return connection.execute(_MARK_DISPATCHED, {"job_ids": list(job_ids), "now": utcnow()}).rowcount

    def note(self, job_id: str, message: str) -> Job | None:
        """Change only the message of a live job (e.g. "dispatch deferred: broker unreachable")."""
        return self._update(job_id, message=clean_text(message), updated_at=utcnow())

    def revoke(self, job_id: str, *, message: str = "cancelled") -> Job | None:
        """Revoke a live job; returns None when it was already finished (or never existed)."""
        now = utcnow()
        return self._update(
            job_id, status=JobStatus.REVOKED, message=message, updated_at=now, finished_at=now
        )

    # --- writes from the worker ---------------------------------------------------------------------
    def claim(self, job_id: str, *, owner: Owner) -> Job | None:
        """Take a pending (or retrying) job for one attempt, recording who runs it. None:
        finished, revoked, unknown or running, so do not run it (a running job is taken over
        only through `release`, once its attempt is known to be lost)."""
        params = {
            "job_id": job_id,
            "worker": owner.name,
            "worker_id": owner.worker_id,
            "worker_pid": owner.pid,
            "now": utcnow(),
        }
        if self._direct is not None:
            with self._raw() as raw:
                return self._direct.claim(raw, params)
        with self._autocommit() as connection:
            row = connection.execute(_CLAIM, params).one_or_none()
        return job_from_row(row._mapping) if row is not None else None

    def release(self, job: Job, *, reason: str, give_up: str | None, resend: bool) -> Job | None:
        """End `job`'s running attempt, which is known to be lost (see stack.jobs.liveness):
        pending again for a new attempt, or failed with `give_up` when no attempt is left.
        `resend`: no message of the job is left in the broker, so the sweep must send one.
        None when the row moved on first (finished, revoked, or another attempt began)."""
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now, "lost_attempts": _TABLE.c.lost_attempts + 1}
        if give_up is not None:
            values |= {"status": JobStatus.FAILURE, "message": "failed", "error": give_up, "finished_at": now}
        else:
            values |= {
                "status": JobStatus.PENDING,
                "message": f"attempt {job.attempts} lost, queued again: {reason}"[:500],
                "worker_id": None,
                "worker_pid": None,
            }
            if resend:
                values["dispatched_at"] = None
        statement = (
            update(Job)
            .where(
                Job.id == job.id,
                Job.status.in_(RUNNING_STATUSES),
                Job.attempts == job.attempts,
            )
            .values(**values)
            .returning(Job)
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            return session.scalars(statement).one_or_none()

    def set_progress(self, job_id: str, percent: int, message: str, *, attempt: int) -> bool:
        """Record progress, never lower than what was stored. False once the job is no longer
        live (revoked) or no longer on this attempt, which tells the running handler to stop."""
        params = {"job_id": job_id, "attempt": attempt, "percent": percent, "text": clean_text(message)}
        return self._execute_live(_PROGRESS, DirectWrites.set_progress, params)

    def succeed(self, job_id: str, *, result: Any, attempt: int) -> bool:
        """False when the job stopped being this attempt's first (revoked while finishing)."""
        params = {"job_id": job_id, "attempt": attempt, "outcome": result}
        return self._execute_live(_SUCCEED, DirectWrites.succeed, params)

    def fail(self, job_id: str, *, error: str, attempt: int | None = None) -> Job | None:
        """`attempt`: only while the row is still on that attempt (None: whatever runs)."""
        now = utcnow()
        return self._update(
            job_id,
            attempt=attempt,
            status=JobStatus.FAILURE,
            message="failed",
            error=clean_text(error, limit=None),
            updated_at=now,
            finished_at=now,
        )

    def retry(self, job_id: str, *, error: str, countdown: float, attempt: int) -> Job | None:
        error = clean_text(error, limit=None)
        return self._update(
            job_id,
            attempt=attempt,
            status=JobStatus.RETRY,
            message=clean_text(f"retrying in {countdown:g} s after: {error}"),
            error=error,
            worker_id=None,
            worker_pid=None,
            updated_at=utcnow(),
        )

    # --- writes from the sweep -----------------------------------------------------------------------
    # Each selects with FOR UPDATE SKIP LOCKED and changes the rows in the same transaction, so
    # two sweepers (two beats, a beat and `stack sweep`) never take the same job. SQLite ignores
    # the clause and serialises writers instead.
    def take_undispatched(self, *, created_before: datetime, limit: int) -> Sequence[Job]:
        """Pending jobs never handed to the broker, marked dispatched as they are taken."""
        return self._take_to_send(
            Job.dispatched_at.is_(None), Job.created_at < created_before, oldest=Job.created_at, limit=limit
        )

    def take_lost(self, *, queue: str, dispatched_before: datetime, limit: int) -> Sequence[Job]:
        """The oldest pending jobs of `queue` sent before `dispatched_before` and never claimed,
        their `dispatched_at` renewed as they are taken (so one re-send per grace period)."""
        return self._take_to_send(
            Job.queue == queue, Job.dispatched_at < dispatched_before, oldest=Job.dispatched_at, limit=limit
        )

    def _take_to_send(self, *where: Any, oldest: Any, limit: int) -> Sequence[Job]:
        query = (
            select(Job)
            .where(Job.status == JobStatus.PENDING, *where)
            .order_by(oldest)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._transactions.begin() as session:
            jobs = session.scalars(query).all()
            now = utcnow()
            for job in jobs:
                job.dispatched_at = now
        return jobs

    def undo_dispatch(self, job_ids: Sequence[str]) -> None:
        """The broker refused them after all: leave them for the next sweep."""
        if job_ids:
            with self.engine.begin() as connection:
                connection.execute(update(_TABLE).where(_TABLE.c.id.in_(job_ids)).values(dispatched_at=None))

    def running_owned(self, *, limit: int) -> Sequence[Job]:
        """Running jobs with a heartbeating owner, to check against the workers' liveness."""
        query = (
            select(Job)
            .where(Job.status.in_(RUNNING_STATUSES), Job.worker_id.is_not(None))
            .order_by(Job.updated_at)
            .limit(limit)
        )
        with self._sessions() as session:
            return session.scalars(query).all()

    def take_stalled(
        self, *, silent_since: datetime, limit: int, decide: Callable[[Job], str | None]
    ) -> Sequence[Job]:
        """Jobs with no heartbeating owner — running inline, or retrying (the retry message
        is somewhere in the broker) — silent since `silent_since`. `decide(job)` returns None
        (leave it), "requeue" (pending again, for the next dispatch) or an error (fail it)."""
        query = (
            select(Job)
            .where(
                Job.status.in_([*RUNNING_STATUSES, JobStatus.RETRY]),
                Job.worker_id.is_(None),
                Job.updated_at < silent_since,
            )
            .order_by(Job.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        taken = []
        with self._transactions.begin() as session:
            now = utcnow()
            for job in session.scalars(query).all():
                verdict = decide(job)
                if verdict is None:
                    continue
                if job.status in RUNNING_STATUSES:
                    job.lost_attempts += 1
                if verdict == "requeue":
                    job.status, job.dispatched_at = JobStatus.PENDING, None
                    job.message = "re-queued: no sign of life from its run"
                else:
                    job.status, job.error, job.finished_at = JobStatus.FAILURE, verdict, now
                    job.message = "failed"
                job.updated_at = now
                taken.append(job)
        return taken

    def purge_finished(self, *, finished_before: datetime, limit: int = 1000) -> int:
        ids = (
            select(_TABLE.c.id)
            .where(_TABLE.c.finished_at < finished_before, ~_LIVE)
            .limit(limit)
            .scalar_subquery()
        )
        with self.engine.begin() as connection:
            return connection.execute(delete(_TABLE).where(_TABLE.c.id.in_(ids))).rowcount

    # --- workers' liveness ------------------------------------------------------------------------
    def register_worker(self, *, worker_id: str, name: str, pid: int, queues: Sequence[str]) -> None:
        now = utcnow()
        row = {"id": worker_id, "name": name, "pid": pid, "queues": list(queues), "running": []}
        with self.engine.begin() as connection:
            connection.execute(insert(_WORKERS).values(**row, started_at=now, heartbeat_at=now))

    def heartbeat(self, worker_id: str, *, running: Sequence[str], at: datetime) -> bool:
        """Record that the worker is alive at `at` (taken before `running` was read) executing
        `running`. False when its row is gone (cleaned up after a long silence)."""
        statement = (
            update(_WORKERS).where(_WORKERS.c.id == worker_id).values(heartbeat_at=at, running=list(running))
        )
        with self._autocommit() as connection:
            return connection.execute(statement).rowcount == 1

    def forget_worker(self, worker_id: str) -> None:
        with self._autocommit() as connection:
            connection.execute(delete(_WORKERS).where(_WORKERS.c.id == worker_id))

    def workers(self, ids: Sequence[str] | None = None) -> dict[str, Worker]:
        query = select(Worker).order_by(Worker.name)
        if ids is not None:
            query = query.where(Worker.id.in_(list(ids)))
        with self._sessions() as session:
            return {worker.id: worker for worker in session.scalars(query).all()}

    def purge_workers(self, *, silent_before: datetime) -> int:
        with self._autocommit() as connection:
            return connection.execute(
                delete(_WORKERS).where(_WORKERS.c.heartbeat_at < silent_before)
            ).rowcount

    def _execute_live(self, statement: Update, direct: DirectWrite, params: dict[str, Any]) -> bool:
        """A write of one attempt: `direct` on PostgreSQL, `statement` elsewhere. True if it landed."""
        params["now"] = utcnow()
        if self._direct is not None:
            with self._raw() as raw:
                return direct(self._direct, raw, params)
        with self._autocommit() as connection:
            return connection.execute(statement, params).rowcount == 1

    @contextmanager
    def _raw(self) -> Iterator[PoolProxiedConnection]:
        """The pooled connection of the direct statements: the attempt's own when pinned."""
        assert self._direct is not None
        if self._pinned_raw is not None:
            yield self._pinned_raw
            return
        with self._direct.connection() as raw:
            yield raw

    @contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        if self._pinned is not None:
            yield self._pinned
            return
        with self._fast.connect() as connection:
            yield connection

    def _update(self, job_id: str, *, attempt: int | None = None, **values: Any) -> Job | None:
        """Change a live job and return it; None when it is finished, revoked or unknown (or,
        given `attempt`, on another attempt)."""
        fence = () if attempt is None else (Job.attempts == attempt,)
        statement = (
            update(Job)
            .where(Job.id == job_id, _LIVE, *fence)
            .values(**values)
            .returning(Job)
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            return session.scalars(statement).one_or_none()
