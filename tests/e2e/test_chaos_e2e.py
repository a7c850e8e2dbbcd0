"""Chaos: every message duplicated, workers SIGKILLed at random, Redis restarted (without
persistence, so everything queued is lost): every job still succeeds, no two runs of one job
ever overlap, and each job runs to its end exactly once.

The `record` kind writes a line when a run starts, after every progress report it was allowed
to make, and when it ends; a run's span is from its start to its last line, or to the moment
its worker was killed. Progress is fenced by the attempt number, so a run that was taken over
could not report (or finish) past the start of the next one.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from celery import Celery

from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services.redis import LocalRedis
from tests.e2e import conftest
from tests.e2e.conftest import E2E_ENV, TWO_WORKERS_PROCFILE, write_procfile
from tests.e2e.test_crashproof_e2e import LIVENESS_ENV

pytestmark = pytest.mark.e2e

JOBS = 16
KILLS = 4
SEED = 20261201


@pytest.fixture(scope="module")
def restartable_redis() -> Iterator[LocalRedis]:
    yield from conftest.restartable_redis(persistent=False)  # a restart loses every queued message


@pytest.fixture(scope="module")
def stack_redis_url(restartable_redis: LocalRedis) -> str:
    return restartable_redis.url


@pytest.fixture(scope="module")
def stack_procfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_procfile(tmp_path_factory, TWO_WORKERS_PROCFILE)


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {**E2E_ENV, **LIVENESS_ENV}


@dataclass
class Run:
    job: str
    attempt: int
    pid: int
    parent: int
    start: float
    last: float
    ended: bool = False


@dataclass
class Runs:
    by_job: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def parse(cls, path: Path) -> Runs:
        runs: dict[tuple[str, int], Run] = {}
        for line in path.read_text().splitlines():
            event, job, attempt, pid, parent, at = line.split()
            key = (job, int(attempt))
            if event == "start":
                assert key not in runs, f"attempt {attempt} of job {job} started twice"
                runs[key] = Run(job, int(attempt), int(pid), int(parent), float(at), float(at))
            else:
                runs[key].last = float(at)
                runs[key].ended = event == "end"
        parsed = cls()
        for run in runs.values():
            parsed.by_job[run.job].append(run)
        return parsed


def test_duplicates_kills_and_a_redis_restart_lose_nothing_and_never_overlap(
    stack_api: JobClient,
    stack_processes: ProcfileStack,
    restartable_redis: LocalRedis,
    tmp_path: Path,
) -> None:
    runs_log = tmp_path / "runs.log"
    params = {"log": str(runs_log), "seconds": 2, "steps": 10}
    jobs = [stack_api.submit("record", params) for _ in range(JOBS)]

    sender = Celery("chaos", broker=restartable_redis.url, set_as_current=False)
    sender.conf.broker_transport_options = {"global_keyprefix": stack_processes.redis_prefix}
    for job in jobs:  # every message twice, as a client or a sweep re-sending it would
        sender.send_task("jobs.record", args=[job["task_id"]], task_id=job["task_id"], queue="default")
    sender.close()

    rng = random.Random(SEED)
    killed_at: dict[int, float] = {}  # worker main pid -> when its whole group was SIGKILLed
    for number in range(KILLS):
        time.sleep(rng.uniform(1.5, 3.5))
        worker = stack_processes[rng.choice(["worker1", "worker2"])]
        pid = worker.pid
        worker.kill()
        assert pid is not None
        killed_at[pid] = time.time()
        worker.start()
        if number == 1:
            restartable_redis.restart(downtime=1.0)

    finals = [stack_api.follow(job, timeout=120).final for job in jobs]
    outcome = {f["task_id"][:8]: (f["status"], f["attempts"], f["message"]) for f in finals}
    assert all(f["status"] == "success" for f in finals), outcome

    runs = Runs.parse(runs_log)
    assert set(runs.by_job) == {job["task_id"] for job in jobs}
    for job_id, job_runs in runs.by_job.items():
        completed = [run for run in job_runs if run.ended]
        assert len(completed) == 1, f"job {job_id} ran to its end {len(completed)} times: {job_runs}"
        ordered = sorted(job_runs, key=lambda run: run.start)
        for earlier, later in itertools.pairwise(ordered):
            end = max(earlier.last, killed_at.get(earlier.parent, earlier.last))
            assert later.start >= end, (
                f"job {job_id}: attempt {later.attempt} began while {earlier} still ran"
            )
    taken_over = sum(len(job_runs) - 1 for job_runs in runs.by_job.values())
    print(f"\n{JOBS} jobs, {KILLS} worker kills, 1 Redis restart: {taken_over} runs cut short and resumed")
