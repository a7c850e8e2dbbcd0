"""Server-sent job events: the row first, live updates from the process's one shared subscription,
the finished row last; ids and `retry:` for EventSource resumes, a cap and a lifetime per stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import fakeredis.aioredis

from stack.jobs.events import channel_for
from stack.jobs.fanout import RESYNC, EventHub, Watch
from stack.jobs.models import JobStatus
from stack.jobs.schemas import JobDetail
from stack.jobs.stream import KEEPALIVE, RETRY_MS, event_id, job_events
from tests.unit.test_api import client_for

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def detail(status: str, progress: int, *, id: str = "j1", message: str = "", **extra: Any) -> JobDetail:
    return JobDetail(
        id=id,
        kind="demo",
        queue="default",
        status=JobStatus(status),
        progress=progress,
        message=message,
        created_at=NOW,
        updated_at=NOW,
        attempts=1,
        worker="w",
        started_at=NOW,
        finished_at=None,
        **extra,
    )  # type: ignore[call-arg]


def frames(chunks: list[bytes]) -> list[dict[str, str]]:
    """Each SSE frame as its fields (`retry`, `id`, `event`, `data`); comments as `comment`."""
    out = []
    for frame in b"".join(chunks).decode().split("\n\n"):
        if not frame:
            continue
        fields: dict[str, str] = {}
        for line in frame.split("\n"):
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.strip()
        out.append(fields)
    return out


def decode(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(f["data"]) for f in frames(chunks) if f.get("event") == "job"]


async def never() -> bool:
    return False


def no_redis(**kwargs: Any) -> EventHub:
    return EventHub(None, **kwargs)


def fake_hub(server: fakeredis.FakeServer, **kwargs: Any) -> tuple[EventHub, list[int]]:
    """A hub on fakeredis; the list counts the connections it opened."""
    opened: list[int] = []

    def connect() -> fakeredis.aioredis.FakeRedis:
        opened.append(1)
        return fakeredis.aioredis.FakeRedis(server=server)

    kwargs.setdefault("backoff", (0.01, 0.05))
    return EventHub("redis://unused", client_factory=connect, **kwargs), opened


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def read_all(stream: Any) -> list[bytes]:
    return [chunk async for chunk in stream]


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(15):
            return await coro

    return asyncio.run(bounded())


def collect(**kwargs: Any) -> list[bytes]:
    kwargs.setdefault("hub", no_redis())
    return run(read_all(job_events(job_id="j1", disconnected=never, **kwargs)))


def at(percent: int) -> str:
    return f"at {percent}"


async def progress(server: fakeredis.FakeServer, job_id: str, percent: int, status: str = "progress") -> None:
    client = fakeredis.aioredis.FakeRedis(server=server)
    event = {"status": status, "progress": percent, "message": at(percent)}
    await client.publish(channel_for(job_id), json.dumps(event))
    await client.aclose()


def test_a_finished_job_is_retry_then_one_event_with_an_id() -> None:
    async def load() -> JobDetail:
        return detail("success", 100, result={"ok": True})

    chunks = collect(load=load)
    assert frames(chunks)[0] == {"retry": str(RETRY_MS)}
    events = frames(chunks)[1:]
    assert len(events) == 1 and events[0]["id"] == event_id(detail("success", 100))
    assert [(e["status"], e["result"]) for e in decode(chunks)] == [("success", {"ok": True})]


def test_live_updates_then_the_finished_row_each_with_its_own_id() -> None:
    server = fakeredis.FakeServer()
    hub, _ = fake_hub(server)
    rows = [detail("started", 0)]

    async def load() -> JobDetail:
        return rows[-1]

    async def worker() -> None:
        await until(lambda: hub.connected)
        for percent in (30, 60):
            await progress(server, "j1", percent)
            await asyncio.sleep(0.05)
        rows.append(detail("success", 100, result={"n": 1}))
        await progress(server, "j1", 100, status="success")

    async def scenario() -> list[bytes]:
        task = asyncio.create_task(worker())
        chunks = await read_all(job_events(job_id="j1", load=load, hub=hub, disconnected=never))
        await task
        await hub.close()
        return chunks

    chunks = run(scenario())
    events = decode(chunks)
    assert [e["progress"] for e in events] == [0, 30, 60, 100]
    assert events[-1]["status"] == "success" and events[-1]["result"] == {"n": 1}
    ids = [f["id"] for f in frames(chunks) if "event" in f]
    assert len(set(ids)) == 4 and ids[-1] == event_id(rows[-1])


def test_many_streams_share_one_subscription() -> None:
    server = fakeredis.FakeServer()
    hub, opened = fake_hub(server)
    jobs = [f"job{n}" for n in range(5)]
    rows = {job: detail("started", 0, id=job) for job in jobs}

    def loader(job: str) -> Callable[[], Awaitable[JobDetail]]:
        async def load() -> JobDetail:
            return rows[job]

        return load

    async def scenario() -> list[list[dict[str, Any]]]:
        streams = [
            asyncio.create_task(
                read_all(job_events(job_id=job, load=loader(job), hub=hub, disconnected=never, recheck=30))
            )
            for job in jobs
            for _ in range(10)
        ]
        await until(lambda: hub.connected and hub.watching() == 50)
        assert await fakeredis.aioredis.FakeRedis(server=server).pubsub_numpat() == 1
        for percent in (20, 40, 80):
            for job in jobs:
                await progress(server, job, percent)
        await asyncio.sleep(0.1)
        for job in jobs:
            rows[job] = detail("success", 100, id=job)
            await progress(server, job, 100, status="success")
        results = [decode(chunks) for chunks in await asyncio.gather(*streams)]
        assert hub.watching() == 0
        await hub.close()
        return results

    results = run(scenario())
    assert len(opened) == 1, "one Redis connection for all 50 streams"
    for events in results:
        assert [e["progress"] for e in events] == [0, 20, 40, 80, 100]
        assert events[-1]["status"] == "success"


def test_without_redis_the_row_is_polled() -> None:
    rows = iter([detail("progress", 10), detail("progress", 10), detail("success", 100)])

    async def load() -> JobDetail:
        return next(rows)

    chunks = collect(load=load, recheck=0.05)
    assert [e["status"] for e in decode(chunks)] == ["progress", "success"]
    assert KEEPALIVE in chunks  # the unchanged row is not repeated, a keep-alive goes instead


def test_a_live_quiet_stream_sends_keep_alives_and_rarely_reads_the_row() -> None:
    server = fakeredis.FakeServer()
    hub, _ = fake_hub(server)
    reads: list[int] = []

    async def load() -> JobDetail:
        reads.append(1)
        return detail("pending", 0)

    async def scenario() -> list[bytes]:
        stream = job_events(
            job_id="j1", load=load, hub=hub, disconnected=never, recheck=0.05, reread=0.5, max_seconds=1.2
        )
        chunks = await read_all(stream)
        await hub.close()
        return chunks

    chunks = run(scenario())
    assert chunks.count(KEEPALIVE) >= 10
    # The first read, one after the subscription came up, and a re-read every 0.4-0.5 s.
    assert 2 <= len(reads) <= 5, len(reads)
    assert [e["status"] for e in decode(chunks)] == ["pending"]


def test_redis_unreachable_then_back_then_restarted() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    hub, opened = fake_hub(server, ping_after=0.1)
    rows = [detail("started", 0)]

    async def load() -> JobDetail:
        return rows[-1]

    async def scenario() -> list[dict[str, Any]]:
        stream = asyncio.create_task(
            read_all(job_events(job_id="j1", load=load, hub=hub, disconnected=never, recheck=0.05))
        )
        await asyncio.sleep(0.2)
        assert not hub.connected and len(opened) > 1  # retrying, with backoff
        rows.append(detail("progress", 10, message=at(10)))  # seen by reading the row meanwhile
        await asyncio.sleep(0.2)
        server.connected = True
        await until(lambda: hub.connected)
        rows.append(detail("progress", 20, message=at(20)))  # a worker writes the row, then publishes
        await progress(server, "j1", 20)
        await asyncio.sleep(0.1)
        server.connected = False  # a restart: the hub's PING goes unanswered, it reconnects
        await until(lambda: not hub.connected)
        rows.append(detail("progress", 30, message=at(30)))
        # Seen by reading the row while the subscription is down. Without this wait, a reconnect
        # that comes first re-reads the row only once 40 is written, and 30 is never shown.
        await asyncio.sleep(0.2)
        server.connected = True
        await until(lambda: hub.connects == 2)
        rows.append(detail("progress", 40, message=at(40)))
        await progress(server, "j1", 40)
        await asyncio.sleep(0.1)
        rows.append(detail("success", 100))
        await progress(server, "j1", 100, status="success")
        chunks = await stream
        await hub.close()
        return decode(chunks)

    events = run(scenario())
    assert [e["progress"] for e in events] == [0, 10, 20, 30, 40, 100]


def test_the_lifetime_ends_a_stream_on_a_job_that_never_moves() -> None:
    async def load() -> JobDetail:
        return detail("pending", 0)

    async def timed() -> tuple[float, list[bytes]]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        chunks = await read_all(
            job_events(
                job_id="j1", load=load, hub=no_redis(), disconnected=never, max_seconds=0.3, recheck=0.05
            )
        )
        return loop.time() - began, chunks

    elapsed, chunks = run(timed())
    assert 0.2 <= elapsed < 1.0
    assert [e["status"] for e in decode(chunks)] == ["pending"]


def test_last_event_id_skips_what_the_client_has() -> None:
    rows = [detail("progress", 40, message="resizing")]

    async def load() -> JobDetail:
        return rows[-1]

    async def resumed(last: str) -> list[bytes]:
        stream = job_events(
            job_id="j1", load=load, hub=no_redis(), disconnected=never, max_seconds=0.2, last_event_id=last
        )
        return await read_all(stream)

    unchanged = run(resumed(event_id(rows[-1])))
    assert decode(unchanged) == [] and frames(unchanged)[0] == {"retry": str(RETRY_MS)}
    older = run(resumed(event_id(detail("progress", 40, message="downloading"))))  # same %, new message
    assert [e["message"] for e in decode(older)] == ["resizing"]
    rows.append(detail("success", 100))
    finished = run(resumed(event_id(rows[0])))
    assert [e["status"] for e in decode(finished)] == ["success"]


def test_late_and_repeated_progress_events_are_not_sent() -> None:
    server = fakeredis.FakeServer()
    hub, _ = fake_hub(server)
    rows = [detail("progress", 50, message="at 50")]

    async def load() -> JobDetail:
        return rows[-1]

    async def scenario() -> list[dict[str, Any]]:
        stream = asyncio.create_task(
            read_all(job_events(job_id="j1", load=load, hub=hub, disconnected=never))
        )
        await until(lambda: hub.connected and hub.watching() == 1)
        await asyncio.sleep(0.05)  # past the resync of the first subscription
        for percent in (40, 50, 60, 60):  # overtaken by the row, the row itself, news, a duplicate
            await progress(server, "j1", percent)
        await asyncio.sleep(0.1)
        rows.append(detail("success", 100))
        await progress(server, "j1", 100, status="success")
        chunks = await stream
        await hub.close()
        return decode(chunks)

    assert [e["progress"] for e in run(scenario())] == [50, 60, 100]


def test_a_slow_stream_drops_its_backlog_and_rereads_the_row() -> None:
    async def scenario() -> list[object]:
        watch = Watch(no_redis(), "j1", maxsize=3)
        for n in range(5):
            watch.push({"progress": n})
        return [await watch.next(0.01) for _ in range(3)]

    assert run(scenario()) == [RESYNC, {"progress": 4}, None]


def test_endpoint_404_and_inline_stream_with_ids(tmp_path: Path) -> None:
    with client_for(tmp_path, celery_enabled=False) as client:
        assert client.get("/api/jobs/nope/events").status_code == 404
        task_id = client.post("/api/jobs/demo", json={"seconds": 0, "steps": 2}).json()["task_id"]
        response = client.get(f"/api/jobs/{task_id}/events")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        parsed = frames([response.content])
        assert parsed[0] == {"retry": str(RETRY_MS)}
        assert [json.loads(f["data"])["status"] for f in parsed[1:]] == ["success"]
        # EventSource reconnects after the last event; 204 is what makes it stop.
        again = client.get(f"/api/jobs/{task_id}/events", headers={"Last-Event-ID": parsed[1]["id"]})
        assert again.status_code == 204
        assert client.app.state.events.streams == 0  # type: ignore[attr-defined]  # slots given back


def test_endpoint_beyond_the_cap_is_503_with_retry_after(tmp_path: Path) -> None:
    with client_for(tmp_path, celery_enabled=False, sse_max_streams=2) as client:
        hub: EventHub = client.app.state.events  # type: ignore[attr-defined]
        task_id = client.post("/api/jobs/demo", json={"seconds": 0, "steps": 1}).json()["task_id"]
        held = [hub.admit(), hub.admit()]  # two streams open elsewhere
        refused = client.get(f"/api/jobs/{task_id}/events")
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) > 0
        assert "STACK_SSE_MAX_STREAMS" in refused.json()["detail"]["message"]
        for slot in held:
            assert slot is not None
            slot.release()
            slot.release()  # idempotent: a place is never given back twice
        assert hub.streams == 0
        assert client.get(f"/api/jobs/{task_id}/events").status_code == 200
