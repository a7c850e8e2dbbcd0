"""The seeds' three-service deployment (procfiles/split-queues.Procfile): each queue family has
its own worker, and a stopped worker holds back only its own queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.testing.jobs import JobClient, assert_progressed
from stack.testing.procfile import ProcfileStack
from tests.e2e.conftest import E2E_ENV

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack_procfile(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.rootpath / "procfiles" / "split-queues.Procfile"


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {**E2E_ENV, "STACK_WORKER_CONCURRENCY": "1"}  # four workers on two cores


@pytest.mark.parametrize(
    ("kind", "params", "worker"),
    [
        ("generate_image", {"width": 64, "height": 64}, "content@"),
        ("generate_content", {"text": "Alice and Bob. Alice again."}, "content@"),
        ("write_log", {"event": "deploy"}, "logs@"),
        ("demo", {"seconds": 0.3, "steps": 3}, "default@"),
    ],
)
def test_each_kind_runs_on_its_queue_worker(
    stack_api: JobClient, kind: str, params: dict, worker: str
) -> None:
    trajectory = stack_api.run(kind, params)
    assert_progressed(trajectory, intermediate=0)
    assert trajectory.final["worker"].startswith(worker), trajectory.final


def test_stopped_content_worker_holds_back_only_content(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    stack_processes["worker_content"].stop()
    content = stack_api.submit("generate_image", {"width": 64, "height": 64})
    log = stack_api.run("write_log", {"event": "still flowing"}, timeout=20)
    assert log.final["status"] == "success"
    assert stack_api.get(content["task_id"])["status"] == "pending"

    stack_processes["worker_content"].start()
    trajectory = stack_api.follow(content, timeout=60)
    assert trajectory.final["status"] == "success"
    assert trajectory.final["worker"].startswith("content@")
