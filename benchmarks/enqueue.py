"""Enqueue overhead: our `POST /api/jobs/demo` against a bare FastAPI endpoint calling apply_async.

Both are served by uvicorn with the same worker count, options and log level, publishing to the
same Redis: ours by the stack's api role (one SO_REUSEPORT socket per worker), bare by uvicorn's
own `--workers` (one shared socket), as a team without the stack runs it. No worker consumes:
this measures the API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import httpload
from benchmarks.cpu import CpuMeter, describe
from loadtests import stackproc
from stack import roles
from stack.config import load_settings

log = logging.getLogger(__name__)

BARE_FACTORY = "benchmarks.bare:create_bare_app_from_env"


@dataclass(frozen=True)
class EnqueuePlan:
    sequential: int = 1000
    rate: float = 200.0
    rate_seconds: float = 10.0
    peak_connections: int = 16
    peak_seconds: float = 8.0
    warmup: int = 300


@dataclass
class EnqueueFigures:
    name: str
    sequential: httpload.LoadResult
    at_rate: httpload.LoadResult
    peak: httpload.LoadResult
    peak_cpu: dict[str, float] = field(default_factory=dict)  # µs per submit at the peak, by group


def api_argv(
    *, port: int, web_concurrency: int, log_level: str, factory: str | None = None, balanced: bool = True
) -> list[str]:
    """The api role's uvicorn command line; `factory` swaps in another app and `balanced=False`
    uvicorn's own `--workers` (one shared socket) for ours, nothing else changes."""
    settings = load_settings(port=port, web_concurrency=web_concurrency, log_level=log_level)
    argv = roles.api(settings, reuseport=None if balanced else False).argv
    if factory is not None:
        argv = [factory if part == roles.API_FACTORY else part for part in argv]
    return argv


def start_bare_api(stack: stackproc.StackEnv, *, port: int, log_dir: Path) -> stackproc.StackProcess:
    """The bare app as a team runs it without the stack: `uvicorn --workers N`, whose workers share
    one listening socket (issue #14 compares our balanced workers against that)."""
    argv = api_argv(
        port=port,
        web_concurrency=stack.web_concurrency,
        log_level=stack.log_level,
        factory=BARE_FACTORY,
        balanced=False,
    )
    return stackproc.start_api(stack, port=port, log_dir=log_dir, name="bare-api", argv=argv)


def measure(name: str, request: httpload.Request, plan: EnqueuePlan) -> EnqueueFigures:
    run = httpload.run
    run(httpload.closed_loop(request, connections=4, count=plan.warmup, max_seconds=20))
    sequential = run(httpload.sequential(request, count=plan.sequential, max_seconds=60))
    at_rate = run(httpload.open_loop(request, rate=plan.rate, duration=plan.rate_seconds))
    with CpuMeter() as meter:
        peak = run(
            httpload.closed_loop(
                request,
                connections=plan.peak_connections,
                count=int(plan.peak_seconds * 5000),
                max_seconds=plan.peak_seconds,
            )
        )
    peak_cpu = meter.per_operation(peak.count)
    log.info(
        "%s: sequential p50 %.2f ms, peak %.0f/s (%s per submit)",
        name,
        sequential.percentile(50) * 1e3,
        peak.rate,
        describe(peak_cpu),
    )
    return EnqueueFigures(name=name, sequential=sequential, at_rate=at_rate, peak=peak, peak_cpu=peak_cpu)


def run_enqueue(
    *, ours: stackproc.StackEnv, bare: stackproc.StackEnv, log_dir: Path, plan: EnqueuePlan
) -> tuple[EnqueueFigures, EnqueueFigures]:
    port = stackproc.free_port()
    with stackproc.running(lambda: stackproc.start_api(ours, port=port, log_dir=log_dir)):
        request = httpload.Request("POST", "127.0.0.1", port, "/api/jobs/demo", {"seconds": 0, "steps": 1})
        ours_figures = measure("ours", request, plan)
    port = stackproc.free_port()
    with stackproc.running(lambda: start_bare_api(bare, port=port, log_dir=log_dir)):
        request = httpload.Request("POST", "127.0.0.1", port, "/enqueue", None)
        bare_figures = measure("bare", request, plan)
    return ours_figures, bare_figures
