"""Event streams through the production processes: ids and `retry:` on a real stream, a lifetime
that ends a stream on a job that never moves (and the EventSource-style resume after it), the cap
on streams per API process, and one Redis connection for all of them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from stack.jobs.fanout import CLIENT_NAME
from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from tests.e2e.conftest import E2E_ENV

pytestmark = pytest.mark.e2e

LIFETIME = 3.0


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    # One API process, so the cap and the connection count are those of one process.
    return {
        **E2E_ENV,
        "WEB_CONCURRENCY": "1",
        "STACK_SSE_MAX_STREAMS": "2",
        "STACK_SSE_MAX_SECONDS": str(LIFETIME),
    }


def frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE frames as their fields; comments (keep-alives) are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    if fields:
        yield fields


def stream(url: str, *, last_event_id: str | None = None, timeout: float = 30.0) -> list[dict[str, str]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(frames(response.iter_lines()))


def jobs(frames_: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [json.loads(f["data"]) for f in frames_ if f.get("event") == "job"]


def test_a_stream_carries_ids_and_retry_to_the_end(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    submitted = stack_api.submit("demo", {"seconds": 1.0, "steps": 10})
    url = f"{stack_processes.api_url}/api/jobs/{submitted['task_id']}/events"
    got = stream(url)
    assert "retry" in got[0] and int(got[0]["retry"]) > 0
    events = [f for f in got if f.get("event") == "job"]
    assert all(f.get("id") for f in events), events
    assert len({f["id"] for f in events}) == len(events), "an id names one state"
    progress = [e["progress"] for e in jobs(got)]
    assert jobs(got)[-1]["status"] == "success" and progress == sorted(progress), progress
    assert len({p for p in progress if 0 < p < 100}) >= 3, f"too few live updates: {progress}"
    # The EventSource reconnects after the last event; 204 tells it to stop.
    again = httpx.get(url, headers={"Last-Event-ID": events[-1]["id"]}, timeout=10)
    assert again.status_code == 204


def test_a_stream_on_a_job_that_never_moves_ends_and_resumes(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    worker = stack_processes["worker"]
    worker.stop()
    try:
        submitted = stack_api.submit("demo", {"seconds": 0.5, "steps": 5})
        url = f"{stack_processes.api_url}/api/jobs/{submitted['task_id']}/events"
        began = time.monotonic()
        first = stream(url, timeout=LIFETIME + 10)
        assert time.monotonic() - began < LIFETIME + 2, "the stream outlived STACK_SSE_MAX_SECONDS"
        assert [e["status"] for e in jobs(first)] == ["pending"]
        last_id = [f for f in first if "id" in f][-1]["id"]
        # Reconnected with Last-Event-ID and the row unchanged: nothing repeated.
        assert jobs(stream(url, last_event_id=last_id, timeout=LIFETIME + 10)) == []
    finally:
        worker.start()
    stack_processes.wait_ready(timeout=60)
    # Resume as an EventSource does, until the finished job arrives (or 204 says it did).
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": last_id}
        with httpx.stream("GET", url, headers=headers, timeout=LIFETIME + 10) as response:
            if response.status_code == 204:
                break
            got = list(frames(response.iter_lines()))
        ids = [f["id"] for f in got if "id" in f]
        last_id = ids[-1] if ids else last_id
        seen += jobs(got)
        if seen and seen[-1]["status"] == "success":
            break
    assert seen and seen[-1]["status"] == "success", seen
    assert [e["progress"] for e in seen] == sorted(e["progress"] for e in seen)


def test_beyond_the_cap_is_503_and_one_redis_connection_serves_the_streams(
    stack_api: JobClient, stack_processes: ProcfileStack, stack_redis_url: str
) -> None:
    submitted = stack_api.submit("demo", {"seconds": 8.0, "steps": 80})
    url = f"{stack_processes.api_url}/api/jobs/{submitted['task_id']}/events"
    with httpx.stream("GET", url, timeout=10) as a, httpx.stream("GET", url, timeout=10) as b:
        assert (a.status_code, b.status_code) == (200, 200)
        refused = httpx.get(url, timeout=10)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert "STACK_SSE_MAX_STREAMS" in refused.json()["detail"]["message"]
        names = [c.get("name") for c in redis.Redis.from_url(stack_redis_url).client_list()]
        assert names.count(CLIENT_NAME) == 1, names
    # Closed streams give their places back (as soon as the API sees the disconnect).
    deadline = time.monotonic() + 10
    while (status := httpx.get(url, timeout=10, headers={"Accept": "text/event-stream"})).status_code == 503:
        assert time.monotonic() < deadline, "a closed stream never gave its place back"
        time.sleep(0.2)
    assert status.status_code == 200
