"""SSE fan-out: thousands of event streams on ONE API process, and how late their events arrive.

    python -m benchmarks.sse                                  # 200 jobs x 10 clients = 2,000 streams
    python -m benchmarks.sse --jobs 2000 --clients-per-job 1 --rate 400

Starts its own Redis and PostgreSQL (never the machine's) and one API process (`stack run api`,
WEB_CONCURRENCY=1, no worker: the jobs stay pending, so nothing but this benchmark publishes).
Loader processes open the streams over raw asyncio sockets and wait for each one's first event.
Then this process PUBLISHes progress events straight to `stack:jobs:<id>`, each carrying its
send time (CLOCK_MONOTONIC, which all processes of the machine share):

- spread: `--rounds` rounds, one event per job per round, paced at `--rate` publishes/s;
- burst: `--burst-rounds` rounds where every job publishes at once (the worst case: every
  stream has an event to write in the same instant).

Every client records publish -> receipt for each event; the figures are over all of them. Also:
the Redis connections the API process holds and its open files, with no stream and with all of
them open, and whether one stream past STACK_SSE_MAX_STREAMS gets 503 + Retry-After.
Everything listens on 127.0.0.1; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

if __package__ in (None, ""):  # `python benchmarks/sse.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import machine, servers, stackproc

log = logging.getLogger("benchmarks.sse")

STAMP = re.compile(rb'"message": "t=([0-9.]+)"')
CONNECTING_AT_ONCE = 64  # per loader: the API's accept queue and threadpool are not the subject


@dataclass(frozen=True)
class Args:
    jobs: int
    clients_per_job: int
    loaders: int
    rounds: int
    rate: float
    burst_rounds: int
    ready_timeout: float
    quiet_seconds: float
    out: Path
    json_path: Path | None

    @property
    def clients(self) -> int:
        return self.jobs * self.clients_per_job


def parse_args(argv: list[str] | None) -> tuple[Args, bool]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sse", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200, help="jobs watched [200]")
    p.add_argument("--clients-per-job", type=int, default=10, help="streams per job [10]")
    p.add_argument("--loaders", type=int, default=2, help="client processes [2]")
    p.add_argument("--rounds", type=int, default=10, help="spread rounds: one event per job each [10]")
    p.add_argument("--rate", type=float, default=200.0, help="publishes/s of the spread rounds [200]")
    p.add_argument("--burst-rounds", type=int, default=3, help="rounds where every job publishes at once [3]")
    p.add_argument("--quiet-seconds", type=float, default=10.0, help="streams left quiet, CPU measured [10]")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to open every stream [180]")
    p.add_argument("--out", type=Path, default=Path("loadtests/out/sse"), help="logs of the processes")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    ns = p.parse_args(argv)
    for name in ("jobs", "clients_per_job", "loaders", "rounds"):
        if getattr(ns, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if ns.rate <= 0 or ns.burst_rounds < 0:
        raise SystemExit("--rate must be positive and --burst-rounds at least 0")
    args = Args(
        jobs=ns.jobs,
        clients_per_job=ns.clients_per_job,
        loaders=ns.loaders,
        rounds=ns.rounds,
        rate=ns.rate,
        burst_rounds=ns.burst_rounds,
        ready_timeout=ns.ready_timeout,
        quiet_seconds=ns.quiet_seconds,
        out=ns.out,
        json_path=ns.json,
    )
    return args, ns.verbose


def raise_file_limit() -> int:
    """Thousands of sockets in one process: lift the soft limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = hard if hard != resource.RLIM_INFINITY else 1 << 16
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --- the client side: one loader process, many streams -------------------------------------------


@dataclass
class LoaderStats:
    opened: int = 0
    refused: int = 0
    failed: int = 0
    lost: int = 0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (sent at, delay)


class StreamClient(asyncio.Protocol):
    """One SSE stream read off a raw socket: the first event marks it ready; every stamp after it
    is a (sent, delay) sample taken the moment the bytes arrive."""

    def __init__(self, request: bytes, stats: LoaderStats, ready: asyncio.Future[bool]) -> None:
        self.request, self.stats, self.ready = request, stats, ready
        self.buffer = b""
        self.header_done = False
        self.closing = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.header_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if self.buffer[9:12] != b"200":
                self.stats.refused += 1
                self._settle(False)
                if self.transport is not None:
                    self.transport.close()
                return
            self.header_done, self.buffer = True, self.buffer[end + 4 :]
        cut = self.buffer.rfind(b"\n\n")  # complete SSE frames only (chunk framing is skipped)
        if cut < 0:
            return
        frames, self.buffer = self.buffer[:cut], self.buffer[cut + 2 :]
        if not self.ready.done() and b"event: job" in frames:
            self.stats.opened += 1
            self._settle(True)
        for match in STAMP.finditer(frames):
            sent = float(match.group(1))
            self.stats.samples.append((sent, now - sent))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing and self.header_done:
            self.stats.lost += 1
        self._settle(False)

    def _settle(self, ok: bool) -> None:
        if not self.ready.done():
            self.ready.set_result(ok)


