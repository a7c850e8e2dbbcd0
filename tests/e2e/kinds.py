"""The reference app's kinds plus a few that misbehave on purpose, for the crash-proof tests.

Point a stack at it with STACK_KINDS=tests.e2e.kinds:registry (and PYTHONPATH at the project).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, Field

from app.demo import demo
from app.kinds import registry as app_registry
from app.params import DemoParams
from stack.jobs.registry import JobContext, JobRegistry

registry = JobRegistry()
for kind in app_registry:
    registry.kind(
        kind.name,
        params=kind.params,
        queue=kind.queue,
        max_retries=kind.max_retries,
        soft_time_limit=kind.soft_time_limit,
        time_limit=kind.time_limit,
    )(kind.handler)


class RecordParams(BaseModel):
    log: str = Field(description="file every run appends its start and end lines to")
    seconds: float = Field(default=1.0, ge=0, le=60)
    steps: int = Field(default=10, ge=1, le=100)


@registry.kind("record", params=RecordParams)
def record(params: RecordParams, job: JobContext) -> dict[str, Any]:
    """Sleep in steps like `demo`, writing `start`, `step` and `end` lines (job, attempt, pid,
    parent pid, time) so a test can tell whether two runs of one job ever overlapped."""

    def note(event: str) -> None:
        line = f"{event} {job.id} {job.attempt} {os.getpid()} {os.getppid()} {time.time():.6f}\n"
        with open(params.log, "a") as out:  # one write() per line: O_APPEND keeps lines whole
            out.write(line)

    note("start")
    for step in range(1, params.steps + 1):
        time.sleep(params.seconds / params.steps)
        job.progress(100 * step / params.steps, f"step {step}/{params.steps}")
        note("step")  # still this job's attempt: the progress write was not refused
    note("end")
    return {"pid": os.getpid()}


class NoParams(BaseModel):
    pass


@registry.kind("crash", params=NoParams)
def crash(params: NoParams, job: JobContext) -> None:
    """Dies with its process every time, as a native crash or the OOM killer would have it."""
    job.progress(10, "about to die")
    os.kill(os.getpid(), signal.SIGKILL)


@registry.kind("not_a_number", params=NoParams)
def not_a_number(params: NoParams, job: JobContext) -> dict[str, float]:
    return {"score": float("nan")}


# A time limit longer than the visibility timeout a test asks for: refused at start.
registry.kind("long", params=DemoParams, soft_time_limit=14, time_limit=15)(demo)


@registry.kind("stubborn", params=NoParams, soft_time_limit=2, time_limit=3)
def stubborn(params: NoParams, job: JobContext) -> None:
    """Swallows its soft time limit and carries on, so only the hard limit can stop it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            job.progress(50, "ignoring the soft time limit")
