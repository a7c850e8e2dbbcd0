"""Crash-proof jobs on the production roles, with liveness settings short enough for a suite:
a job that kills its process fails after its attempts, a hard time limit fails the job, the sweep
runs while every worker slot is busy, and messages not sent by stack are refused."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from stack.config import normalise_database_url
from stack.db import make_engine
from stack.jobs.store import JobStore
from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services.base import wait_for
from tests.e2e.conftest import E2E_ENV

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LIVENESS_ENV = {
    "STACK_KINDS": "tests.e2e.kinds:registry",
    "PYTHONPATH": str(ROOT),
    "STACK_HEARTBEAT_INTERVAL": "0.5",
    "STACK_WORKER_DEAD_AFTER": "3",
    "STACK_SWEEP_INTERVAL": "1",
    "STACK_DISPATCH_GRACE": "1",
}
HARD_LIMIT = 3  # the `stubborn` kind's own time_limit


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {**E2E_ENV, **LIVENESS_ENV}


def test_a_job_that_kills_its_process_fails_after_its_attempts(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    trajectory = stack_api.run("crash", timeout=90)
    final = trajectory.final
    assert final["status"] == "failure", trajectory.describe()
    assert final["attempts"] == 4, "STACK_TASK_MAX_RETRIES=3: four attempts, no more"
    assert final["error"].startswith("worker lost 4 times while running this job: killed or out of memory?")
    # The worker replaced its dead pool processes and goes on serving.
    assert stack_processes["worker"].alive()
    assert stack_api.run("demo", {"seconds": 0.2, "steps": 2}).final["status"] == "success"


def test_a_job_past_its_hard_time_limit_fails_naming_it_and_never_runs_again(stack_api: JobClient) -> None:
    trajectory = stack_api.run("stubborn", timeout=HARD_LIMIT + 20)
    final = trajectory.final
    assert final["status"] == "failure", trajectory.describe()
    assert f"killed at its hard time limit of {HARD_LIMIT} s" in final["error"]
    assert final["attempts"] == 1
    time.sleep(3 + 2 * 1 + 1)  # dead-after and two sweeps: nothing brings it back
    again = stack_api.get(final["task_id"])
    assert (again["status"], again["attempts"]) == ("failure", 1)


def test_a_visibility_timeout_shorter_than_a_kinds_time_limit_is_refused_at_start(
    stack_processes: ProcfileStack,
) -> None:
    env = {
        **stack_processes.env,
        "STACK_TASK_SOFT_TIME_LIMIT": "3",
        "STACK_TASK_TIME_LIMIT": "4",
        "STACK_VISIBILITY_TIMEOUT": "10",  # longer than the global limit, shorter than `long`'s 15 s
    }
    done = subprocess.run(
        [sys.executable, "-m", "stack", "run", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "STACK_VISIBILITY_TIMEOUT=10 is not longer than the time_limit of job kind 'long'" in done.stderr


def test_a_result_the_database_cannot_store_fails_the_job(stack_api: JobClient) -> None:
    final = stack_api.run("not_a_number").final
    assert final["status"] == "failure"
    assert "cannot be stored as JSON" in final["error"] and "not JSON compliant" in final["error"]


def test_the_sweep_runs_while_every_worker_slot_is_busy(
    stack_api: JobClient, stack_database_url: str
) -> None:
    busy = [stack_api.submit("demo", {"seconds": 6, "steps": 30}) for _ in range(2)]  # concurrency 2
    for job in busy:
        stack_api.follow(job, timeout=20, until=lambda j: j["status"] == "progress")
    # A job the broker never got (it was down at submit): only the sweep can send it.
    store = JobStore(make_engine(normalise_database_url(stack_database_url)))
    try:
        lost = store.create(kind="demo", queue="default", params={"seconds": 0, "steps": 1})
        sent = wait_for(
            lambda: (store.get(lost.id) or lost).dispatched_at, what="the sweep to send the job", timeout=10
        )
        assert sent is not None
        still_busy = [stack_api.get(job["task_id"])["status"] for job in busy]
        assert still_busy == ["progress", "progress"], "the sweep should not have waited for a free slot"
        final = stack_api.follow({**stack_api.get(lost.id)}, timeout=30).final
        assert final["status"] == "success"
    finally:
        store.dispose()


def test_a_plain_celery_message_is_refused_in_one_line_and_not_recorded_as_success(
    stack_processes: ProcfileStack,
) -> None:
    called = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "stack.worker:app",
            "call",
            "jobs.demo",
            "--args",
            '["no-such-job"]',
        ],
        env=stack_processes.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert called.returncode == 0, called.stderr
    task_id = called.stdout.strip().splitlines()[-1]
    log = stack_processes["worker"].log_path
    wait_for(
        lambda: f"jobs.demo[{task_id}]" in log.read_text() and "not sent by stack" in log.read_text(),
        what="the worker to refuse the message",
        timeout=15,
    )
    text = log.read_text()
    assert "submit jobs through POST /api/jobs/demo" in text
    assert f"jobs.demo[{task_id}] succeeded" not in text
    assert "Traceback" not in text.split(f"jobs.demo[{task_id}] received", 1)[1]


def test_a_steady_backlog_is_never_taken_for_lost_messages(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    jobs = [stack_api.submit("demo", {"seconds": 0.05, "steps": 1}) for _ in range(300)]
    finals = [stack_api.follow(job, timeout=120).final for job in jobs]
    assert all(f["status"] == "success" and f["attempts"] == 1 for f in finals)
    # Beat swept about once a second while the queue drained: it must never have re-sent one.
    assert "were lost by the broker" not in stack_processes["beat"].log_path.read_text()
    worker_log = stack_processes["worker"].log_path.read_text()
    twice = [j["task_id"] for j in jobs if worker_log.count(f"jobs.demo[{j['task_id']}] received") != 1]
    assert not twice, f"{len(twice)} jobs were delivered more than once"
