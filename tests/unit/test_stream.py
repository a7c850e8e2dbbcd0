"""Server-sent job events: the row first, live updates from pub/sub, the finished row last."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis.aioredis

from stack.jobs.events import channel_for
from stack.jobs.schemas import JobDetail
from stack.jobs.stream import job_events
from tests.unit.test_api import client_for

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def detail(status: str, progress: int, **extra: Any) -> JobDetail:
    return JobDetail(
        id="j1",
        kind="demo",
        queue="default",
        status=status,
        progress=progress,
        message="",
        created_at=NOW,
        updated_at=NOW,
        attempts=1,
        worker="w",
        started_at=NOW,
        finished_at=None,
        **extra,
    )  # type: ignore[call-arg]


def decode(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(c.decode().split("data: ", 1)[1]) for c in chunks if c.startswith(b"event:")]


async def never() -> bool:
    return False


def collect(**kwargs: Any) -> list[bytes]:
    async def run() -> list[bytes]:
        return [chunk async for chunk in job_events(job_id="j1", disconnected=never, **kwargs)]

    return asyncio.run(asyncio.wait_for(run(), timeout=10))


def test_a_finished_job_is_one_event() -> None:
    async def load() -> JobDetail:
        return detail("success", 100, result={"ok": True})

    events = decode(collect(load=load, redis_client=None))
    assert [(e["status"], e["result"]) for e in events] == [("success", {"ok": True})]


def test_live_updates_then_the_finished_row() -> None:
    redis = fakeredis.aioredis.FakeRedis()
    rows = [detail("started", 0)]

    async def load() -> JobDetail:
        return rows[-1]

    async def worker() -> None:
        await asyncio.sleep(0.1)
        for percent in (30, 60):
            await redis.publish(channel_for("j1"), json.dumps({"status": "progress", "progress": percent}))
            await asyncio.sleep(0.05)
        rows.append(detail("success", 100, result={"n": 1}))
        await redis.publish(channel_for("j1"), json.dumps({"status": "success", "progress": 100}))

    async def run() -> list[bytes]:
        task = asyncio.create_task(worker())
        chunks = [c async for c in job_events(job_id="j1", load=load, redis_client=redis, disconnected=never)]
        await task
        return chunks

    events = decode(asyncio.run(asyncio.wait_for(run(), timeout=10)))
    assert [e["progress"] for e in events] == [0, 30, 60, 100]
    assert events[-1]["status"] == "success" and events[-1]["result"] == {"n": 1}


def test_without_redis_the_row_is_polled() -> None:
    rows = iter([detail("progress", 10), detail("progress", 10), detail("success", 100)])

    async def load() -> JobDetail:
        return next(rows)

    events = decode(collect(load=load, redis_client=None, recheck=0.05))
    assert [e["status"] for e in events] == ["progress", "success"]


def test_endpoint_404_and_inline_stream(tmp_path: Path) -> None:
    with client_for(tmp_path, celery_enabled=False) as client:
        assert client.get("/api/jobs/nope/events").status_code == 404
        task_id = client.post("/api/jobs/demo", json={"seconds": 0, "steps": 2}).json()["task_id"]
        response = client.get(f"/api/jobs/{task_id}/events")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = decode([line.encode() for line in response.text.split("\n\n") if line])
        assert [e["status"] for e in events] == ["success"]
