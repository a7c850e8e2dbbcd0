"""Job messages on Redis are published without declaring their queue first
(stack.jobs.broker.declare_on_publish): a submit before any worker ever declared the queue still
lands in the queue's list, and a worker started afterwards runs it, once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from stack.config import load_settings
from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack

pytestmark = pytest.mark.e2e


def test_a_job_submitted_before_any_worker_existed_runs_once_one_starts(
    stack_start, stack_redis_url: str, tmp_path: Path
) -> None:
    web = tmp_path / "Procfile.web"
    web.write_text("web: stack run api\n")
    api_stack: ProcfileStack = stack_start(web)
    client = JobClient(api_stack.api_url, diagnostics=api_stack.logs)
    broker = redis.Redis.from_url(stack_redis_url)
    try:
        submitted = client.submit("demo", {"seconds": 0, "steps": 2})
        # Nothing but the message: no worker has declared `default`, and the publish declared
        # nothing (kombu's declare would have left its binding set, <prefix>_kombu.binding.default).
        prefix = load_settings().redis_prefix  # the processes' too: same environment, same kinds
        assert broker.llen(f"{prefix}default") == 1, broker.keys("*")
        assert broker.keys("*_kombu.binding.*") == []

        worker = tmp_path / "Procfile.worker"
        worker.write_text("worker: stack run worker\n")
        stack_start(worker, workers=1)
        trajectory = client.follow(submitted, timeout=30)
        assert trajectory.final is not None
        assert (trajectory.final["status"], trajectory.final["attempts"]) == ("success", 1)
    finally:
        client.close()
        broker.close()
