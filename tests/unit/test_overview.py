"""The queue overview (`GET /api/queues`): what it counts, from how little, and its exact shape."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event

from stack.api.app import create_app
from stack.jobs.liveness import Owner
from stack.jobs.migrate import upgrade
from stack.jobs.models import JobStatus, Worker, utcnow
from stack.jobs.overview import (
    Cached,
    JobCount,
    OverviewSource,
    build_overview,
    count_live_jobs,
)
from stack.jobs.overview import redis_client as fail_fast_client  # the real one: fixtures patch it
from stack.runtime import Runtime, build_runtime
from tests.unit.conftest import make_settings

REDIS_BROKER = "redis://127.0.0.1:6399/0"  # never dialled: the tests hand out a fake client
TOKEN = "read-only-token-0123456789"


def worker(name: str, queues: list[str], *, silent: float, running: list[str] | None = None) -> Worker:
    return Worker(
        id=name,
        name=name,
        pid=1,
        queues=queues,
        running=running or [],
        heartbeat_at=utcnow() - timedelta(seconds=silent),
    )


# --- building the overview from facts ------------------------------------------------------------------
def test_every_routed_queue_default_and_any_queue_holding_jobs_is_listed(runtime: Runtime) -> None:
    now = utcnow()
    jobs = [
        JobCount("content", "generate_image", JobStatus.PENDING, 2, now - timedelta(seconds=30)),
        JobCount("content", "generate_content", JobStatus.PENDING, 1, now - timedelta(seconds=90)),
        JobCount("content", "generate_image", JobStatus.PROGRESS, 1, now),
        JobCount("content", "generate_image", JobStatus.STARTED, 1, now),
        JobCount("content", "generate_image", JobStatus.RETRY, 4, now),  # neither pending nor running
        JobCount("renamed", "old_kind", JobStatus.PENDING, 7, now - timedelta(seconds=5)),
    ]
    workers = [
        worker("w1@a", ["content", "default"], silent=1),
        worker("w0@dead", ["content", "logs"], silent=400),
        worker("w2@b", ["logs"], silent=3, running=["job-1"]),
    ]
    overview = build_overview(
        registry=runtime.registry,
        jobs=jobs,
        workers=workers,
        depths={"content": 3, "default": 0, "logs": 0, "renamed": 7},
        broker_ok=True,
        dead_after=30,
        now=now,
    )
    queues = {q.name: q for q in overview.queues}
    assert list(queues) == ["content", "default", "logs", "renamed"]
    content = queues["content"]
    assert (content.kinds, content.depth, content.pending, content.running) == (
        ["generate_content", "generate_image"],
        3,
        3,
        2,
    )
    assert content.oldest_pending_seconds == pytest.approx(90)
    assert content.workers == ["w1@a"]  # the dead one is not a consumer
    assert queues["logs"].workers == ["w2@b"] and queues["logs"].oldest_pending_seconds is None
    assert queues["renamed"].kinds == [] and queues["renamed"].pending == 7
    assert [(w.name, w.alive) for w in overview.workers] == [
        ("w1@a", True),
        ("w2@b", True),
        ("w0@dead", False),
    ]
    assert overview.workers[1].running == ["job-1"]
    assert overview.workers[2].last_heartbeat_seconds == pytest.approx(400, abs=1)


def test_depth_is_null_when_the_broker_cannot_be_counted(runtime: Runtime) -> None:
    overview = build_overview(
        registry=runtime.registry,
        jobs=[],
        workers=[],
        depths=None,
        broker_ok=False,
        dead_after=30,
        now=utcnow(),
    )
    assert {q.depth for q in overview.queues} == {None} and overview.broker_ok is False


# --- reading the database ------------------------------------------------------------------------------
def test_only_live_jobs_are_counted_and_queued_again_counts_from_the_requeue(runtime: Runtime) -> None:
    store = runtime.store
    done = store.create(kind="demo", queue="default", params={})
    store.claim(done.id, owner=Owner("w"))
    store.succeed(done.id, result=None, attempt=1)
    running = store.create(kind="demo", queue="default", params={})
    store.claim(running.id, owner=Owner("w"))
    waiting = [store.create(kind="write_log", queue="logs", params={}) for _ in range(2)]
    lost = store.claim(store.create(kind="demo", queue="default", params={}).id, owner=Owner("w"))
    assert lost is not None
    time.sleep(0.05)
    store.release(lost, reason="test", give_up=None, resend=False)  # pending again, just now

    counts, workers = count_live_jobs(runtime.engine)
    by_key = {(c.queue, c.kind, c.status): c for c in counts}
    assert set(by_key) == {
        ("default", "demo", JobStatus.STARTED),
        ("default", "demo", JobStatus.PENDING),
        ("logs", "write_log", JobStatus.PENDING),
    }
    assert by_key[("logs", "write_log", JobStatus.PENDING)].count == 2
    requeued = by_key[("default", "demo", JobStatus.PENDING)].oldest
    assert requeued is not None and requeued.replace(tzinfo=None) > waiting[0].created_at.replace(tzinfo=None)
    assert workers == []


def test_the_live_jobs_query_searches_a_status_index_not_the_table(runtime: Runtime) -> None:
    # SQLite's plan stands in for PostgreSQL's: finished jobs, however many, are never read.
    from sqlalchemy import func, select, text

    from stack.jobs.models import Job
    from stack.jobs.overview import LIVE_STATUSES

    query = (
        select(Job.queue, Job.kind, Job.status, func.count(), func.min(Job.updated_at))
        .where(Job.status.in_(LIVE_STATUSES))
        .group_by(Job.queue, Job.kind, Job.status)
    )
    compiled = query.compile(runtime.engine, compile_kwargs={"literal_binds": True})
    with runtime.engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "USING INDEX ix_stack_jobs_status" in plan, plan


# --- the source: Redis depths -----------------------------------------------------------------------------
@pytest.fixture
def on_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Runtime, fakeredis.FakeRedis]:
    runtime = build_runtime(make_settings(tmp_path, celery_broker_url=REDIS_BROKER, redis_url=REDIS_BROKER))
    upgrade(runtime.engine)
    broker = fakeredis.FakeRedis()
    monkeypatch.setattr("stack.jobs.overview.redis_client", lambda url, timeout: broker)
    return runtime, broker


def test_depths_come_from_one_redis_pipeline(on_redis: tuple[Runtime, fakeredis.FakeRedis]) -> None:
    runtime, broker = on_redis
    broker.lpush("app:content", "a", "b")
    broker.lpush("app:content\x06\x169", "high priority")  # kombu's priority sub-queue counts too
    overview = OverviewSource(runtime.settings, runtime.registry, runtime.engine).snapshot()
    assert {q.name: q.depth for q in overview.queues} == {"content": 3, "default": 0, "logs": 0}
    assert overview.broker_ok


def test_an_unreachable_broker_gives_null_depths(
    on_redis: tuple[Runtime, fakeredis.FakeRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, _broker = on_redis
    dead = fail_fast_client("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    started = time.perf_counter()
    monkeypatch.setattr("stack.jobs.overview.redis_client", lambda url, timeout: dead)
    snapshot = OverviewSource(runtime.settings, runtime.registry, runtime.engine).snapshot()
    assert not snapshot.broker_ok and {q.depth for q in snapshot.queues} == {None}
    assert time.perf_counter() - started < 1.0  # no retries with backoff


def test_inline_mode_has_no_broker_to_count(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, celery_enabled=False))
    upgrade(runtime.engine)
    overview = OverviewSource(runtime.settings, runtime.registry, runtime.engine).snapshot()
    assert overview.broker_ok and {q.depth for q in overview.queues} == {None}


# --- the cache -------------------------------------------------------------------------------------------
def test_the_cache_computes_once_per_period_for_every_caller() -> None:
    calls: list[float] = []
    now = [0.0]

    def compute() -> int:
        calls.append(now[0])
        time.sleep(0.05)  # slow enough that the threads below all arrive meanwhile
        return len(calls)

    cached = Cached(compute, seconds=1.5, clock=lambda: now[0])
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(cached.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == [1] * 8 and len(calls) == 1
    now[0] = 1.0
    assert cached.get() == 1
    now[0] = 1.6
    assert cached.get() == 2


def test_the_cache_keeps_a_failure_for_the_period_too() -> None:
    attempts = []
    now = [0.0]

    def compute() -> int:
        attempts.append(1)
        raise redis.ConnectionError("down")

    cached = Cached(compute, seconds=1.0, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            cached.get()
    assert len(attempts) == 1  # an outage is not hammered by each waiting caller
    now[0] = 2.0
    with pytest.raises(redis.ConnectionError):
        cached.get()
    assert len(attempts) == 2


# --- GET /api/queues ------------------------------------------------------------------------------------
@pytest.fixture
def api(
    on_redis: tuple[Runtime, fakeredis.FakeRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Runtime, fakeredis.FakeRedis]]:
    runtime, broker = on_redis
    settings = runtime.settings.model_copy(update={"api_tokens": [f"{TOKEN}:read"]})
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, runtime, broker


def test_get_queues_has_the_exact_shape_the_jobs_page_relies_on(
    api: tuple[TestClient, Runtime, fakeredis.FakeRedis],
) -> None:
    client, runtime, broker = api
    for _ in range(3):
        runtime.store.create(kind="write_log", queue="logs", params={})
    broker.lpush("app:logs", "1", "2", "3")
    runtime.store.register_worker(worker_id="w-1", name="worker@a", pid=7, queues=["default", "content"])

    response = client.get("/api/queues")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"queues", "workers", "broker_ok"} and body["broker_ok"] is True
    assert [q["name"] for q in body["queues"]] == ["content", "default", "logs"]
    logs = body["queues"][2]
    assert set(logs) == {"name", "kinds", "depth", "pending", "running", "oldest_pending_seconds", "workers"}
    assert (logs["kinds"], logs["depth"], logs["pending"], logs["running"], logs["workers"]) == (
        ["write_log"],
        3,
        3,
        0,
        [],
    )
    assert isinstance(logs["oldest_pending_seconds"], float)
    assert (
        body["queues"][0]["workers"] == ["worker@a"] and body["queues"][0]["oldest_pending_seconds"] is None
    )
    (only,) = body["workers"]
    assert set(only) == {"name", "queues", "running", "last_heartbeat_seconds", "alive"}
    assert (only["name"], only["queues"], only["running"], only["alive"]) == (
        "worker@a",
        ["content", "default"],
        [],
        True,
    )


def test_get_queues_needs_the_read_scope(
    api: tuple[TestClient, Runtime, fakeredis.FakeRedis], tmp_path: Path
) -> None:
    client, _runtime, _broker = api
    assert client.get("/api/queues", headers={"Authorization": ""}).status_code == 401
    settings = make_settings(tmp_path, api_tokens=["submit-only-token-0123456789:submit"])
    with TestClient(create_app(settings)) as other:
        denied = other.get("/api/queues", headers={"Authorization": "Bearer submit-only-token-0123456789"})
    assert denied.status_code == 403


def test_pages_polling_together_cost_the_database_one_snapshot(
    api: tuple[TestClient, Runtime, fakeredis.FakeRedis],
) -> None:
    client, _runtime, _broker = api
    app: Any = client.app
    statements: list[str] = []
    engine = app.state.jobs.runtime.engine
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for _ in range(20):
        assert client.get("/api/queues").status_code == 200
    reads = [s for s in statements if "stack_jobs" in s or "stack_workers" in s]
    assert len(reads) == 2, reads  # one GROUP BY over live jobs, one read of the workers


def test_documented_in_openapi(api: tuple[TestClient, Runtime, fakeredis.FakeRedis]) -> None:
    client, _runtime, _broker = api
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/api/queues"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/QueuesOut"}
    assert set(schema["components"]["schemas"]["QueuesOut"]["required"]) == {"queues", "workers", "broker_ok"}
