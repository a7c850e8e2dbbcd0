"""A configurable demo job: sleeps in steps, and fails on request, for trying the plumbing."""

from __future__ import annotations

import time
from typing import Any

from app.params import DemoParams
from stack.jobs.registry import JobContext, TransientError


def demo(params: DemoParams, job: JobContext) -> dict[str, Any]:
    """Sleep `seconds` in `steps`, reporting progress after each step.

    `transient_failures=n` fails attempts 1..n with TransientError (so retries are exercised);
    `fail_at=i` fails for good at step i.
    """
    if job.attempt <= params.transient_failures:
        raise TransientError(f"transient failure {job.attempt}/{params.transient_failures}")
    pause = params.seconds / params.steps
    for step in range(1, params.steps + 1):
        if pause:  # seconds=0: pure plumbing, as the drain benchmark uses it
            time.sleep(pause)
        if params.fail_at == step:
            raise RuntimeError(f"demo failed at step {step} as asked (fail_at={params.fail_at})")
        job.progress(round(100 * step / params.steps), f"{params.message} {step}/{params.steps}")
    return {"steps": params.steps, "seconds": params.seconds, "attempt": job.attempt}
