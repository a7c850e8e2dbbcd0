"""Engine and sessions. One engine per process, built from settings, never at import time."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from stack.config import Settings

log = logging.getLogger(__name__)

# A pooled connection idle this long is pinged before use. A busy pool's connections are never
# idle that long, so the hot paths skip the extra round trip that `pool_pre_ping` pays on
# every checkout (a quarter of a submit's round trips).
PING_AFTER_IDLE_SECONDS = 1.0


def make_engine(
    url: str | URL,
    *,
    autocommit: bool = False,
    pool_size: int = 5,
    max_overflow: int = 10,
    pooled: bool = True,
) -> Engine:
    """`autocommit`: every statement commits itself, no BEGIN/COMMIT round trips; for paths
    made of single atomic statements, which is nearly every job write and read.
    `pooled=False`: a connection per use and none kept, for a process that forks (a worker's
    main process): a child can never inherit a pooled connection its parent is using."""
    isolation: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if not pooled:
        isolation["poolclass"] = NullPool
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(str(url), **isolation)
    if autocommit:
        # No transaction is ever open to roll back when a connection goes back to the pool.
        isolation["pool_reset_on_return"] = None
    # LIFO: reuse the warm connections; the rest idle, get pinged, recycled.
    sizes = {
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_use_lifo": True,
        "pool_recycle": 1800,
    }
    engine = create_engine(
        url,
        **isolation,
        **(sizes if pooled else {}),
        connect_args={"connect_timeout": 5, "application_name": "stack"},
    )
    ping_when_idle(engine, after=PING_AFTER_IDLE_SECONDS)
    return engine


def ping_when_idle(engine: Engine, *, after: float) -> None:
    """Survive a database restart or an idle-connection reaper: ping a connection that sat in
    the pool `after` seconds or more, and replace it if the ping fails. A connection that broke
    while busy fails its statement instead; SQLAlchemy then recycles the whole pool, so only
    requests already in flight see the restart."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < after:
            return  # brand new, or warm
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def _sqlite_engine(url: str, **options: Any) -> Engine:
    database = url.split("///", 1)[-1]
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the API read while a worker writes; the API and workers are separate processes.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def engine_from_settings(settings: Settings, *, autocommit: bool = False, pooled: bool = True) -> Engine:
    # Connections above pool_size are closed when returned: a pool smaller than the number of
    # threads using it opens a PostgreSQL backend (a fork) for every burst.
    return make_engine(
        settings.effective_database_url,
        autocommit=autocommit,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pooled=pooled,
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
