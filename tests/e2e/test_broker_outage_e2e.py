"""The broker goes away and comes back: nothing is lost.

Uses a Redis of its own with an append-only file, as production Redis runs. Whatever the broker
drops (a job published while it was down, an unacknowledged message of a running job), the
beat's sweep reconciles from the job table, which is the truth.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services.redis import LocalRedis
from tests.e2e.conftest import E2E_ENV, restartable_redis

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def persistent_redis() -> Iterator[LocalRedis]:
    yield from restartable_redis(persistent=True)


@pytest.fixture(scope="module")
def stack_redis_url(persistent_redis: LocalRedis) -> str:
    return persistent_redis.url


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {
        **E2E_ENV,
        "STACK_SWEEP_INTERVAL": "1",
        "STACK_DISPATCH_GRACE": "1",
        "STACK_STALL_MARGIN": "1",
        "STACK_TASK_SOFT_TIME_LIMIT": "4",
        "STACK_TASK_TIME_LIMIT": "5",
        "STACK_VISIBILITY_TIMEOUT": "30",
        "STACK_BROKER_TIMEOUT": "0.5",
    }


def test_job_accepted_while_the_broker_is_down_runs_once_it_is_back(
    stack_api: JobClient,
    stack_processes: ProcfileStack,
    stack_start,
    persistent_redis: LocalRedis,
    tmp_path: Path,
) -> None:
    # A second beat: two sweepers must never dispatch the same job twice.
    procfile = tmp_path / "Procfile"
    procfile.write_text("beat2: stack run beat\n")
    stack_start(procfile, env={"STACK_DATA_DIR": str(tmp_path)})

    persistent_redis.stop()
    try:
        submitted = stack_api.submit("demo", {"seconds": 0.2, "steps": 2})
        assert submitted["status"] == "pending"
        assert "not dispatched yet" in submitted["message"]
    finally:
        persistent_redis.start()
    trajectory = stack_api.follow(submitted, timeout=40)
    assert trajectory.final["status"] == "success", trajectory.describe()
    assert trajectory.final["attempts"] == 1
    received = (
        stack_processes["worker"].log_path.read_text().count(f"jobs.demo[{submitted['task_id']}] received")
    )
    assert received == 1, f"dispatched {received} times"


def test_a_burst_accepted_while_the_broker_is_down_runs_once_each(
    stack_api: JobClient, stack_processes: ProcfileStack, persistent_redis: LocalRedis
) -> None:
    # Concurrent submits are published as groups: a group the broker refuses is deferred whole.
    persistent_redis.stop()
    try:
        with ThreadPoolExecutor(8) as pool:
            submitted = list(
                pool.map(lambda _: stack_api.submit("demo", {"seconds": 0, "steps": 1}), range(16))
            )
        assert all("not dispatched yet" in job["message"] for job in submitted), [
            j["message"] for j in submitted
        ]
    finally:
        persistent_redis.start()
    finals = [stack_api.follow(job, timeout=40).final for job in submitted]
    assert all(final["status"] == "success" and final["attempts"] == 1 for final in finals), [
        (final["status"], final["attempts"]) for final in finals
    ]
    log = stack_processes["worker"].log_path.read_text()
    received = {job["task_id"]: log.count(f"jobs.demo[{job['task_id']}] received") for job in submitted}
    assert set(received.values()) == {1}, received


def test_every_job_ends_after_a_redis_restart(stack_api: JobClient, persistent_redis: LocalRedis) -> None:
    jobs = [stack_api.submit("demo", {"seconds": 2, "steps": 10}) for _ in range(6)]
    stack_api.follow(jobs[0], timeout=20, until=lambda job: job["progress"] >= 20)

    persistent_redis.restart(downtime=1.0)

    finals = [stack_api.follow(job, timeout=60).final for job in jobs]
    outcome = {f["task_id"][:8]: (f["status"], f["attempts"]) for f in finals}
    assert all(f["status"] == "success" for f in finals), outcome


def test_queued_jobs_the_broker_lost_are_sent_again_and_run_once(
    stack_api: JobClient, stack_processes: ProcfileStack, persistent_redis: LocalRedis
) -> None:
    # Both worker slots busy, four jobs waiting in the queue...
    running = [stack_api.submit("demo", {"seconds": 2, "steps": 10}) for _ in range(2)]
    for job in running:
        stack_api.follow(job, timeout=20, until=lambda j: j["status"] == "progress")
    waiting = [stack_api.submit("demo", {"seconds": 0.1, "steps": 1}) for _ in range(4)]
    client = redis.Redis.from_url(persistent_redis.url)
    try:
        queue = stack_processes.redis_prefix + "default"  # the list kombu keeps under the namespace
        assert client.llen(queue) >= 4, "the four jobs should be waiting in the queue"  # + sweeps
        # ...which the broker then loses, as a Redis restart without persistence would.
        client.delete(queue)
    finally:
        client.close()

    finals = [stack_api.follow(job, timeout=30).final for job in running + waiting]
    outcome = {f["task_id"][:8]: (f["status"], f["attempts"]) for f in finals}
    assert all(f["status"] == "success" and f["attempts"] == 1 for f in finals), outcome
