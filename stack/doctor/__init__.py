"""`stack doctor`: every check against the configured environment, one CheckResult each.

Run it with the API's environment (`docker compose exec api stack doctor`): "this environment" in
its messages is the API's side, and the workers are compared against it. Every probe has a
timeout, and the probes that need the broker are skipped when it does not answer, so a dead
broker costs about one connection timeout.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine, create_engine

from stack.config import Settings, redact_url
from stack.doctor import checks, namespaces, queues
from stack.doctor.canary import run_canaries
from stack.doctor.probe import (
    FINGERPRINT_COMMAND,
    WorkerView,
    celery_bindings,
    gather_workers,
    in_parallel,
    is_redis_url,
    other_celery_dbs,
    pending_by_queue,
    probe_app,
    queue_depths,
    redis_client,
    with_db,
)
from stack.doctor.procfiles import running_procfile, worker_lines
from stack.doctor.result import CheckResult, Status, all_passed, fail, ok, warn
from stack.jobs.celery_app import create_celery
from stack.jobs.registry import JobRegistry, load_registry
from stack.jobs.store import JobStore

__all__ = ["CheckResult", "Status", "all_passed", "run_doctor"]

log = logging.getLogger(__name__)

INSPECT_TIMEOUT = 1.0  # how long broadcasts wait for worker replies (Celery's own default)
CANARY_TIMEOUT = 15.0


def run_doctor(
    settings: Settings,
    *,
    registry: JobRegistry | None = None,
    canary: bool = True,
    timeout: float | None = None,
    inspect_timeout: float = INSPECT_TIMEOUT,
    canary_timeout: float = CANARY_TIMEOUT,
    root: Path | None = None,
) -> list[CheckResult]:
    registry = registry or load_registry(settings.kinds)
    timeout = timeout or settings.broker_timeout
    engine = doctor_engine(settings, timeout=timeout)
    try:
        results = _reachability(settings, engine, timeout=timeout)
        database_ok = all(r.status is Status.OK for r in results if r.name in ("database", "migrations"))
        if not settings.celery_enabled:
            detail = "CELERY_ENABLED=false: the API runs jobs inline; no broker or worker needed"
            return [*results, ok("broker", detail)]
        if any(r.failed for r in results if r.name == "broker"):
            return [*results, warn("workers", "not checked: the broker does not answer")]
        app = create_celery(settings, registry)
        try:
            results += _celery_checks(
                settings,
                app,
                registry,
                engine if database_ok else None,
                timeout=timeout,
                inspect_timeout=inspect_timeout,
                canary_timeout=canary_timeout if canary else None,
                root=root or Path.cwd(),
            )
        finally:
            app.close()
        return results
    finally:
        engine.dispose()


def _reachability(settings: Settings, engine: Engine, *, timeout: float) -> list[CheckResult]:
    """Database (and its migrations), broker and result backend, side by side: with all three
    down, doctor waits one timeout, not three."""

    def database() -> list[CheckResult]:
        reached = checks.check_database(settings, engine, timeout=timeout)
        return [reached] if reached.failed else [reached, checks.check_migrations(engine, timeout=timeout)]

    calls: dict[str, Any] = {"database": database}
    if settings.celery_enabled:
        calls["broker"] = lambda: [checks.check_broker(settings, timeout=timeout)]
        calls["result backend"] = lambda: [checks.check_result_backend(settings, timeout=timeout)]
    found = in_parallel(calls, seconds=3 * timeout + 3)  # each check has its own, shorter deadline
    results: list[CheckResult] = []
    for name, outcome in found.items():
        if isinstance(outcome, Exception):
            results.append(
                fail(name, f"{type(outcome).__name__}: {outcome}", "run `stack -v doctor` for the traceback")
            )
        else:
            results += outcome
    return results


def doctor_engine(settings: Settings, *, timeout: float) -> Engine:
    """An engine that gives up connecting after `timeout` (the app's waits 5 s) and, unlike the
    app's, never creates a missing SQLite folder: doctor observes, it does not set up."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": timeout})
    connect_timeout = max(2, math.ceil(timeout))  # libpq's minimum
    return create_engine(
        url, connect_args={"connect_timeout": connect_timeout, "application_name": "stack-doctor"}
    )


def _celery_checks(
    settings: Settings,
    app: Celery,
    registry: JobRegistry,
    engine: Engine | None,
    *,
    timeout: float,
    inspect_timeout: float,
    canary_timeout: float | None,
    root: Path,
) -> list[CheckResult]:
    routes = queues.routes_of(app.conf.task_routes or {}, registry)
    facts = _gather(settings, app, list(routes), engine, timeout=timeout, inspect_timeout=inspect_timeout)
    view: WorkerView = facts["workers"] if isinstance(facts["workers"], WorkerView) else WorkerView()
    lines = worker_lines(
        root, running=(root / settings.procfile) if settings.procfile else running_procfile(root)
    )
    broker = redact_url(settings.broker_url)
    results = queues.check_workers(view, broker=broker, lines=lines, timeout=inspect_timeout)
    elsewhere = facts["elsewhere"] if isinstance(facts["elsewhere"], dict) else {}
    results += queues.check_agreement(
        view, own=settings.fingerprint(), registry=registry, elsewhere=elsewhere, broker=broker
    )
    results += _unknown_facts(facts)
    if isinstance(facts["bindings"], dict):
        results.append(
            namespaces.check_namespace(
                facts["bindings"], namespace=settings.effective_namespace, queues=["default", *routes]
            )
        )
    results += queues.check_queues(
        routes,
        view,
        depths=_value(facts["depths"]),
        pending=_value(facts["pending"]),
        lines=lines,
    )
    if engine is not None:
        store = JobStore(engine)
        owners = Counter(job.worker_id or "" for job in store.running_owned(limit=10_000))
        workers = list(store.workers().values())
        results.append(checks.check_heartbeats(workers, owners, settings=settings))
    results.append(
        checks.check_beat(
            # Beat runs the sweep itself (stack.jobs.beat), besides the app's own schedule.
            periodic=["the sweep", *sorted(app.conf.beat_schedule or {})],
            beat_nodes=view.beat_nodes,
            remote_control=bool(app.conf.get("beat_enable_remote_control")),
            schedule_files=sorted(settings.data_dir.resolve().glob("celerybeat-schedule*")),
        )
    )
    if canary_timeout is not None and engine is not None:
        served = [q for q in registry.queues() if view.consumers(q)]
        results += run_canaries(
            app,
            JobStore(engine),
            registry,
            served,
            timeout=canary_timeout,
            storage_dir=settings.effective_storage_dir,
        )
    return results


def _gather(
    settings: Settings,
    app: Celery,
    routed: list[str],
    engine: Engine | None,
    *,
    timeout: float,
    inspect_timeout: float,
) -> dict[str, Any]:
    """Workers, workers on other Redis databases, queue depths and pending jobs, all at once."""
    url, prefix = settings.broker_url, settings.redis_prefix
    redis_broker = is_redis_url(url)

    def depths() -> dict[str, int] | None:
        if not redis_broker:
            return None
        with redis_client(url, timeout=timeout) as client:
            return queue_depths(client, routed, prefix=prefix)

    def bindings() -> dict[str, set[str]] | None:
        if not redis_broker:
            return None
        with redis_client(url, timeout=timeout) as client:
            return celery_bindings(client)

    calls = {
        "workers": lambda: gather_workers(app, timeout=inspect_timeout),
        "elsewhere": lambda: (
            scan_other_dbs(url, timeout=timeout, inspect_timeout=inspect_timeout, prefix=prefix)
            if redis_broker
            else {}
        ),
        "depths": depths,
        "bindings": bindings,
        "pending": lambda: pending_by_queue(engine) if engine is not None else None,
    }
    return in_parallel(calls, seconds=inspect_timeout + 2 * timeout + 1)


def scan_other_dbs(url: str, *, timeout: float, inspect_timeout: float, prefix: str) -> dict[str, WorkerView]:
    """Workers answering on the other Redis databases of the broker's server, by redacted URL:
    the usual shape of "the worker has another REDIS_URL" on one machine."""
    urls = [with_db(url, db) for db in other_celery_dbs(url, timeout=timeout, prefix=prefix)]

    def ask(other: str) -> WorkerView:
        app = probe_app(other, timeout=timeout, prefix=prefix)
        try:
            return gather_workers(
                app, timeout=inspect_timeout, commands=("active_queues", FINGERPRINT_COMMAND)
            )
        finally:
            app.close()

    views = in_parallel({u: functools.partial(ask, u) for u in urls}, seconds=inspect_timeout + timeout + 1)
    return {redact_url(u): v for u, v in views.items() if isinstance(v, WorkerView) and v.workers}


def _value(fact: Any) -> Any:
    return None if isinstance(fact, Exception) else fact


def _unknown_facts(facts: dict[str, Any]) -> list[CheckResult]:
    """A probe that failed is worth a line: the checks built on it know less than usual."""
    labels = {
        "workers": "workers",
        "elsewhere": "other brokers",
        "depths": "queue depths",
        "bindings": "namespace",
        "pending": "pending jobs",
    }
    return [
        warn(labels[name], f"unknown: {type(fact).__name__}: {fact}")
        for name, fact in facts.items()
        if isinstance(fact, Exception)
    ]
