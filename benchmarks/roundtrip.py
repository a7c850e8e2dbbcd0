"""0→100: how long a job with no work takes from its submit to a poller seeing it succeed.

Ours: `POST /api/jobs/demo` {"seconds": 0, "steps": 1} on the api role with a worker role
consuming, then `GET /api/jobs/{id}` every 5 ms until its status is `success`. Bare: the same
loop against the bare app's `POST /tasks` (apply_async of a no-op that stores its result) and
`GET /tasks/{id}` (`AsyncResult(id).state` from the Redis result backend), the status endpoint a
hand-written FastAPI + Celery app polls. One job at a time: the figure is the path's latency,
not a queue's. The 5 ms poll interval is part of the figure (on average ~2.5 ms of it), for both.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bare import BARE_QUEUE
from benchmarks.drain import BARE_APP, worker_argv, worker_settings
from benchmarks.enqueue import start_bare_api
from benchmarks.httpload import percentile
from loadtests import stackproc

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.005  # seconds between two status requests of one job
JOB_TIMEOUT = 10.0  # seconds a job with no work may take to succeed before the run fails
WARMUP = 20  # roundtrips not counted: connections, pools and imports warm up in the first ones


class RoundtripError(RuntimeError):
    """A submit or a status request failed, or a job did not succeed in time."""


@dataclass(frozen=True)
class Endpoints:
    """How to submit a job to one app and read its status."""

    submit_path: str
    submit_body: dict[str, Any]
    status_path: str  # with `{id}`
    succeeded: str  # the status value that ends the wait
    failed: frozenset[str]  # status values that mean it never will


OURS = Endpoints(
    submit_path="/api/jobs/demo",
    submit_body={"seconds": 0, "steps": 1},
    status_path="/api/jobs/{id}",
    succeeded="success",
    failed=frozenset({"failure", "revoked"}),
)
BARE = Endpoints(
    submit_path="/tasks",
    submit_body={},
    status_path="/tasks/{id}",
    succeeded="SUCCESS",
    failed=frozenset({"FAILURE", "REVOKED"}),
)


@dataclass
class RoundtripFigures:
    name: str
    latencies: list[float]  # seconds from the submit to the response that showed success
    polls: int  # status requests in all

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def polls_per_job(self) -> float:
        return self.polls / len(self.latencies) if self.latencies else 0.0


class JsonClient:
    """One keep-alive HTTP/1.1 connection speaking JSON (stdlib: ~0.1 ms a request, the same
    for both apps, small next to the 0→100 time it measures)."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        self.conn.request(method, path, body=payload, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw[:200].decode(errors="replace")

    def close(self) -> None:
        self.conn.close()


def roundtrip(
    client: JsonClient, ep: Endpoints, *, interval: float = POLL_INTERVAL, timeout: float = JOB_TIMEOUT
) -> tuple[float, int]:
    """Submit one job and poll it until it succeeded: (seconds it took, status requests made)."""
    started = time.perf_counter()
    code, body = client.request("POST", ep.submit_path, ep.submit_body)
    if code not in (200, 201, 202) or not isinstance(body, dict) or "task_id" not in body:
        raise RoundtripError(f"POST {ep.submit_path} answered {code}: {body!r}")
    path = ep.status_path.format(id=body["task_id"])
    deadline = started + timeout
    polls = 0
    while True:
        time.sleep(interval)
        code, body = client.request("GET", path)
        polls += 1
        if code != 200 or not isinstance(body, dict):
            raise RoundtripError(f"GET {path} answered {code}: {body!r}")
        state = body.get("status")
        if state == ep.succeeded:
            return time.perf_counter() - started, polls
        if state in ep.failed:
            raise RoundtripError(f"GET {path}: the job ended {state}, not {ep.succeeded}: {body!r}")
        if time.perf_counter() >= deadline:
            raise RoundtripError(
                f"timed out after {timeout:g} s waiting for GET {path} to show {ep.succeeded} "
                f"(last status {state!r}): is a worker consuming the job's queue? See the worker's log"
            )


def measure(name: str, port: int, ep: Endpoints, *, count: int, warmup: int = WARMUP) -> RoundtripFigures:
    client = JsonClient(port)
    try:
        for _ in range(warmup):
            roundtrip(client, ep)
        latencies: list[float] = []
        polls = 0
        for _ in range(count):
            seconds, made = roundtrip(client, ep)
            latencies.append(seconds)
            polls += made
    finally:
        client.close()
    figures = RoundtripFigures(name=name, latencies=latencies, polls=polls)
    log.info(
        "%s: 0→100 p50 %.1f ms, %.1f polls a job", name, figures.percentile(50) * 1e3, figures.polls_per_job
    )
    return figures


def run_roundtrip(
    *, ours: stackproc.StackEnv, bare: stackproc.StackEnv, log_dir: Path, count: int
) -> tuple[RoundtripFigures, RoundtripFigures]:
    """`count` 0→100 roundtrips through our api + worker roles, then through the bare app's."""
    port = stackproc.free_port()
    with stackproc.running(
        lambda: stackproc.start_api(ours, port=port, log_dir=log_dir, name="roundtrip-api"),
        lambda: stackproc.start_worker(ours, log_dir=log_dir, name="roundtrip"),
    ):
        ours_figures = measure("ours", port, OURS, count=count)

    settings = worker_settings(bare, name="bare-roundtrip", queues=BARE_QUEUE)
    argv = worker_argv(settings, app=BARE_APP, queue=BARE_QUEUE)
    port = stackproc.free_port()
    with stackproc.running(
        lambda: start_bare_api(bare, port=port, log_dir=log_dir),
        lambda: stackproc.start_worker(bare, log_dir=log_dir, name="bare-roundtrip", argv=argv),
    ):
        bare_figures = measure("bare", port, BARE, count=count)
    return ours_figures, bare_figures
