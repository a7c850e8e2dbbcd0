"""Async vs inline, measured: `python -m loadtests.compare [--duration 40 --users 30 ...]`.

Starts its own Redis and PostgreSQL, then the stack twice on free ports: once async (API +
workers), once inline (CELERY_ENABLED=false, the same API worker count), each on its own fresh
database; runs the same headless locust load on each; and writes into loadtests/out/<timestamp>/
a Markdown report (figures, ratios, targets, the seeds' claims), a PNG chart and locust's CSVs.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from loadtests import cpu, locustcsv, machine, servers, stackproc
from loadtests.options import LoadOptions
from loadtests.report import Comparison, DbUse, LoadShape, ModeResult, render_markdown, targets

log = logging.getLogger("loadtests.compare")

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "generate.py"
USER_CLASS = {"async": "AsyncJobUser", "inline": "InlineJobUser"}


def pool_capacity() -> int:
    """Connections one stack process may open: the engine's pool_size + max_overflow."""
    from stack.db import make_engine

    params = inspect.signature(make_engine).parameters
    return int(params["pool_size"].default) + int(params["max_overflow"].default)


@dataclass(frozen=True)
class Plan:
    shape: LoadShape
    poll_interval: float
    out_dir: Path
    start_timeout: float

    def load_options(self) -> LoadOptions:
        s = self.shape
        return LoadOptions(
            kind="demo",
            params={"seconds": s.work_seconds, "steps": s.steps},
            # Followed jobs never time out during the run: a backlog is reported, not failed.
            job_timeout=s.duration + 60,
            poll_interval=self.poll_interval,
            submit_rate=s.submit_rate,
            track="background",
            max_tracked=1,
        )


def locust_argv(plan: Plan, *, mode: str, host: str, csv_prefix: Path) -> list[str]:
    s = plan.shape
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(s.users),
        "--spawn-rate",
        f"{s.spawn_rate:g}",
        "--run-time",
        f"{s.duration:g}s",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--csv-full-history",
        "--only-summary",
        "--stop-timeout",
        "5",
        "--loglevel",
        "WARNING",
        *plan.load_options().as_args(),
        USER_CLASS[mode],
    ]


def run_locust(argv: list[str], *, log_path: Path, timeout: float) -> None:
    with open(log_path, "wb") as out:
        try:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise stackproc.StackProcessError(
                f"locust did not finish within {timeout:g} s; see {log_path}"
            ) from None
    # 1 means "some requests failed", which the report shows; anything else is locust itself failing.
    if result.returncode not in (0, 1):
        raise stackproc.StackProcessError(f"locust exited with code {result.returncode}; see {log_path}")


