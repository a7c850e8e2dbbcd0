"""Micro-benchmarks of the job layer against bare FastAPI + Celery, side by side in one run.

    python -m benchmarks            # or: python benchmarks/run.py
    python -m benchmarks --runs 5   # the figures of issue #14: medians of 5 runs, spreads
    python -m benchmarks --only enqueue --rate 300 --peak-seconds 15

Starts its own Redis and PostgreSQL (never the machine's), then, one at a time:

- enqueue: our `POST /api/jobs/demo` against a bare FastAPI endpoint calling `apply_async`,
  one request at a time, at an offered rate, and at the peak (closed loop);
- drain: N `demo` jobs with 0 s of work through our worker against N bare no-op tasks;
- progress: the cost of one `progress()` call inside a task;
- roundtrip: the 0→100 time of a job with no work, submit to success seen by a poller, ours
  against a bare status endpoint polling Celery's result backend.

`--runs N` repeats all of it N times (the servers are shared, each part's processes, database and
Redis db are fresh every run) and prints, per figure, the median of the runs, its spread and
every run's value, then the targets of issues #4 and #14 with pass/MISS.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.figures import BenchFigures
from benchmarks.summary import render, summarize
from benchmarks.targets import render_targets
from loadtests import machine, servers, stackproc

log = logging.getLogger("benchmarks")

PARTS = ("enqueue", "drain", "progress", "roundtrip")


@dataclass(frozen=True)
class Args:
    only: tuple[str, ...]
    runs: int
    web_concurrency: int
    worker_concurrency: int
    worker_pool: str
    sequential: int
    rate: float
    rate_seconds: float
    peak_connections: int
    peak_seconds: float
    drain_jobs: int
    steps: int
    progress_calls: int
    roundtrips: int
    out: Path
    json_path: Path | None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--runs", type=int, default=1, help="repeat the measurement; figures are medians [1]")
    p.add_argument("--web-concurrency", type=int, default=2, help="uvicorn workers of both APIs [2]")
    p.add_argument("--worker-concurrency", type=int, default=2, help="Celery slots of both workers [2]")
    p.add_argument("--worker-pool", default="prefork", help="Celery pool of both workers [prefork]")
    p.add_argument("--sequential", type=int, default=1000, help="requests sent one at a time [1000]")
    p.add_argument("--rate", type=float, default=200.0, help="offered submits/s of the open loop [200]")
    p.add_argument("--rate-seconds", type=float, default=10.0, help="duration of the open loop [10]")
    p.add_argument("--peak-connections", type=int, default=16, help="closed-loop clients for the peak [16]")
    p.add_argument("--peak-seconds", type=float, default=8.0, help="duration of the peak run [8]")
    p.add_argument("--drain-jobs", type=int, default=1000, help="jobs (and no-op tasks) drained [1000]")
    p.add_argument("--steps", type=int, default=10, help="progress steps of each drained demo job [10]")
    p.add_argument("--progress-calls", type=int, default=500, help="progress() calls timed [500]")
    p.add_argument("--roundtrips", type=int, default=200, help="0→100 roundtrips timed, one at a time [200]")
    p.add_argument("--out", type=Path, default=Path("loadtests/out/benchmarks"), help="logs of the processes")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse_args(argv: list[str] | None) -> tuple[Args, bool]:
    ns = build_parser().parse_args(argv)
    only = tuple(part.strip() for part in ns.only.split(",") if part.strip())
    unknown = [part for part in only if part not in PARTS]
    if unknown or not only:
        raise SystemExit(f"--only takes a subset of {','.join(PARTS)}; got {ns.only!r}")
    for name in (
        "runs",
        "web_concurrency",
        "worker_concurrency",
        "sequential",
        "peak_connections",
        "drain_jobs",
        "progress_calls",
        "roundtrips",
    ):
        if getattr(ns, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("rate", "rate_seconds", "peak_seconds"):
        if getattr(ns, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    args = Args(
        only=only,
        runs=ns.runs,
        web_concurrency=ns.web_concurrency,
        worker_concurrency=ns.worker_concurrency,
        worker_pool=ns.worker_pool,
        sequential=ns.sequential,
        rate=ns.rate,
        rate_seconds=ns.rate_seconds,
        peak_connections=ns.peak_connections,
        peak_seconds=ns.peak_seconds,
        drain_jobs=ns.drain_jobs,
        steps=ns.steps,
        progress_calls=ns.progress_calls,
        roundtrips=ns.roundtrips,
        out=ns.out,
        json_path=ns.json,
    )
    return args, ns.verbose


def measure(args: Args) -> list[BenchFigures]:
    """`args.runs` runs on one pair of servers."""
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[BenchFigures] = []
    with servers.local_servers() as srv:
        for run in range(1, args.runs + 1):
            log.info("run %d of %d", run, args.runs)
            runs.append(measure_once(args, srv))
    return runs


def measure_once(args: Args, srv: servers.Servers) -> BenchFigures:
    from benchmarks.drain import run_drain
    from benchmarks.enqueue import EnqueuePlan, run_enqueue
    from benchmarks.progress import run_progress
    from benchmarks.roundtrip import run_roundtrip

    figures = BenchFigures(web_concurrency=args.web_concurrency, worker_concurrency=args.worker_concurrency)
    redis_dbs: list[str] = []

    def stack_env(name: str) -> stackproc.StackEnv:
        # A fresh, migrated database and Redis db per part: no part measures another's leftovers.
        redis_dbs.append(srv.redis_db())
        env = stackproc.StackEnv(
            redis_url=redis_dbs[-1],
            database_url=servers.as_role(srv.new_database(f"bench_{name}"), servers.API_ROLE),
            data_dir=args.out / "data",
            web_concurrency=args.web_concurrency,
            worker_concurrency=args.worker_concurrency,
            worker_pool=args.worker_pool,
        )
        stackproc.migrate(env, log_dir=args.out)
        return env

    try:
        if "enqueue" in args.only:
            plan = EnqueuePlan(
                sequential=args.sequential,
                rate=args.rate,
                rate_seconds=args.rate_seconds,
                peak_connections=args.peak_connections,
                peak_seconds=args.peak_seconds,
            )
            log.info("enqueue: ours and bare in interleaved rounds")
            figures.enqueue = run_enqueue(
                ours=stack_env("enqueue"), bare=stack_env("enqueue_bare"), log_dir=args.out, plan=plan
            )
        if "drain" in args.only:
            log.info("drain: %d jobs through ours and bare, in interleaved rounds", args.drain_jobs)
            figures.drain = run_drain(
                stack=stack_env("drain"),
                bare=stack_env("drain_bare"),
                log_dir=args.out,
                count=args.drain_jobs,
                steps=args.steps,
                timeout=max(60.0, args.drain_jobs / 5),
            )
        if "progress" in args.only:
            log.info("progress: %d calls", args.progress_calls)
            figures.progress = run_progress(stack=stack_env("progress"), calls=args.progress_calls)
        if "roundtrip" in args.only:
            log.info("roundtrip: %d jobs of no work through ours, then bare", args.roundtrips)
            figures.roundtrip = run_roundtrip(
                ours=stack_env("roundtrip"),
                bare=stack_env("roundtrip_bare"),
                log_dir=args.out,
                count=args.roundtrips,
            )
    finally:
        # The server has 16 logical databases; five runs of every part would need more.
        for url in redis_dbs:
            srv.redis.release_db(url)
    return figures


def main(argv: list[str] | None = None) -> int:
    args, verbose = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("kombu.mixins").setLevel(logging.WARNING)  # "Connected to ..." per drain
    began = time.monotonic()
    state = machine.probe()
    try:
        runs = measure(args)
    except (stackproc.StackProcessError, servers.ServerError, RuntimeError) as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 1
    series = summarize(runs)
    checks_text, met, total = render_targets(series)
    print(f"Machine: {state.describe()}\n")
    print(render(series, runs=len(runs)))
    print(f"\n{checks_text}\n\n{met}/{total} targets met in {time.monotonic() - began:.0f} s")
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "machine": state.describe(),
            "runs": [run.as_dict() for run in runs],
            "figures": {key: s.as_dict() for key, s in series.items()},
            "targets": checks_text.splitlines(),
        }
        # NaN (a figure a run could not measure) is not JSON: null.
        args.json_path.write_text(json.dumps(_nan_to_none(document), indent=2))
    return 0


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
