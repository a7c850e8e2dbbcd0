"""Engine and sessions. One engine per process, built from settings, never at import time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from stack.config import Settings

log = logging.getLogger(__name__)


def make_engine(
    url: str | URL, *, autocommit: bool = False, pool_size: int = 5, max_overflow: int = 10
) -> Engine:
    """`autocommit`: every statement commits itself, no BEGIN/COMMIT round trips; for paths
    made of single atomic statements, which is nearly every job write and read."""
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(str(url), **isolation)
    return create_engine(
        url,
        **isolation,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,  # survive a database restart or an idle-connection reaper
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "stack"},
    )


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


def engine_from_settings(settings: Settings, *, autocommit: bool = False) -> Engine:
    # Connections above pool_size are closed when returned: a pool smaller than the number of
    # threads using it opens a PostgreSQL backend (a fork) for every burst.
    return make_engine(
        settings.effective_database_url,
        autocommit=autocommit,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
