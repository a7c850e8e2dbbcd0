"""The writes every job makes — its insert, then each attempt's claim, progress and success — in
PostgreSQL's own SQL, run on the psycopg connection of a pooled connection.

Why: they are a submit's and a worker's whole cost per job besides Celery's own. Through
SQLAlchemy's execution (statement cache, parameter set-up, result processing) an insert took
about 520 µs of client CPU, a claim 294-330 and a success write 151-168; on the psycopg cursor
the claim takes 73-83 µs and the success 61-69 (loops against a real PostgreSQL; `benchmarks`).

The rules are the same as the portable statements in stack.jobs.store (SQLite uses those): a
claim takes only a job nobody runs, a write of an attempt lands only while the row is live and
still on that attempt, and jobs submitted together are inserted all or none. Errors leave as
SQLAlchemy's exceptions, a lost connection invalidated, so callers see no difference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy import Engine, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

from stack.jobs.models import NEW_JOB_STATE, TERMINAL_STATUSES, Job, JobStatus, job_from_row

_TABLE: Table = Job.__table__  # type: ignore[assignment]  # a Table at runtime
_COLUMNS = tuple(column.name for column in _TABLE.c)
_LIVE = "status NOT IN ({})".format(", ".join(f"'{status.value}'" for status in sorted(TERMINAL_STATUSES)))


def _literal(value: object) -> str:
    """Our own constants (NEW_JOB_STATE) written into the SQL: fewer parameters to send."""
    return str(value) if isinstance(value, int) else f"'{value}'"


# What differs from job to job is a parameter; the state every new job starts in is written in.
_NEW_COLUMNS = ("id", "kind", "queue", "params", "created_at", "canary")
_INSERT_INTO = f"""INSERT INTO {_TABLE.name} (
    {", ".join(_NEW_COLUMNS)}, updated_at, {", ".join(NEW_JOB_STATE)}
)"""
_NEW_STATE = ", ".join(_literal(value) for value in NEW_JOB_STATE.values())

INSERT = f"""
{_INSERT_INTO} VALUES (
    {", ".join(f"%({name})s" for name in _NEW_COLUMNS)}, %(created_at)s, {_NEW_STATE}
)
"""

# Several new jobs (submits that arrived together) in one statement, one row per element of the
# arrays: atomic as any statement, and one round trip where a transaction of INSERTs took three
# (BEGIN, the pipelined INSERTs, COMMIT). Per row, in a loop of groups of 8: 28 µs of wall time
# instead of 40, PostgreSQL's CPU 10-13 µs instead of 20. A lone job keeps INSERT (85 µs against
# 115 through unnest).
INSERT_MANY = f"""
{_INSERT_INTO}
SELECT id, kind, queue, params::json, created_at, canary, created_at, {_NEW_STATE}
FROM unnest(
    %(id)s::varchar[], %(kind)s::varchar[], %(queue)s::varchar[], %(params)s::text[],
    %(created_at)s::timestamptz[], %(canary)s::boolean[]
) AS new ({", ".join(_NEW_COLUMNS)})
"""

CLAIM = f"""
UPDATE {_TABLE.name} SET
    status = '{JobStatus.STARTED.value}', message = 'started', attempts = attempts + 1,
    worker = %(worker)s, worker_id = %(worker_id)s, worker_pid = %(worker_pid)s,
    claimed_at = %(now)s, started_at = coalesce(started_at, %(now)s),
    dispatched_at = coalesce(dispatched_at, %(now)s), updated_at = %(now)s
WHERE id = %(job_id)s AND status IN ('{JobStatus.PENDING.value}', '{JobStatus.RETRY.value}')
RETURNING {", ".join(_COLUMNS)}
"""

PROGRESS = f"""
UPDATE {_TABLE.name} SET
    status = '{JobStatus.PROGRESS.value}', progress = greatest(progress, %(percent)s),
    message = %(text)s, updated_at = %(now)s
WHERE id = %(job_id)s AND {_LIVE} AND attempts = %(attempt)s
"""

SUCCEED = f"""
UPDATE {_TABLE.name} SET
    status = '{JobStatus.SUCCESS.value}', progress = 100, message = 'done', result = %(outcome)s,
    error = NULL, updated_at = %(now)s, finished_at = %(now)s
WHERE id = %(job_id)s AND {_LIVE} AND attempts = %(attempt)s
"""


def is_direct(engine: Engine) -> bool:
    """Whether these statements apply: PostgreSQL through psycopg 3."""
    dialect = engine.dialect
    return bool(dialect.name == "postgresql" and dialect.driver == "psycopg")


class DirectWrites:
    """The statements on a pooled connection of `engine` (one an attempt holds, see
    JobStore.pinned): the pool's checkout, idle ping and invalidation stay SQLAlchemy's."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect

    @contextmanager
    def connection(self) -> Iterator[PoolProxiedConnection]:
        """A pooled connection of the engine. A failed connect raises as Engine.connect() does
        (sqlalchemy.exc.OperationalError), where raw_connection() would let psycopg's through."""
        try:
            pooled = self._engine.raw_connection()
        except psycopg.Error as exc:
            raise DBAPIError.instance(None, None, exc, psycopg.Error, dialect=self._dialect) from exc
        try:
            yield pooled
        finally:
            pooled.close()

    def insert(self, connection: PoolProxiedConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        """New jobs' rows, in NEW_JOB_STATE: one autocommitted statement, all or none."""
        if len(rows) == 1:
            (row,) = rows
            self._execute(
                connection,
                INSERT,
                {name: row[name] for name in _NEW_COLUMNS} | {"params": Json(row["params"])},
            )
            return
        columns = {name: [row[name] for row in rows] for name in _NEW_COLUMNS}
        columns["params"] = [json.dumps(row["params"]) for row in rows]  # cast to json in the SQL
        self._execute(connection, INSERT_MANY, columns)

    def claim(self, connection: PoolProxiedConnection, params: Mapping[str, Any]) -> Job | None:
        row = self._execute(connection, CLAIM, params, fetch=True)
        if row is None:
            return None
        values = dict(zip(_COLUMNS, row, strict=True))
        values["status"] = JobStatus(values["status"])
        return job_from_row(values)

    def set_progress(self, connection: PoolProxiedConnection, params: Mapping[str, Any]) -> bool:
        return bool(self._execute(connection, PROGRESS, params))

    def succeed(self, connection: PoolProxiedConnection, params: Mapping[str, Any]) -> bool:
        # Json: the column is `json`, and psycopg sends a dict as such only when told.
        return bool(self._execute(connection, SUCCEED, {**params, "outcome": Json(params["outcome"])}))

    def _execute(
        self, connection: PoolProxiedConnection, sql: str, params: Mapping[str, Any], *, fetch: bool = False
    ) -> Any:
        """The row RETURNING gave (`fetch`), else the number of rows changed."""
        driver: psycopg.Connection[Any] = connection.driver_connection  # type: ignore[assignment]
        try:
            with driver.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchone() if fetch else cursor.rowcount
        except psycopg.Error as exc:
            # As SQLAlchemy's own execution raises it: a lost connection leaves the pool, and
            # callers catch sqlalchemy.exc.OperationalError / DBAPIError whichever way it ran.
            lost = self._dialect.is_disconnect(exc, connection.dbapi_connection, None)  # type: ignore[arg-type]
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                sql, dict(params), exc, psycopg.Error, connection_invalidated=lost, dialect=self._dialect
            ) from exc
