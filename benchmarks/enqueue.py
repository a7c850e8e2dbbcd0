"""Enqueue overhead: our `POST /api/jobs/demo` against a bare FastAPI endpoint calling apply_async.

Both are served by uvicorn with the same worker count, options and log level, publishing to the
same Redis: ours by the stack's api role (one SO_REUSEPORT socket per worker), bare by uvicorn's
own `--workers` (one shared socket), as a team without the stack runs it. No worker consumes:
this measures the API. Both servers run side by side; each load is measured in interleaved rounds
(benchmarks.rounds), the idle server's CPU left out of the peak's.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import httpload
from benchmarks.cpu import CpuMeter, describe, per_operation, process_trees
from benchmarks.rounds import ROUNDS, interleave, rounds_of, share
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


@dataclass
class EnqueueSide:
    """One side: the request it answers and its running API server."""

    name: str
    request: httpload.Request
    api: stackproc.StackProcess


# One at a time in 20 rounds a side (50 requests each, of the default 1,000): the VM's hiccups
# last a fraction of a second, and in 2 rounds a side one could double a side's p50. On the same
# two servers, alternated, the ratio read 1.04-1.27 in 2 rounds a side and 1.08-1.12 in 20.
# Taking turns request by request was steadier still but measured another thing: a server woken
# from idle every time (p50s up by 40 % on both sides). The peak runs in 4 rounds a side: each
# draws anew how the kernel hands bare's shared socket out, and the drift is cut finer.
SEQUENTIAL_ROUNDS = ROUNDS * 10
PEAK_ROUNDS = ROUNDS * 2


def measure(sides: dict[str, EnqueueSide], plan: EnqueuePlan) -> dict[str, EnqueueFigures]:
    """Each load on every side, in interleaved rounds (benchmarks.rounds), after a warm-up."""
    run = httpload.run
    for side in sides.values():
        run(httpload.closed_loop(side.request, connections=4, count=plan.warmup, max_seconds=20))

    def sequential(name: str, index: int) -> httpload.LoadResult:
        count = share(plan.sequential, name, index, SEQUENTIAL_ROUNDS)
        return run(httpload.sequential(sides[name].request, count=count, max_seconds=60))

    def at_rate(name: str, index: int) -> httpload.LoadResult:
        seconds = plan.rate_seconds / rounds_of(name)
        return run(httpload.open_loop(sides[name].request, rate=plan.rate, duration=seconds))

    cpu_seconds: dict[str, Counter[str]] = {name: Counter() for name in sides}

    def peak(name: str, index: int) -> httpload.LoadResult:
        seconds = plan.peak_seconds / rounds_of(name, PEAK_ROUNDS)
        idle = process_trees(side.api.pid for side in sides.values() if side.name != name)
        with CpuMeter(exclude=idle) as meter:
            loop = httpload.closed_loop(
                sides[name].request,
                connections=plan.peak_connections,
                count=int(seconds * 5000),
                max_seconds=seconds,
            )
            result = run(loop)
        cpu_seconds[name].update(meter.seconds)
        return result

    loads = {
        load: {
            name: httpload.LoadResult.merged(results)
            for name, results in interleave(measure_round, rounds).items()
        }
        for load, measure_round, rounds in (
            ("sequential", sequential, SEQUENTIAL_ROUNDS),
            ("at_rate", at_rate, ROUNDS),
            ("peak", peak, PEAK_ROUNDS),
        )
    }
    figures: dict[str, EnqueueFigures] = {}
    for name in sides:
        peak_result = loads["peak"][name]
        figures[name] = EnqueueFigures(
            name=name,
            sequential=loads["sequential"][name],
            at_rate=loads["at_rate"][name],
            peak=peak_result,
            peak_cpu=per_operation(cpu_seconds[name], peak_result.count),
        )
        log.info(
            "%s: sequential p50 %.2f ms, peak %.0f/s (%s per submit)",
            name,
            figures[name].sequential.percentile(50) * 1e3,
            peak_result.rate,
            describe(figures[name].peak_cpu),
        )
    return figures


def run_enqueue(
    *, ours: stackproc.StackEnv, bare: stackproc.StackEnv, log_dir: Path, plan: EnqueuePlan
) -> tuple[EnqueueFigures, EnqueueFigures]:
    sides: dict[str, EnqueueSide] = {}

    def start(name: str, path: str, body: dict[str, Any] | None) -> stackproc.StackProcess:
        port = stackproc.free_port()  # once the other server listens: never the same port
        if name == "ours":
            api = stackproc.start_api(ours, port=port, log_dir=log_dir)
        else:
            api = start_bare_api(bare, port=port, log_dir=log_dir)
        sides[name] = EnqueueSide(name, httpload.Request("POST", "127.0.0.1", port, path, body), api)
        return api

    with stackproc.running(
        lambda: start("ours", "/api/jobs/demo", {"seconds": 0, "steps": 1}),
        lambda: start("bare", "/enqueue", None),
    ):
        figures = measure(sides, plan)
    return figures["ours"], figures["bare"]
