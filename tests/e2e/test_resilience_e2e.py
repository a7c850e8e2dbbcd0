"""A worker killed with SIGKILL mid-job loses nothing: its heartbeat stops, the sweep queues the
job again once the worker is dead (STACK_WORKER_DEAD_AFTER), long before Redis's visibility
timeout would hand the unacknowledged message out; the late copy is then dropped."""

from __future__ import annotations

import time

import pytest

from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services import PostgresService
from tests.e2e.conftest import E2E_ENV

pytestmark = pytest.mark.e2e

DEAD_AFTER = 3
VISIBILITY_TIMEOUT = 120


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    # Short liveness settings so a lost worker's job comes back within seconds.
    return {
        **E2E_ENV,
        "STACK_HEARTBEAT_INTERVAL": "0.5",
        "STACK_WORKER_DEAD_AFTER": str(DEAD_AFTER),
        "STACK_SWEEP_INTERVAL": "1",
        "STACK_TASK_SOFT_TIME_LIMIT": "20",
        "STACK_TASK_TIME_LIMIT": "30",
        "STACK_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }


def test_worker_sigkilled_mid_job_then_restarted_finishes_the_job(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    submitted = stack_api.submit("demo", {"seconds": 2.5, "steps": 25})
    running = stack_api.follow(submitted, timeout=20, until=lambda job: job["progress"] >= 20)
    assert running.final["attempts"] == 1

    stack_processes["worker"].kill()  # the whole worker: main process and pool, no shutdown code
    killed_at = time.monotonic()
    time.sleep(1)
    assert stack_api.get(submitted["task_id"])["status"] == "progress"  # nobody is running it

    stack_processes["worker"].start()
    stack_processes.wait_ready(timeout=60)
    trajectory = stack_api.follow(submitted, timeout=DEAD_AFTER + 30)
    final = trajectory.final
    assert final["status"] == "success", trajectory.describe()
    assert final["attempts"] == 2, "the job must have run again after the kill"
    assert final["progress"] == 100
    took = time.monotonic() - killed_at
    assert DEAD_AFTER - 1 <= took < VISIBILITY_TIMEOUT / 4, f"came back {took:.1f} s after the kill"


def test_nothing_else_was_lost_or_duplicated(stack_api: JobClient) -> None:
    jobs = [stack_api.submit("demo", {"seconds": 0.2, "steps": 2}) for _ in range(6)]
    finals = [stack_api.follow(job, timeout=30).final for job in jobs]
    assert [f["status"] for f in finals] == ["success"] * 6
    assert all(f["attempts"] == 1 for f in finals)


def test_api_and_worker_carry_on_after_a_database_restart(
    stack_api: JobClient, stack_postgres_service: PostgresService
) -> None:  # type: ignore[no-untyped-def]
    restart = getattr(stack_postgres_service, "restart", None)
    if restart is None:
        pytest.skip(f"{type(stack_postgres_service).__name__} cannot be restarted from here")
    for _ in range(4):  # both API processes and the worker hold pooled connections now
        assert stack_api.follow(stack_api.submit("demo", {"seconds": 0})).final["status"] == "success"
    restart(downtime=1.0)
    # Every pooled connection of the API and the worker is now dead; the first request must not
    # be the one that finds out (a connection idle past a second is pinged before use).
    submitted = stack_api.submit("demo", {"seconds": 0.2, "steps": 2})
    trajectory = stack_api.follow(submitted, timeout=30)
    assert trajectory.final["status"] == "success", trajectory.describe()
    assert trajectory.final["attempts"] == 1
