"""`stack doctor` and the API's `hint` against the split-queues deployment: real Redis, PostgreSQL
and processes. Doctor runs as a user would run it, a subprocess with the stack's environment."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services.processes import free_port
from stack.testing.services.redis import RedisService
from tests.e2e.conftest import E2E_ENV

pytestmark = pytest.mark.e2e

CONTENT_HINT = "no worker consumes queue 'content'; start one: STACK_WORKER_QUEUES=content stack run worker"


@pytest.fixture(scope="module")
def stack_procfile(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.rootpath / "procfiles" / "split-queues.Procfile"


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    # A hint after 2 s instead of 10: the test waits for one.
    return {**E2E_ENV, "STACK_WORKER_CONCURRENCY": "1", "STACK_HINT_AFTER": "2"}


def doctor(
    stack: ProcfileStack, *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stack", "doctor", *args],
        env={**stack.env, **(env or {})},
        cwd=stack.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert not done.stderr.strip() or done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout.splitlines(), took


def line(lines: list[str], prefix: str) -> str:
    found = [x for x in lines if x.startswith(prefix)]
    assert found, f"no line starting with {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


def test_healthy_stack_passes(stack_processes: ProcfileStack) -> None:
    code, lines, took = doctor(stack_processes)
    report = "\n".join(lines)
    assert code == 0, report
    assert not [x for x in lines if x.startswith("fail")], report
    for queue in ("content", "default", "logs"):
        assert f"consumed by {queue}@" in line(lines, f"ok    queue {queue}"), report
    assert "demo ran end to end" in line(lines, "ok    canary default"), report
    assert "ran end to end" in line(lines, "ok    canary content"), report
    assert "write_log ran end to end" in line(lines, "ok    canary logs"), report  # every queue
    line(lines, "ok    beat")
    assert took < 15, f"doctor took {took:.1f} s\n{report}"


def test_dead_broker_is_reported_within_seconds(stack_processes: ProcfileStack) -> None:
    dead = f"redis://:secret@127.0.0.1:{free_port()}/0"
    code, lines, took = doctor(stack_processes, env={"CELERY_BROKER_URL": dead})
    assert code == 1
    broker = line(lines, "fail  broker")
    assert "redis://:***@127.0.0.1" in broker and "secret" not in "\n".join(lines)
    assert "CELERY_BROKER_URL" in broker
    assert took < 6, f"doctor took {took:.1f} s with a dead broker"


def test_worker_on_another_broker_or_database_is_named(
    stack_processes: ProcfileStack, stack_start, stack_redis_service: RedisService, tmp_path: Path
) -> None:
    # One worker on another Redis db of the same server (its REDIS_URL differs), one on another
    # database (its DATABASE_URL differs). `--include` registers doctor's remote-control command
    # even on a checkout whose celery_app does not import it yet.
    other_broker = stack_redis_service.allocate_db()
    (tmp_path / "stray.Procfile").write_text(
        "stray: STACK_WORKER_QUEUES=content STACK_WORKER_NAME=stray@%h "
        "stack run worker --include stack.jobs.control\n"
    )
    (tmp_path / "spare.Procfile").write_text(
        f"spare: DATABASE_URL=sqlite:///{tmp_path}/other.db STACK_WORKER_QUEUES=spare "
        "STACK_WORKER_NAME=spare@%h stack run worker --include stack.jobs.control\n"
    )
    stray = stack_start(tmp_path / "stray.Procfile", env={"REDIS_URL": other_broker}, wait=False)
    spare = stack_start(tmp_path / "spare.Procfile", wait=False)
    try:
        stray.wait_ready(timeout=60)
        deadline = time.monotonic() + 60
        while not any(n.startswith("spare@") for n in stack_processes.workers_answering()):
            assert time.monotonic() < deadline, spare.logs()
            time.sleep(0.2)
        code, lines, _ = doctor(stack_processes, "--no-canary")
        report = "\n".join(lines)
        assert code == 1, report
        moved = line(lines, "fail  config stray@")
        # The host the session's Redis is reached at: 127.0.0.1 locally, maybe not in a container.
        host = urlsplit(stack_redis_service.url).hostname
        assert f"consumes content on another broker, redis://{host}" in moved, report
        assert "CELERY_BROKER_URL (or REDIS_URL)" in moved, report
        database = line(lines, "fail  config spare@")
        assert "disagree on DATABASE_URL" in database, report
    finally:
        stray.teardown()
        spare.teardown()
        stack_redis_service.release_db(other_broker)


def test_queue_without_worker_fails_and_its_job_says_why(
    stack_processes: ProcfileStack, stack_api: JobClient
) -> None:
    stack_processes["worker_content"].stop()
    submitted = stack_api.submit("generate_image", {"width": 64, "height": 64})

    code, lines, _ = doctor(stack_processes, "--no-canary")
    queue = line(lines, "fail  queue content")
    assert code == 1
    assert "no worker consumes queue 'content' (kinds: generate_content, generate_image)" in queue
    assert "-> start one: STACK_WORKER_QUEUES=content stack run worker" in queue
    assert "worker_content: STACK_WORKER_QUEUES=content" in queue

    hinted = stack_api.follow(submitted, timeout=30, until=lambda job: job.get("hint") is not None)
    assert hinted.final["hint"] == CONTENT_HINT
    assert hinted.final["status"] == "pending"

    stack_processes["worker_content"].start()
    done = stack_api.follow(submitted, timeout=60)
    assert done.final["status"] == "success"
    assert done.final["hint"] is None
