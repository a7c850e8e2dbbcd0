"""Pooled connections: pinged only after sitting idle, replaced when the ping fails."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import QueuePool

from stack.db import ping_when_idle


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool, pool_size=1)


def count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> list[Any]:
    pinged: list[Any] = []

    def do_ping(dbapi_connection: Any) -> bool:
        pinged.append(dbapi_connection)
        if fail:
            raise sqlite3.OperationalError("server closed the connection unexpectedly")
        return True

    monkeypatch.setattr(engine.dialect, "do_ping", do_ping)
    return pinged


def use(engine: Engine) -> Any:
    with engine.connect() as connection:
        assert connection.execute(text("select 1")).scalar() == 1
        return connection.connection.dbapi_connection


def test_a_warm_connection_is_not_pinged(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    ping_when_idle(engine, after=60)
    pinged = count_pings(engine, monkeypatch)
    first = use(engine)
    assert use(engine) is first and pinged == []  # the busy path pays no extra round trip


def test_an_idle_connection_is_pinged_first(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    ping_when_idle(engine, after=0.05)
    pinged = count_pings(engine, monkeypatch)
    first = use(engine)
    time.sleep(0.1)
    assert use(engine) is first and pinged == [first]


def test_a_connection_that_fails_its_ping_is_replaced(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ping_when_idle(engine, after=0.05)
    first = use(engine)
    time.sleep(0.1)
    pinged = count_pings(engine, monkeypatch, fail=True)
    second = use(engine)  # no error reaches the caller: a fresh connection took its place
    assert pinged == [first] and second is not first