async def run_loader(conn: Connection, port: int, job_ids: list[str]) -> None:
    loop = asyncio.get_running_loop()
    stats = LoaderStats()
    clients: list[StreamClient] = []
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def open_one(job_id: str) -> None:
        request = (
            f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        async with gate:
            ready: asyncio.Future[bool] = loop.create_future()
            try:
                _, client = await loop.create_connection(
                    lambda: StreamClient(request, stats, ready), "127.0.0.1", port
                )
                clients.append(client)
                await asyncio.wait_for(ready, timeout=60)
            except (OSError, TimeoutError):
                stats.failed += 1

    await asyncio.gather(*(open_one(job_id) for job_id in job_ids))
    conn.send(("ready", stats.opened, stats.refused, stats.failed))
    await loop.run_in_executor(None, conn.recv)  # "stop"
    for client in clients:
        client.closing = True
        if client.transport is not None:
            client.transport.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(("done", stats.samples, stats.lost, usage.ru_utime + usage.ru_stime))


def loader_main(conn: Connection, port: int, job_ids: list[str]) -> None:
    raise_file_limit()
    try:
        import uvloop  # the client's own loop must not be what is measured

        uvloop.run(run_loader(conn, port, job_ids))
    except ImportError:
        asyncio.run(run_loader(conn, port, job_ids))


# --- the server side -------------------------------------------------------------------------------


@dataclass
class ApiSample:
    redis_connections: int  # TCP connections of the API process to the benchmark's Redis
    hub_connections: int  # of them, named stack-api-events in CLIENT LIST
    open_files: int


def api_process(pid: int, port: int) -> Any:
    """The process that listens on `port`: `stack run api` execs uvicorn, but do not rely on it."""
    import psutil

    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            if any(c.laddr.port == port and c.status == "LISTEN" for c in proc.net_connections("tcp")):
                return proc
        except psutil.Error:
            continue
    return root


def sample_api(proc: Any, redis_client: Any, redis_port: int) -> ApiSample:
    from stack.jobs.fanout import CLIENT_NAME

    conns = [c for c in proc.net_connections("tcp") if c.raddr and c.raddr.port == redis_port]
    ours = {f"{c.laddr.ip}:{c.laddr.port}" for c in conns}
    named = sum(
        1 for c in redis_client.client_list() if c.get("addr") in ours and c.get("name") == CLIENT_NAME
    )
    return ApiSample(redis_connections=len(conns), hub_connections=named, open_files=proc.num_fds())


def create_jobs(base: str, count: int) -> list[str]:
    import httpx

    with httpx.Client(base_url=base, timeout=30) as client:
        ids = []
        for _ in range(count):
            response = client.post("/api/jobs/demo", json={"seconds": 0, "steps": 1})
            response.raise_for_status()
            ids.append(response.json()["task_id"])
    return ids


def publish_rounds(redis_client: Any, job_ids: list[str], *, args: Args) -> dict[str, tuple[float, float]]:
    """Publish every round; returns each phase's (first send, last send) window."""
    from stack.jobs.events import channel_for

    def send(job_id: str, progress: int) -> None:
        event = {"status": "progress", "progress": progress, "message": f"t={time.monotonic():.6f}"}
        redis_client.publish(channel_for(job_id, prefix=stackproc.STACK_PREFIX), json.dumps(event))

    windows: dict[str, tuple[float, float]] = {}
    gap = 1.0 / args.rate
    began = time.monotonic()
    for r in range(args.rounds):
        for j, job_id in enumerate(job_ids):
            due = began + (r * len(job_ids) + j) * gap
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            send(job_id, r + 1)
    windows["spread"] = (began, time.monotonic())
    time.sleep(2.0)  # let the spread phase drain before the bursts
    began = time.monotonic()
    for r in range(args.burst_rounds):
        pipe = redis_client.pipeline(transaction=False)
        for job_id in job_ids:
            event = {
                "status": "progress",
                "progress": args.rounds + r + 1,
                "message": f"t={time.monotonic():.6f}",
            }
            pipe.publish(channel_for(job_id, prefix=stackproc.STACK_PREFIX), json.dumps(event))
        pipe.execute()
        time.sleep(2.0)
    windows["burst"] = (began, time.monotonic())
    return windows


@dataclass
class Figures:
    clients: int
    jobs: int
    opened: int = 0
    refused: int = 0
    failed: int = 0
    lost: int = 0
    over_cap: str = ""
    idle: ApiSample | None = None
    loaded: ApiSample | None = None
    delays: dict[str, list[float]] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    api_cpu: float = 0.0
    quiet_cpu: float = 0.0
    loader_cpu: float = 0.0
    publish_seconds: float = 0.0


def measure(args: Args) -> Figures:
    import httpx
    import redis

    figures = Figures(clients=args.clients, jobs=args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    with servers.local_servers() as srv:
        redis_url = srv.redis_db()
        env = stackproc.StackEnv(
            redis_url=redis_url,
            database_url=servers.as_role(srv.new_database("bench_sse"), servers.API_ROLE),
            data_dir=args.out / "data",
            web_concurrency=1,
            extra={
                "STACK_SSE_MAX_STREAMS": str(args.clients),  # exactly full: one more must be refused
                "STACK_SSE_MAX_SECONDS": "3600",  # no stream may end mid-measurement
                "STACK_AUTH": "none",  # 127.0.0.1 only
            },
        )
        port = stackproc.free_port()
        redis_port = urlsplit(redis_url).port or 6379
        rc = redis.Redis.from_url(redis_url)
        with stackproc.running(lambda: stackproc.start_api(env, port=port, log_dir=args.out)) as (api,):
            assert api.pid is not None
            proc = api_process(api.pid, port)
            base = f"http://127.0.0.1:{port}"
            job_ids = create_jobs(base, args.jobs)
            figures.idle = sample_api(proc, rc, redis_port)
            targets = [job_id for job_id in job_ids for _ in range(args.clients_per_job)]
            shares = [targets[i :: args.loaders] for i in range(args.loaders)]
            ctx = multiprocessing.get_context("spawn")
            pipes, loaders = [], []
            for share in shares:
                parent, child = ctx.Pipe()
                loader = ctx.Process(target=loader_main, args=(child, port, share), daemon=True)
                loader.start()
                pipes.append(parent)
                loaders.append(loader)
            try:
                log.info(
                    "opening %d streams on %d jobs from %d loaders", args.clients, args.jobs, args.loaders
                )
                for parent in pipes:
                    if not parent.poll(args.ready_timeout):
                        raise RuntimeError(f"streams not open after {args.ready_timeout:g} s")
                    _, opened, refused, failed = parent.recv()
                    figures.opened += opened
                    figures.refused += refused
                    figures.failed += failed
                figures.loaded = sample_api(proc, rc, redis_port)
                # Quiet streams cost too: each re-reads its row every few seconds and sends keep-alives.
                cpu_before = sum(proc.cpu_times()[:2])
                time.sleep(args.quiet_seconds)
                figures.quiet_cpu = sum(proc.cpu_times()[:2]) - cpu_before
                with httpx.stream("GET", f"{base}/api/jobs/{job_ids[0]}/events", timeout=10) as extra:
                    retry_after = extra.headers.get("retry-after", "-")
                    figures.over_cap = f"{extra.status_code}, Retry-After: {retry_after}"
                log.info("publishing: %d spread rounds, %d burst rounds", args.rounds, args.burst_rounds)
                cpu_before = sum(proc.cpu_times()[:2])
                started = time.monotonic()
                windows = publish_rounds(rc, job_ids, args=args)
                time.sleep(1.0)  # the last burst's stragglers
                figures.publish_seconds = time.monotonic() - started
                figures.api_cpu = sum(proc.cpu_times()[:2]) - cpu_before
                samples: list[tuple[float, float]] = []
                for parent in pipes:
                    parent.send("stop")
                for parent in pipes:
                    if not parent.poll(60):
                        raise RuntimeError("a loader did not report within 60 s")
                    _, got, lost, cpu = parent.recv()
                    samples += got
                    figures.lost += lost
                    figures.loader_cpu += cpu
            finally:
                for loader in loaders:
                    loader.join(timeout=10)
                    if loader.is_alive():
                        loader.kill()
            for phase, (first, last) in windows.items():
                figures.delays[phase] = sorted(d for sent, d in samples if first <= sent <= last + 0.5)
            figures.expected = {
                "spread": figures.opened * args.rounds,
                "burst": figures.opened * args.burst_rounds,
            }
    return figures


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def render(f: Figures, args: Args, state: machine.MachineState) -> str:
    assert f.idle is not None and f.loaded is not None
    lines = [
        f"SSE fan-out: {f.clients} streams ({f.jobs} jobs x {args.clients_per_job}) on ONE API process "
        f"(uvicorn, WEB_CONCURRENCY=1), clients in {args.loaders} loader processes (raw asyncio sockets)",
        f"streams open: {f.opened}   refused: {f.refused}   failed to open: {f.failed}   "
        f"dropped while measured: {f.lost}",
        f"one more stream past STACK_SSE_MAX_STREAMS={f.clients}: {f.over_cap}",
        "",
        f"{'API process':<44}{'no stream':>12}{'all open':>12}",
        f"{'  Redis connections (TCP, to our Redis)':<44}{f.idle.redis_connections:>12}"
        f"{f.loaded.redis_connections:>12}",
        f"{'  of them the shared subscription':<44}{f.idle.hub_connections:>12}"
        f"{f.loaded.hub_connections:>12}",
        f"{'  open files':<44}{f.idle.open_files:>12}{f.loaded.open_files:>12}",
        "",
        "Delay from PUBLISH to receipt by each client (ms):",
        f"  {'phase':<44}{'received':>14}{'p50':>9}{'p99':>9}{'max':>9}",
    ]
    labels = {
        "spread": f"spread: {args.rounds} rounds at {args.rate:g} publishes/s",
        "burst": f"burst: {args.burst_rounds} x all {f.jobs} jobs at once",
    }
    delivered = sum(len(d) for d in f.delays.values())
    per_event_us = f.api_cpu / delivered * 1e6 if delivered else float("nan")
    for phase, delays in f.delays.items():
        ms = [d * 1e3 for d in delays]
        got = f"{len(ms)}/{f.expected.get(phase, 0)}"
        lines.append(
            f"  {labels[phase]:<44}{got:>14}{pct(ms, 50):>9.1f}{pct(ms, 99):>9.1f}{max(ms, default=0):>9.1f}"
        )
    lines += [
        "",
        f"API CPU while all streams sat quiet for {args.quiet_seconds:g} s (row re-reads, keep-alives): "
        f"{f.quiet_cpu:.2f} s",
        f"API CPU per event delivered while publishing: {per_event_us:.0f} us (a burst cannot drain faster)",
        f"CPU during the {f.publish_seconds:.1f} s of publishing: API {f.api_cpu:.1f} s, "
        f"loaders {f.loader_cpu:.1f} s in all (their whole life, opening included)",
        "Measured on this machine with the API, Redis, PostgreSQL, this publisher and the loaders sharing "
        f"its cores ({state.describe()}): delays include their contention.",
    ]
    spread = [d * 1e3 for d in f.delays.get("spread", [])]
    hub_ok = f.loaded.hub_connections == 1
    p99_ok = bool(spread) and pct(spread, 99) < 100
    lines += [
        "",
        "Targets",
        f"  {'pass' if hub_ok else 'MISS'}  one Redis subscription for all streams: "
        f"{f.loaded.hub_connections}",
        f"  {'pass' if p99_ok else 'MISS'}  p99 delay (spread) under 100 ms: {pct(spread, 99):.1f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, verbose = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    limit = raise_file_limit()
    if limit < args.clients + 512:
        print(
            f"benchmarks.sse: error: open-file limit {limit} is too low for {args.clients} streams",
            file=sys.stderr,
        )
        return 1
    state = machine.probe()
    try:
        figures = measure(args)
    except (stackproc.StackProcessError, servers.ServerError, RuntimeError) as exc:
        print(f"benchmarks.sse: error: {exc}", file=sys.stderr)
        return 1
    print(render(figures, args, state))
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            phase: {
                "received": len(d),
                "p50_ms": pct(d, 50) * 1e3,
                "p99_ms": pct(d, 99) * 1e3,
                "max_ms": max(d) * 1e3,
            }
            for phase, d in figures.delays.items()
            if d
        }
        args.json_path.write_text(json.dumps({"clients": figures.clients, "delays": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
