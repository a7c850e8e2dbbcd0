"""What Prometheus and the jobs page see, on real processes: a queue nobody consumes shows its
backlog and no worker (in `/api/queues` and `/metrics`), jobs run in prefork pool processes are
counted in histograms that any of the API's processes (WEB_CONCURRENCY=2) renders the same, and
a scrape reads no finished job, however many there are."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from stack.config import normalise_database_url
from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from tests.e2e.conftest import E2E_ENV, write_procfile

pytestmark = pytest.mark.e2e

TOKEN = "metrics-e2e-token-0123456789"
READ_ONLY = "metrics-e2e-reader-0123456789"  # what Prometheus would be given
# Two API processes, one worker that consumes `default` only: `logs` has nobody.
PROCFILE = """\
web: WEB_CONCURRENCY=2 stack run api
worker: STACK_WORKER_QUEUES=default stack run worker
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack_procfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_procfile(tmp_path_factory, PROCFILE)


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {**E2E_ENV, "STACK_API_TOKENS": f"{TOKEN},{READ_ONLY}:read"}


@pytest.fixture(scope="module")
def scraper(stack_processes: ProcfileStack) -> Iterator[Callable[[], Samples]]:
    def scrape() -> Samples:
        # A new connection each time, so scrapes land on either API process.
        response = httpx.get(
            f"{stack_processes.api_url}/metrics", headers={"Authorization": f"Bearer {READ_ONLY}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    yield scrape


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def eventually(check: Callable[[], Any], *, what: str, timeout: float = 15.0) -> Any:
    """Snapshots are cached for ~1.5 s per API process: poll until they show it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


def test_a_queue_with_jobs_and_no_worker_shows_its_depth_and_no_consumer(
    stack_api: JobClient, scraper: Callable[[], Samples]
) -> None:
    for number in range(3):
        stack_api.submit("write_log", {"event": f"nobody consumes logs {number}"})

    def logs_queue() -> dict[str, Any] | None:
        body = stack_api.http.get("/api/queues").json()
        logs = next(q for q in body["queues"] if q["name"] == "logs")
        return body if (logs["depth"], logs["pending"]) == (3, 3) else None

    body = eventually(logs_queue, what="/api/queues to show 3 jobs in queue logs")
    queues = {q["name"]: q for q in body["queues"]}
    assert queues["logs"]["workers"] == [] and queues["logs"]["kinds"] == ["write_log"]
    assert queues["logs"]["oldest_pending_seconds"] >= 0
    assert len(queues["default"]["workers"]) == 1 and body["broker_ok"] is True
    (worker,) = body["workers"]
    assert worker["alive"] and worker["queues"] == ["default"] and worker["last_heartbeat_seconds"] < 30

    def deep() -> Samples | None:
        samples = scraper()
        return samples if value(samples, "stack_queue_depth", queue="logs") == 3 else None

    samples = eventually(deep, what="stack_queue_depth{queue=logs} 3")
    assert value(samples, "stack_workers", queue="logs") == 0
    assert value(samples, "stack_workers", queue="default") == 1
    assert value(samples, "stack_jobs", queue="logs", kind="write_log", status="pending") == 3
    assert (value(samples, "stack_queue_oldest_pending_seconds", queue="logs") or 0) > 0
    assert value(samples, "stack_up", component="broker") == 1


def test_finished_jobs_are_counted_by_any_api_process(
    stack_api: JobClient, scraper: Callable[[], Samples]
) -> None:
    # Four at once on a worker with two pool processes: recorded by both, added up in Redis.
    jobs = [stack_api.submit("demo", {"seconds": 0.3, "steps": 3}) for _ in range(4)]
    failed = stack_api.submit("demo", {"seconds": 0, "steps": 2, "fail_at": 1})
    retried = stack_api.submit("demo", {"seconds": 0, "steps": 1, "transient_failures": 1})
    for job in [*jobs, retried]:
        assert stack_api.follow(job, timeout=30).final["status"] == "success"
    assert stack_api.follow(failed, timeout=30).final["status"] == "failure"

    def counted() -> Samples | None:
        samples = scraper()
        done = value(samples, "stack_job_duration_seconds_count", kind="demo", status="success")
        return samples if done == 5 else None

    samples = eventually(counted, what="5 successful demo jobs in stack_job_duration_seconds")
    duration_sum = value(samples, "stack_job_duration_seconds_sum", kind="demo", status="success") or 0
    assert 4 * 0.3 <= duration_sum < 30
    assert value(samples, "stack_job_duration_seconds_count", kind="demo", status="failure") == 1
    assert value(samples, "stack_job_failures_total", kind="demo") == 1
    assert value(samples, "stack_job_retries_total", kind="demo") == 1
    assert value(samples, "stack_job_wait_seconds_count", queue="default") == 6
    assert value(samples, "stack_worker_lost_total", kind="demo") == 0
    # Whichever of the two API processes answers, the totals are the same once its snapshot
    # (at most ~1.5 s old) is renewed.
    time.sleep(1.6)
    for _ in range(6):
        again = scraper()
        assert value(again, "stack_job_duration_seconds_count", kind="demo", status="success") == 5


def test_metrics_need_a_token(stack_processes: ProcfileStack) -> None:
    response = httpx.get(f"{stack_processes.api_url}/metrics", timeout=10)
    assert response.status_code == 401


def test_a_scrape_reads_no_finished_job(
    stack_processes: ProcfileStack, record_property: pytest.RecordProperty
) -> None:
    """10,000 finished jobs in the table: one scrape's time, and what it made PostgreSQL read."""
    url = normalise_database_url(stack_processes.env["DATABASE_URL"])
    assert url is not None
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO stack_jobs (id, kind, queue, status, progress, message, params, attempts, "
                    "lost_attempts, created_at, updated_at, started_at, claimed_at, finished_at) "
                    "SELECT 'finished-' || n, 'demo', 'default', 'success', 100, 'done', '{}', 1, 0, "
                    "now() - interval '1 hour', now(), now(), now(), now() FROM generate_series(1, 10000) n"
                )
            )
            connection.execute(text("ANALYZE stack_jobs"))
        timings, cached = [], []
        # One kept-alive connection: the same API process every time, and only the server's time
        # (a new httpx client costs 20+ ms by itself, most of it loading CA certificates).
        headers = {"Authorization": f"Bearer {READ_ONLY}"}
        with httpx.Client(base_url=stack_processes.api_url, headers=headers, timeout=10) as http:
            http.get("/metrics").raise_for_status()
            for _ in range(5):
                time.sleep(1.6)  # past the snapshot cache: this scrape reads the database
                started = time.perf_counter()
                http.get("/metrics").raise_for_status()
                timings.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                http.get("/metrics").raise_for_status()  # within the cache
                cached.append((time.perf_counter() - started) * 1000)
        with engine.connect() as connection:
            plan = "\n".join(
                row[0]
                for row in connection.execute(
                    text(
                        "EXPLAIN (ANALYZE, BUFFERS) SELECT queue, kind, status, count(*), min(updated_at) "
                        "FROM stack_jobs WHERE status IN ('pending', 'started', 'progress', 'retry') "
                        "GROUP BY queue, kind, status"
                    )
                )
            )
    finally:
        engine.dispose()
    timings.sort()
    cached.sort()
    record_property("scrape_ms_median", round(timings[2], 1))
    record_property("cached_scrape_ms_median", round(cached[2], 1))
    print(
        f"\nscrape with 10,000 finished jobs, cold: {', '.join(f'{t:.1f}' for t in timings)} ms; "
        f"right after: {', '.join(f'{t:.1f}' for t in cached)} ms\n{plan}"
    )
    assert "Seq Scan" not in plan, plan
    assert timings[2] < 500, timings
