"""Two stacks on ONE real Redis database, same kinds and same queue names (default, content,
logs), different STACK_NAMESPACE and databases: each worker only ever runs its own stack's jobs.

Without namespaces, B's worker would take A's messages from the shared `default` list and refuse
them ("not in the database"), and A's jobs would wait for a lucky pick.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stack.testing.fixtures import StartStack
from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services.base import wait_for
from stack.testing.services.postgres import PostgresService, database_name, new_database_name
from tests.e2e.conftest import E2E_ENV, write_procfile

pytestmark = pytest.mark.e2e

PROCFILE = """\
web: stack run api
worker: stack run worker
"""
JOBS = 6  # per stack, submitted at once: both workers are polling the one Redis meanwhile
DEMO = {"seconds": 0.2, "steps": 2}


@pytest.fixture(scope="module")
def stack_procfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_procfile(tmp_path_factory, PROCFILE)


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {**E2E_ENV, "STACK_WORKER_CONCURRENCY": "1"}  # four processes on two cores


@pytest.fixture(scope="module")
def second_database(stack_postgres_service: PostgresService) -> Iterator[str]:
    url = stack_postgres_service.create_database(new_database_name("stack_namespaces_b"))
    try:
        yield url
    finally:
        stack_postgres_service.drop_database(database_name(url))


@pytest.fixture(scope="module")
def stacks(stack_start: StartStack, second_database: str) -> tuple[ProcfileStack, ProcfileStack]:
    alpha = stack_start(env={"STACK_NAMESPACE": "alpha", "STACK_WORKER_NAME": "alpha@%h"})
    beta = stack_start(
        env={"STACK_NAMESPACE": "beta", "STACK_WORKER_NAME": "beta@%h", "DATABASE_URL": second_database}
    )
    assert alpha.env["REDIS_URL"] == beta.env["REDIS_URL"], "the point: one Redis database for both"
    return alpha, beta


@pytest.fixture(scope="module")
def clients(stacks: tuple[ProcfileStack, ProcfileStack]) -> Iterator[tuple[JobClient, JobClient]]:
    alpha, beta = (JobClient(s.api_url, diagnostics=s.logs) for s in stacks)
    yield alpha, beta
    alpha.close()
    beta.close()


@pytest.fixture(scope="module")
def broker(stacks: tuple[ProcfileStack, ProcfileStack]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stacks[0].env["REDIS_URL"], socket_timeout=5)
    yield client
    client.close()


def test_each_worker_runs_only_its_own_stacks_jobs(clients: tuple[JobClient, JobClient]) -> None:
    alpha, beta = clients
    submitted = {
        name: [client.submit("demo", DEMO) for _ in range(JOBS)]
        for name, client in (("alpha", alpha), ("beta", beta))
    }
    for name, client in (("alpha", alpha), ("beta", beta)):
        other = beta if client is alpha else alpha
        for job in submitted[name]:
            assert job["queue"] == "default"  # the same queue name in both stacks
            final = client.follow(job, timeout=60).final
            assert final["status"] == "success", final
            assert final["worker"].startswith(f"{name}@"), f"{name}'s job ran on {final['worker']}"
            assert final["attempts"] == 1, final  # never refused by the other stack's worker first
            # The other stack's database never heard of it.
            assert other.http.get(f"/api/jobs/{job['task_id']}").status_code == 404


def test_queues_and_keys_carry_the_namespace(
    stacks: tuple[ProcfileStack, ProcfileStack], clients: tuple[JobClient, JobClient], broker: redis.Redis
) -> None:
    alpha_stack, beta_stack = stacks
    alpha, beta = clients
    beta_stack["worker"].stop()
    try:
        waiting = beta.submit("demo", DEMO)
        wait_for(
            lambda: broker.llen("beta:default") == 1,
            timeout=10,
            what="beta's message in its own list, beta:default",
        )
        # alpha's worker is idle and polls the same Redis: it must leave beta's message alone.
        done = alpha.run("demo", DEMO, timeout=30).final
        assert done["status"] == "success" and done["worker"].startswith("alpha@"), done
        time.sleep(1.0)
        assert broker.llen("beta:default") == 1, "alpha's worker took beta's message"
        assert beta.get(waiting["task_id"])["status"] == "pending"
        assert not broker.exists("default"), "a queue without the namespace: some message escaped it"
        own = {key.decode() for key in broker.scan_iter(match="*", count=1000)}
        unprefixed = sorted(k for k in own if not k.startswith(("alpha:", "beta:", "stack:test:")))
        assert not unprefixed, f"keys outside both namespaces: {unprefixed}"
    finally:
        beta_stack["worker"].start()
    beta_stack.wait_ready(timeout=60)
    final = beta.follow(waiting, timeout=60).final
    assert final["status"] == "success" and final["worker"].startswith("beta@"), final
    assert alpha.http.get(f"/api/jobs/{waiting['task_id']}").status_code == 404
    assert alpha_stack["worker"].alive()


def test_events_stream_on_the_namespaced_channel(clients: tuple[JobClient, JobClient]) -> None:
    alpha, _ = clients
    job = alpha.submit("demo", {"seconds": 1.0, "steps": 5})
    statuses: list[str] = []
    deadline = time.monotonic() + 30
    with alpha.http.stream("GET", f"/api/jobs/{job['task_id']}/events", timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                statuses.append(f"{event.get('status')} {event.get('progress')}")
                if event.get("status") == "success":
                    break
            assert time.monotonic() < deadline, f"no success event within 30 s; got {statuses}"
    # Progress reached the stream live (published on alpha:stack:jobs:<id>), not only the end.
    assert any(s.startswith("progress") for s in statuses), statuses


def test_doctor_warns_of_the_other_namespace_sharing_the_database(
    stacks: tuple[ProcfileStack, ProcfileStack],
) -> None:
    alpha, _ = stacks
    done = subprocess.run(
        [sys.executable, "-m", "stack", "doctor", "--json", "--no-canary"],
        env=alpha.env,
        cwd=alpha.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    namespace = checks["namespace"]
    assert namespace["status"] == "warn", namespace
    assert "prefix 'beta:'" in namespace["detail"] and "STACK_NAMESPACE" in namespace["fix"], namespace
    assert namespace["data"]["namespace"] == "alpha"
    # Doctor reaches alpha's worker through alpha's prefixed mailbox, and only that one.
    workers = sorted(name for name in checks if name.startswith("worker"))
    assert workers == [name for name in workers if name.startswith("worker alpha@")] != [], workers
