"""Every SERVICE_TYPE role starts and reports ready; migrations run in api/migrate, never in
workers; CELERY_ENABLED=false needs no broker at all."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services.base import wait_for
from stack.testing.services.postgres import PostgresService, database_name
from stack.testing.services.processes import free_port

pytestmark = pytest.mark.e2e

DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def procfile(tmp_path: Path, **lines: str) -> Path:
    path = tmp_path / "Procfile"
    path.write_text("".join(f"{name}: {command}\n" for name, command in lines.items()))
    return path


def tables(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def empty_database(stack_postgres_service: PostgresService) -> Iterator[str]:
    url = stack_postgres_service.create_database()
    yield url
    stack_postgres_service.drop_database(database_name(url))


def test_inline_mode_completes_jobs_with_no_broker_and_no_worker(stack_start, tmp_path: Path) -> None:
    stack = stack_start(
        procfile(tmp_path, web="SERVICE_TYPE=api stack run"),
        env={"CELERY_ENABLED": "false", "REDIS_URL": DEAD_BROKER},
    )
    client = JobClient(stack.api_url, diagnostics=stack.logs)
    job = client.submit("demo", {"seconds": 0.3, "steps": 3}, expect=200)
    assert (job["status"], job["progress"], job["worker"]) == ("success", 100, "inline")
    failed = client.submit("demo", {"seconds": 0, "steps": 2, "fail_at": 1}, expect=200)
    assert failed["status"] == "failure" and "fail_at=1" in failed["error"]
    assert client.get(job["task_id"])["status"] == "success"
    assert httpx.get(f"{stack.api_url}/ready").json()["mode"] == "inline"


def test_worker_never_migrates_api_does(stack_start, empty_database: str, tmp_path: Path) -> None:
    worker_only = stack_start(
        procfile(tmp_path, worker="SERVICE_TYPE=worker stack run"), env={"DATABASE_URL": empty_database}
    )
    assert worker_only.workers_answering()
    assert "stack_jobs" not in tables(empty_database), "a worker created tables"

    api_dir = tmp_path / "api"
    api_dir.mkdir()
    api = stack_start(
        procfile(api_dir, web="SERVICE_TYPE=api stack run"), env={"DATABASE_URL": empty_database}
    )
    assert api.api_ready()
    assert {"stack_jobs", "stack_alembic_version"} <= tables(empty_database)


def test_migrate_role_migrates_and_exits(empty_database: str, stack_service_env: dict[str, str]) -> None:
    env = {**os.environ, **stack_service_env, "DATABASE_URL": empty_database, "SERVICE_TYPE": "migrate"}
    done = subprocess.run(
        [sys.executable, "-m", "stack", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "stack_jobs" in tables(empty_database)


def test_beat_and_flower_start(stack_start, tmp_path: Path) -> None:
    flower_port = free_port()
    stack: ProcfileStack = stack_start(
        procfile(tmp_path, beat="SERVICE_TYPE=beat stack run", flower="SERVICE_TYPE=flower stack run"),
        env={"STACK_FLOWER_PORT": str(flower_port)},
    )

    def flower_answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(flower_answers, timeout=30, what=f"flower on port {flower_port}")
    wait_for(lambda: "beat: Starting" in stack["beat"].log_tail(50), timeout=30, what="beat to start")
    assert stack["beat"].alive() and stack["flower"].alive()


def test_redis_role_runs_an_embedded_redis_when_none_is_configured(stack_start, tmp_path: Path) -> None:
    port = free_port()
    stack = stack_start(
        procfile(tmp_path, redis="SERVICE_TYPE=redis stack run"),
        env={"REDIS_URL": "", "STACK_REDIS_PORT": str(port)},
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(pings, timeout=20, what=f"the embedded Redis on port {port}")
    stack["redis"].stop()
    assert not pings(), "the embedded Redis outlived its role"


def test_redis_role_idles_when_redis_url_is_set(stack_start, tmp_path: Path) -> None:
    stack = stack_start(procfile(tmp_path, redis="stack run redis"))
    wait_for(
        lambda: "no embedded Redis needed" in stack["redis"].log_tail(), timeout=20, what="the idle notice"
    )
    assert stack["redis"].alive()