def run_mode(mode: str, plan: Plan, srv: servers.Servers) -> ModeResult:
    s = plan.shape
    database_url = srv.new_database(f"load_{mode}")
    database = database_url.rsplit("/", 1)[1]
    api_env = stackproc.StackEnv(
        redis_url=srv.redis_db(),
        database_url=servers.as_role(database_url, servers.API_ROLE),
        data_dir=plan.out_dir / f"data-{mode}",
        celery_enabled=mode == "async",
        web_concurrency=s.web_concurrency,
        worker_concurrency=s.worker_concurrency,
        worker_pool=s.worker_pool,
    )
    worker_env = replace(api_env, database_url=servers.as_role(database_url, servers.WORKER_ROLE))
    port = stackproc.free_port()
    logs = plan.out_dir / "logs"
    factories = [
        lambda: stackproc.start_api(
            api_env, port=port, log_dir=logs, name=f"api-{mode}", timeout=plan.start_timeout
        )
    ]
    if mode == "async":
        factories.append(
            lambda: stackproc.start_worker(
                worker_env, log_dir=logs, name=f"worker-{mode}", timeout=plan.start_timeout
            )
        )
    prefix = plan.out_dir / mode
    with stackproc.running(*factories) as procs:
        log.info("%s: stack up on port %d; load for %g s", mode, port, s.duration)
        meter = cpu.CpuMeter(
            {
                "api": procs[0].pid,
                "workers": procs[1].pid if len(procs) > 1 else None,
                "postgres": srv.postgres.pid,
                "redis": srv.redis.pid,
            }
        )
        with servers.ConnectionSampler(srv.postgres.url, database) as sampler:
            meter.start()
            started = time.time()
            run_locust(
                locust_argv(plan, mode=mode, host=f"http://127.0.0.1:{port}", csv_prefix=prefix),
                log_path=logs / f"locust-{mode}.log",
                timeout=s.duration + 120,
            )
            ended = time.time()
            cpu_used = meter.stop(waited_child="locust")
        counts = servers.job_counts(srv.postgres.url, database, since=started)
    if sampler.error is not None:
        log.warning("%s: connection sampling failed: %s", mode, sampler.error)
    stats = locustcsv.read_stats(Path(f"{prefix}_stats.csv"))
    submit_name = "POST /api/jobs/demo"
    if submit_name not in stats:
        raise stackproc.StackProcessError(
            f"{mode}: locust recorded no {submit_name}; see {logs}/locust-{mode}.log"
        )
    capacity = pool_capacity()
    peak = sampler.peak
    backlog = sum(n for status, n in counts.items() if status in ("pending", "started", "progress", "retry"))
    return ModeResult(
        mode=mode,
        submit=stats[submit_name],
        total=stats[locustcsv.AGGREGATED],
        end_to_end=stats.get("demo end-to-end"),
        duration=min(s.duration, ended - started),
        completed_jobs=counts.get("finished_since", 0),
        api_db=DbUse(
            peak_in_use=peak.in_use.get(servers.API_ROLE, 0),
            peak_open=peak.open.get(servers.API_ROLE, 0),
            capacity=capacity * s.web_concurrency,
        ),
        worker_db=DbUse(
            peak_in_use=peak.in_use.get(servers.WORKER_ROLE, 0),
            peak_open=peak.open.get(servers.WORKER_ROLE, 0),
            # One engine per worker process: prefork has `concurrency` processes, threads one.
            capacity=capacity * (s.worker_concurrency if s.worker_pool == "prefork" else 1),
        )
        if mode == "async"
        else None,
        backlog=backlog,
        failures=locustcsv.read_failures(Path(f"{prefix}_failures.csv")),
        cpu_seconds={name: used for name, used in cpu_used.items() if mode == "async" or name != "workers"},
        wall_seconds=ended - started,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.compare",
        description="Measure the stack async (API + workers) against inline (CELERY_ENABLED=false) "
        "under the same locust load, and report the ratios next to the seeds' claims.",
    )
    parser.add_argument("--users", type=int, default=20, help="locust users per mode [20]")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second [10]")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load per mode [40]")
    parser.add_argument("--work", type=float, default=2.0, help="W: seconds of simulated work per job [2]")
    parser.add_argument("--steps", type=int, default=10, help="progress steps per job [10]")
    parser.add_argument(
        "--submit-rate",
        type=float,
        default=6.0,
        help="submits per second per user; inline users are held back by W anyway [6]",
    )
    parser.add_argument(
        "--web-concurrency", type=int, default=2, help="API (uvicorn) workers, both modes [2]"
    )
    parser.add_argument("--worker-pool", default="threads", help="Celery pool of the async workers [threads]")
    parser.add_argument("--worker-concurrency", type=int, default=16, help="Celery worker slots [16]")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="status poll interval of users [1]")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="parent of the timestamped output dir")
    parser.add_argument(
        "--start-timeout", type=float, default=90.0, help="seconds for each process to be ready"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with 3 when a target of issue #4 is missed"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def plan_from_args(args: argparse.Namespace) -> Plan:
    for name in ("users", "steps", "web_concurrency", "worker_concurrency"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("duration", "spawn_rate", "poll_interval"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    if args.work < 0 or args.submit_rate < 0:
        raise SystemExit("--work and --submit-rate must not be negative")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Plan(
        shape=LoadShape(
            users=args.users,
            spawn_rate=args.spawn_rate,
            duration=args.duration,
            work_seconds=args.work,
            steps=args.steps,
            submit_rate=args.submit_rate,
            web_concurrency=args.web_concurrency,
            worker_concurrency=args.worker_concurrency,
            worker_pool=args.worker_pool,
        ),
        poll_interval=args.poll_interval,
        out_dir=args.out / stamp,
        start_timeout=args.start_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    plan = plan_from_args(args)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    state = machine.probe()
    log.info("machine: %s", state.describe())
    try:
        with servers.local_servers() as srv:
            log.info("redis %s, postgres %s", srv.redis.url, srv.postgres.url)
            results = {mode: run_mode(mode, plan, srv) for mode in ("async", "inline")}
    except (stackproc.StackProcessError, servers.ServerError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 1
    comparison = Comparison(
        shape=plan.shape, async_=results["async"], inline=results["inline"], machine=state.describe()
    )
    from loadtests.chart import write_chart

    history = {
        mode: locustcsv.read_history(plan.out_dir / f"{mode}_stats_history.csv")
        for mode in ("async", "inline")
    }
    chart = write_chart(comparison, plan.out_dir / "comparison.png", history=history)
    files = [*sorted(p.name for p in plan.out_dir.glob("*.csv")), chart.name, "logs/"]
    report = plan.out_dir / "report.md"
    report.write_text(render_markdown(comparison, files=files))
    print(report.read_text())
    print(f"wrote {report} and {chart} in {time.monotonic() - began:.0f} s")
    if args.strict and not all(check.passed for check in targets(comparison)):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
