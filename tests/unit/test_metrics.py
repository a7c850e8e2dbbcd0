"""Job metrics: recorded in Redis by whichever process saw them, rendered by any API process at
`/metrics`, and alert rules that use only what is rendered (checked by promtool when present)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from stack.api.app import create_app
from stack.config import Settings
from stack.jobs import metrics
from stack.jobs.liveness import Owner
from stack.jobs.migrate import upgrade
from stack.jobs.models import Job, JobStatus, utcnow
from stack.jobs.outbox import LINGER_S, RedisOutbox
from stack.jobs.registry import JobRegistry
from stack.runtime import Runtime, build_runtime
from tests.unit.conftest import CountingRedis, make_settings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
REDIS_URL = "redis://127.0.0.1:6399/0"  # never dialled: the tests hand out fake clients
TOKEN = "prometheus-token-0123456789"


def job_row(**values: Any) -> Job:
    now = utcnow()
    defaults: dict[str, Any] = {
        "id": "j1",
        "kind": "demo",
        "queue": "default",
        "created_at": now - timedelta(seconds=3),
        "started_at": now - timedelta(seconds=2),
        "claimed_at": now - timedelta(seconds=0.3),
    }
    return Job(**(defaults | values))


def recorded(client: redis.Redis, registry: JobRegistry | None = None) -> metrics.Recorded:
    return metrics.read_recorded(client, known=metrics.known_series(registry) if registry else None)


def histogram(found: metrics.Recorded, name: str, *labels: str) -> metrics.HistogramSeries:
    return next(s for s in found.histograms[name] if s.labels == labels)


def counter(found: metrics.Recorded, name: str, *labels: str) -> float:
    return dict(found.counters[name]).get(labels, 0.0)


# --- the recorder --------------------------------------------------------------------------------------
def test_a_finished_job_is_one_round_trip_with_its_duration_and_wait() -> None:
    client = CountingRedis()
    recorder = metrics.RedisRecorder(client)
    client.round_trips = 0
    recorder.finished(job_row(), JobStatus.SUCCESS)
    assert client.round_trips == 1
    found = recorded(client)
    duration = histogram(found, "stack_job_duration_seconds", "demo", "success")
    assert duration.count == 1 and duration.sum == pytest.approx(0.3, abs=0.05)
    assert dict(duration.buckets)[0.25] == 0 and dict(duration.buckets)[0.5] == 1  # cumulative
    wait = histogram(found, "stack_job_wait_seconds", "default")
    assert wait.count == 1 and wait.sum == pytest.approx(1.0, abs=0.01)
    assert found.counters["stack_job_failures"] == []


def test_observations_between_two_sends_add_up_to_one_increment_per_series_and_bucket() -> None:
    client = CountingRedis()
    outbox = RedisOutbox(client, linger=60)  # nothing leaves before the flush below
    recorder = metrics.RedisRecorder(client, outbox=outbox)
    for seconds in (0.3, 0.4, 0.3, 0.45, 0.3):
        recorder.finished(job_row(claimed_at=utcnow() - timedelta(seconds=seconds)), JobStatus.SUCCESS)
    recorder.retried(job_row())
    recorder.retried(job_row())
    assert client.commands == []  # all of it still waits in the process
    outbox.close()
    # duration: bucket 0.5 and its sum; wait: bucket 1 and its sum; retries: one counter.
    assert sorted(client.commands) == ["HINCRBY"] * 3 + ["HINCRBYFLOAT"] * 2
    found = recorded(client)
    duration = histogram(found, "stack_job_duration_seconds", "demo", "success")
    assert duration.count == 5 and duration.sum == pytest.approx(1.75, abs=0.05)
    assert histogram(found, "stack_job_wait_seconds", "default").count == 5
    assert counter(found, "stack_job_retries", "demo") == 2
    recorder.retried(job_row())  # after close: sent at once, in the caller
    assert counter(recorded(client), "stack_job_retries", "demo") == 3


def test_a_forked_child_leaves_its_parents_unsent_observations(monkeypatch: pytest.MonkeyPatch) -> None:
    client = fakeredis.FakeRedis()
    sends: list[Callable[[Any], object]] = []
    outbox = SimpleNamespace(send=sends.append)  # holds the sends, as a lingering outbox does
    recorder = metrics.RedisRecorder(client, outbox=outbox)  # type: ignore[arg-type]
    recorder.retried(job_row())  # the parent's, unsent when the pool process forks
    parent = os.getpid()
    monkeypatch.setattr(metrics.os, "getpid", lambda: parent + 1)  # now in the child
    recorder.retried(job_row(kind="generate_image"))
    pipeline = client.pipeline()
    sends[-1](pipeline)  # the child's outbox sends
    pipeline.execute()
    found = recorded(client)
    assert counter(found, "stack_job_retries", "generate_image") == 1
    assert counter(found, "stack_job_retries", "demo") == 0  # the parent sends its own


def test_failures_retries_and_lost_workers_are_counted_per_kind() -> None:
    client = fakeredis.FakeRedis()
    recorder = metrics.RedisRecorder(client)
    recorder.finished(job_row(kind="generate_image"), JobStatus.FAILURE)
    recorder.finished(job_row(kind="generate_image"), JobStatus.FAILURE, lost=True)
    recorder.retried(job_row())
    recorder.retried(job_row())
    recorder.lost(job_row())
    found = recorded(client)
    assert counter(found, "stack_job_failures", "generate_image") == 2
    assert counter(found, "stack_job_retries", "demo") == 2
    assert (
        counter(found, "stack_worker_lost", "demo"),
        counter(found, "stack_worker_lost", "generate_image"),
    ) == (
        1,
        1,
    )
    assert histogram(found, "stack_job_duration_seconds", "generate_image", "failure").count == 2


def test_a_row_missing_its_times_records_what_it_can() -> None:
    client = fakeredis.FakeRedis()
    metrics.RedisRecorder(client).finished(Job(id="x", kind="demo", queue="default"), JobStatus.FAILURE)
    found = recorded(client)
    assert (
        counter(found, "stack_job_failures", "demo") == 1 and found.histograms["stack_job_wait_seconds"] == []
    )


def test_the_shared_redis_of_a_runtime_fails_fast(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0"))
    outbox = RedisOutbox(runtime.event_redis, background=False)  # type: ignore[arg-type]
    started = time.perf_counter()
    metrics.RedisRecorder(outbox.client, outbox=outbox).finished(job_row(), JobStatus.SUCCESS)
    assert time.perf_counter() - started < 1.0  # redis-py's default retries take 4.5 s per call


def test_series_never_observed_read_as_zero_so_their_first_step_counts(runtime: Runtime) -> None:
    found = recorded(fakeredis.FakeRedis(), runtime.registry)
    assert counter(found, "stack_job_failures", "generate_image") == 0
    assert ("generate_image",) in dict(found.counters["stack_job_failures"])
    assert histogram(found, "stack_job_duration_seconds", "demo", "failure").count == 0
    assert {s.labels for s in found.histograms["stack_job_wait_seconds"]} == {
        ("content",),
        ("default",),
        ("logs",),
    }


def test_buckets_dropped_from_the_configuration_still_count() -> None:
    fields = {
        '["demo","success"]|0.05': "2",
        '["demo","success"]|7.0': "1",  # a bound an older version used
        '["demo","success"]|+Inf': "1",
        '["demo","success"]|sum': "1000.5",
        "not json|1.0": "5",
    }
    (series,) = metrics.decode_histogram(metrics.DURATION, fields)
    buckets = dict(series.buckets)
    assert (buckets[0.05], buckets[5.0], buckets[7.0], buckets[10.0], series.count) == (2, 2, 3, 3, 4)
    assert series.sum == 1000.5


# --- the runner records what happened ----------------------------------------------------------------------
@pytest.fixture
def measured(runtime: Runtime) -> tuple[Runtime, fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    runtime.metrics = metrics.RedisRecorder(client)  # before the runner is built from it
    return runtime, client


def submit_row(runtime: Runtime, kind: str, **params: object) -> str:
    spec = runtime.registry.get(kind)
    return runtime.store.create(kind=kind, queue=spec.queue, params=spec.validate(params).model_dump()).id


def test_the_runner_records_success_failure_and_retries(
    measured: tuple[Runtime, fakeredis.FakeRedis],
) -> None:
    runtime, client = measured
    runtime.runner.run(submit_row(runtime, "demo", seconds=0, steps=2), owner=Owner("w"))
    runtime.runner.run(submit_row(runtime, "demo", seconds=0, steps=5, fail_at=2), owner=Owner("w"))
    flaky = submit_row(runtime, "demo", seconds=0, transient_failures=1)
    assert runtime.runner.run(flaky, owner=Owner("w")).status is JobStatus.RETRY
    assert runtime.runner.run(flaky, owner=Owner("w")).status is JobStatus.SUCCESS
    found = recorded(client)
    assert histogram(found, "stack_job_duration_seconds", "demo", "success").count == 2
    assert histogram(found, "stack_job_duration_seconds", "demo", "failure").count == 1
    assert histogram(found, "stack_job_wait_seconds", "default").count == 3  # once per job, not attempt
    assert counter(found, "stack_job_failures", "demo") == 1
    assert counter(found, "stack_job_retries", "demo") == 1


def test_a_lost_attempt_counts_and_a_lost_last_attempt_fails(
    measured: tuple[Runtime, fakeredis.FakeRedis],
) -> None:
    runtime, client = measured
    store = runtime.store
    requeued = store.claim(submit_row(runtime, "demo"), owner=Owner("w", worker_id="gone"))
    assert requeued is not None
    assert runtime.runner.release_lost(requeued, "its worker is gone", resend=True) is not None
    last = store.claim(submit_row(runtime, "write_log", event="x"), owner=Owner("w", worker_id="gone"))
    assert last is not None
    allowed = runtime.runner.max_attempts("write_log")
    with store.engine.begin() as connection:  # its attempts are spent
        connection.execute(Job.__table__.update().where(Job.id == last.id).values(attempts=allowed))
    spent = store.get(last.id)
    assert spent is not None
    released = runtime.runner.release_lost(spent, "its worker is gone", resend=True)
    assert released is not None and released.status is JobStatus.FAILURE
    found = recorded(client)
    assert counter(found, "stack_worker_lost", "demo") == 1
    assert counter(found, "stack_worker_lost", "write_log") == 1
    assert counter(found, "stack_job_failures", "write_log") == 1
    assert counter(found, "stack_job_failures", "demo") == 0


def test_progress_writes_send_nothing(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, progress_interval=0.0))
    upgrade(runtime.engine)
    client = CountingRedis()
    runtime.metrics = metrics.RedisRecorder(client)
    client.round_trips = 0
    runtime.runner.run(submit_row(runtime, "demo", seconds=0, steps=50), owner=Owner("w"))
    assert client.round_trips == 1  # 50 progress writes, one metrics round trip at the end


def test_inline_mode_records_nothing_and_needs_no_redis(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, celery_enabled=False))
    assert isinstance(runtime.runner.metrics, metrics.NullRecorder)
    assert runtime.event_redis is None


def test_a_celery_runtime_shares_one_redis_between_events_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[tuple[redis.Redis, float]] = []

    def outbox(client: redis.Redis, *, linger: float = LINGER_S, name: str = "") -> str:
        given.append((client, linger))
        return f"outbox lingering {linger:g} s"

    monkeypatch.setattr("stack.runtime.RedisOutbox", outbox)
    runtime = build_runtime(make_settings(tmp_path))
    assert runtime.publisher._outbox == f"outbox lingering {LINGER_S:g} s"  # type: ignore[attr-defined]
    assert runtime.runner.metrics._outbox == "outbox lingering 1 s"  # type: ignore[attr-defined]
    # Two outboxes on the one client: events go within milliseconds, metrics add up for a second.
    assert given == [(runtime.event_redis, LINGER_S), (runtime.event_redis, metrics.METRICS_LINGER_S)]


# --- GET /metrics -------------------------------------------------------------------------------------
def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def redis_server(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeServer:
    """One fake Redis for every process of the test: broker, events and metrics."""
    server = fakeredis.FakeServer()
    fake = lambda url, timeout: fakeredis.FakeRedis(server=server)  # noqa: E731
    monkeypatch.setattr("stack.jobs.overview.redis_client", fake)
    monkeypatch.setattr("stack.api.metrics.redis_client", fake)
    return server


def redis_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "celery_broker_url": REDIS_URL,
        "redis_url": REDIS_URL,
        "api_tokens": [f"{TOKEN}:read"],
    }
    return make_settings(tmp_path, **(values | overrides))


@pytest.fixture
def scrape(tmp_path: Path, redis_server: fakeredis.FakeServer) -> Iterator[tuple[TestClient, Runtime]]:
    settings = redis_settings(tmp_path)
    runtime = build_runtime(settings)
    upgrade(runtime.engine)
    runtime.metrics = metrics.RedisRecorder(fakeredis.FakeRedis(server=redis_server), prefix="app:")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, runtime


def test_metrics_render_queues_workers_jobs_and_recorded_histograms(
    scrape: tuple[TestClient, Runtime], redis_server: fakeredis.FakeServer
) -> None:
    client, runtime = scrape
    for _ in range(3):
        runtime.store.create(kind="write_log", queue="logs", params={})
    fakeredis.FakeRedis(server=redis_server).lpush("app:logs", "1", "2", "3")
    runtime.store.register_worker(worker_id="w-1", name="worker@a", pid=7, queues=["default", "content"])
    runtime.runner.run(submit_row(runtime, "demo", seconds=0, steps=2), owner=Owner("w"))

    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = metric_values(response.text)
    assert value(samples, "stack_jobs", queue="logs", kind="write_log", status="pending") == 3
    assert value(samples, "stack_jobs", queue="content", kind="generate_image", status="pending") == 0
    assert value(samples, "stack_queue_depth", queue="logs") == 3
    assert value(samples, "stack_workers", queue="logs") == 0
    assert value(samples, "stack_workers", queue="default") == 1
    assert value(samples, "stack_queue_oldest_pending_seconds", queue="logs") > 0
    assert value(samples, "stack_queue_oldest_pending_seconds", queue="default") == 0
    assert value(samples, "stack_dead_workers") == 0
    assert value(samples, "stack_job_duration_seconds_count", kind="demo", status="success") == 1
    assert value(samples, "stack_job_duration_seconds_bucket", kind="demo", status="success", le="+Inf") == 1
    assert value(samples, "stack_job_wait_seconds_count", queue="default") == 1
    assert value(samples, "stack_job_failures_total", kind="demo") == 0
    assert value(samples, "stack_worker_lost_total", kind="generate_image") == 0
    for component in ("database", "broker", "redis"):
        assert value(samples, "stack_up", component=component) == 1
    assert not any(name.startswith(("process_", "python_")) for name, _ in samples)  # one process's


def test_metrics_need_the_read_scope(scrape: tuple[TestClient, Runtime], tmp_path: Path) -> None:
    client, _runtime = scrape
    refused = client.get("/metrics", headers={"Authorization": ""})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    settings = make_settings(tmp_path, api_tokens=["submit-only-token-0123456789:submit"])
    with TestClient(create_app(settings)) as other:
        denied = other.get("/metrics", headers={"Authorization": "Bearer submit-only-token-0123456789"})
    assert denied.status_code == 403


def test_every_api_process_and_worker_process_adds_up_to_the_same_numbers(
    tmp_path: Path, redis_server: fakeredis.FakeServer
) -> None:
    """WEB_CONCURRENCY > 1 and prefork: two pool processes record, two API processes answer."""
    settings = redis_settings(tmp_path)
    upgrade(build_runtime(settings).engine)
    pool = [build_runtime(settings) for _ in range(2)]
    for process in pool:
        process.metrics = metrics.RedisRecorder(fakeredis.FakeRedis(server=redis_server), prefix="app:")
        process.runner.run(submit_row(process, "demo", seconds=0, steps=1), owner=Owner("w"))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answers = []
    for _ in range(2):
        with TestClient(create_app(settings)) as api_process:
            answers.append(metric_values(api_process.get("/metrics", headers=headers).text))
    for samples in answers:
        assert value(samples, "stack_job_duration_seconds_count", kind="demo", status="success") == 2


def test_a_database_outage_still_answers_with_what_it_knows(
    scrape: tuple[TestClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    def down(_engine: object) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr("stack.jobs.overview.count_live_jobs", down)
    client, _runtime = scrape
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = metric_values(response.text)
    assert value(samples, "stack_up", component="database") == 0
    assert value(samples, "stack_up", component="redis") == 1
    assert not any(name == "stack_jobs" for name, _ in samples)
    assert client.get("/api/queues").status_code == 503  # the app's answer to a database outage


def test_an_unreachable_redis_leaves_only_the_recorded_metrics_out(
    scrape: tuple[TestClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _runtime = scrape
    monkeypatch.setattr(
        metrics, "read_recorded", lambda *a, **k: (_ for _ in ()).throw(redis.ConnectionError("down"))
    )
    samples = metric_values(client.get("/metrics").text)
    assert value(samples, "stack_up", component="redis") == 0
    assert value(samples, "stack_up", component="database") == 1
    assert not any(name.startswith("stack_job_duration") for name, _ in samples)


def test_inline_mode_serves_gauges_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, celery_enabled=False)
    upgrade(build_runtime(settings).engine)
    with TestClient(create_app(settings)) as client:
        samples = metric_values(client.get("/metrics").text)
    assert value(samples, "stack_up", component="database") == 1
    assert {labels for name, labels in samples if name == "stack_up"} == {(("component", "database"),)}
    assert value(samples, "stack_workers", queue="default") == 0


def test_a_scrape_costs_two_queries_and_none_within_the_cache_whatever_the_history(
    scrape: tuple[TestClient, Runtime],
) -> None:
    client, runtime = scrape
    finished = [
        {"id": f"done-{i}", "kind": "demo", "queue": "default", "status": JobStatus.SUCCESS.value}
        for i in range(10_000)
    ]
    now = utcnow()
    with runtime.engine.begin() as connection:
        connection.execute(
            Job.__table__.insert(),
            [
                row
                | {
                    "progress": 100,
                    "message": "done",
                    "params": {},
                    "attempts": 1,
                    "lost_attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "finished_at": now,
                }
                for row in finished
            ],
        )
    app: Any = client.app
    statements: list[str] = []
    event.listen(app.state.jobs.runtime.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    started = time.perf_counter()
    assert client.get("/metrics").status_code == 200
    cold = time.perf_counter() - started
    assert len(statements) == 2, statements  # the live jobs' GROUP BY, the workers
    for _ in range(5):
        client.get("/metrics")
        client.get("/api/queues")
    assert len(statements) == 2  # within the cache: no query at all
    print(f"\none scrape with 10,000 finished jobs (SQLite): {cold * 1000:.1f} ms, {len(statements)} queries")


# --- alert rules -----------------------------------------------------------------------------------------
def test_alert_rules_use_only_metrics_that_are_exported(scrape: tuple[TestClient, Runtime]) -> None:
    client, _runtime = scrape
    exported = {name for name, _ in metric_values(client.get("/metrics").text)}
    exported |= {name.removesuffix("_total") for name in exported}
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bstack_[a-z_]+", rule["expr"])
    }
    assert used and used <= exported, used - exported


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install --no-install-recommends prometheus)",
)
def test_alert_rules_pass_promtool_and_their_own_tests() -> None:
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        run = subprocess.run(
            ["promtool", *command], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"promtool {' '.join(command)}:\n{run.stdout}\n{run.stderr}"
