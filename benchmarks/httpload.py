"""A small HTTP/1.1 load generator on asyncio streams (uvloop when present), for micro-benchmarks.

Not httpx or requests: their per-request overhead (~0.5-1 ms of Python) is the size of what we
measure. This speaks just enough HTTP/1.1 for our JSON endpoints: keep-alive connections, a fixed
request, Content-Length bodies. Every loop is bounded by a request count and by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class LoadError(RuntimeError):
    """The server answered something this client cannot read, or not at all."""


@dataclass
class LoadResult:
    """Latencies (s) of the requests that completed, errors by reason, and the wall time."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    offered_rate: float | None = None

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    @classmethod
    def merged(cls, parts: Sequence[LoadResult]) -> LoadResult:
        """Rounds of one load as one: every latency and error, over their summed time."""
        merged = cls(offered_rate=parts[0].offered_rate if parts else None)
        for part in parts:
            merged.latencies.extend(part.latencies)
            for reason, count in part.errors.items():
                merged.errors[reason] = merged.errors.get(reason, 0) + count
            merged.elapsed += part.elapsed
        return merged


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    port: int
    path: str
    body: dict[str, Any] | None = None
    ok_statuses: tuple[int, ...] = (200, 201, 202)

    def encode(self) -> bytes:
        payload = json.dumps(self.body).encode() if self.body is not None else b""
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload


class Connection:
    def __init__(self, request: Request, timeout: float) -> None:
        self.request = request
        self.raw = request.encode()
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.request.host, self.request.port), self.timeout
        )

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
            self.reader = self.writer = None

    async def send(self) -> int:
        """One request/response on this keep-alive connection; returns the status code."""
        reused = self.writer is not None
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.raw)
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.timeout)
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
            # The server closed this idle keep-alive connection (uvicorn does after 5 s) before
            # reading the request: resend once on a fresh connection, as HTTP clients do.
            await self.close()
            return await self.send()
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
            elif lowered == b"transfer-encoding":
                raise LoadError("chunked responses are not supported by this client")
        if length:
            await asyncio.wait_for(self.reader.readexactly(length), self.timeout)
        if close:
            await self.close()
        return status


async def _one(conn: Connection, result: LoadResult, *, since: float | None = None) -> bool:
    """One request, its latency or its error recorded in `result`. Latency counts from `since`
    (an open loop's scheduled start) or from the send. False: it failed and `conn` is closed."""
    started = time.perf_counter() if since is None else since
    try:
        status = await conn.send()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, LoadError, ValueError) as exc:
        result.error(type(exc).__name__)
        await conn.close()
        return False
    if status in conn.request.ok_statuses:
        result.latencies.append(time.perf_counter() - started)
    else:
        result.error(f"HTTP {status}")
    return True


async def sequential(
    request: Request, *, count: int, max_seconds: float, timeout: float = 10.0
) -> LoadResult:
    """One request at a time on one connection: the latency floor."""
    result = LoadResult()
    conn = Connection(request, timeout)
    started = time.perf_counter()
    deadline = started + max_seconds
    try:
        for _ in range(count):
            if time.perf_counter() >= deadline:
                break
            await _one(conn, result)
    finally:
        result.elapsed = time.perf_counter() - started
        await conn.close()
    return result


async def closed_loop(
    request: Request, *, connections: int, count: int, max_seconds: float, timeout: float = 10.0
) -> LoadResult:
    """`connections` clients each sending the next request as soon as the last answered: the peak."""
    result = LoadResult()
    remaining = count
    started = time.perf_counter()
    deadline = started + max_seconds

    async def client() -> None:
        nonlocal remaining
        conn = Connection(request, timeout)
        try:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                await _one(conn, result)
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    result.elapsed = time.perf_counter() - started
    return result


async def open_loop(
    request: Request, *, rate: float, duration: float, max_connections: int = 200, timeout: float = 10.0
) -> LoadResult:
    """Requests started on a fixed schedule of `rate`/s whatever the answers take (no coordinated
    omission): latency is measured from the scheduled start, so a stalled server shows up as
    latency, not as a quietly lower rate."""
    result = LoadResult(offered_rate=rate)
    idle: list[Connection] = []
    in_flight = 0
    total = int(rate * duration)
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()

    async def fire(scheduled: float) -> None:
        nonlocal in_flight
        conn = idle.pop() if idle else Connection(request, timeout)
        in_flight += 1
        try:
            reusable = await _one(conn, result, since=scheduled)
        finally:
            in_flight -= 1
        if reusable:
            idle.append(conn)

    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= max_connections:
            result.error("not sent: the server fell behind (max requests in flight)")
            continue
        task = asyncio.create_task(fire(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    result.elapsed = time.perf_counter() - started
    for conn in idle:
        await conn.close()
    return result


def run(coro: Any) -> LoadResult:
    """Run one load coroutine on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[no-any-return]
