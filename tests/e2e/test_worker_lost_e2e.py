"""A whole worker dies mid-job (its process group SIGKILLed: the OOM killer, a lost node), with
the default liveness settings and beat running: its jobs run again elsewhere within
STACK_WORKER_DEAD_AFTER + STACK_SWEEP_INTERVAL, long before Redis's visibility timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stack.config import Settings
from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from tests.e2e.conftest import E2E_ENV, TWO_WORKERS_PROCFILE, write_procfile

pytestmark = pytest.mark.e2e

DEFAULTS = Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def stack_procfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_procfile(tmp_path_factory, TWO_WORKERS_PROCFILE)


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return dict(E2E_ENV)  # liveness, sweep and time limits at their defaults


def test_a_killed_workers_jobs_succeed_elsewhere_within_dead_after_plus_a_sweep(
    stack_api: JobClient, stack_processes: ProcfileStack, record_property: pytest.RecordProperty
) -> None:
    jobs = [stack_api.submit("demo", {"seconds": 6, "steps": 60}) for _ in range(4)]
    running = [stack_api.follow(job, timeout=30, until=lambda j: j["progress"] >= 10).final for job in jobs]
    on_one = [job["task_id"] for job in running if job["worker"].startswith("one@")]
    assert on_one, f"no job landed on worker1: {[job['worker'] for job in running]}"

    stack_processes["worker1"].kill()  # the whole group: main process and pool, no shutdown code
    killed_at = time.monotonic()
    bound = DEFAULTS.worker_dead_after + DEFAULTS.sweep_interval

    finals = [stack_api.follow(job, timeout=bound + 30).final for job in jobs]
    took = time.monotonic() - killed_at
    record_property("kill_to_all_done_seconds", round(took, 1))
    print(f"\nkill -> all {len(jobs)} jobs done: {took:.1f} s (dead-after + sweep = {bound:g} s)")
    outcome = {f["task_id"][:8]: (f["status"], f["attempts"], f["worker"]) for f in finals}
    assert all(f["status"] == "success" for f in finals), outcome
    for final in finals:
        lost = final["task_id"] in on_one
        assert final["attempts"] == (2 if lost else 1), outcome
        if lost:
            assert final["worker"].startswith("two@"), "the survivor ran it; nobody restarted worker1"
    assert took < bound + 6 + 5, f"recovery took {took:.1f} s"
