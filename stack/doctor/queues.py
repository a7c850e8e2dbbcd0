"""Checks of the workers and queues, from facts gathered by `probe.py`: who is alive, whether they
share this environment's broker and database, and whether every routed queue has a consumer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from stack.doctor.probe import PendingStats, WorkerInfo, WorkerView
from stack.doctor.procfiles import WorkerLine, fix_for_queue, line_for
from stack.doctor.result import CheckResult, fail, human_seconds, ok, warn
from stack.jobs.registry import TASK_PREFIX, JobRegistry

# A job pending this long on a queue that has consumers means the workers cannot keep up.
BACKLOG_WARN_AFTER = 60.0

# Fingerprint keys (Settings.fingerprint()) and the variables that decide them.
VARIABLES = {
    "broker": "CELERY_BROKER_URL (or REDIS_URL)",
    "database": "DATABASE_URL",
    "result_backend": "CELERY_RESULT_BACKEND (or REDIS_URL)",
    "kinds": "STACK_KINDS",
}
SAME_EVERYWHERE = "set {} to the same value for the API and every worker (compare `stack config` in each)"


def variable(key: str) -> str:
    return VARIABLES.get(key, f"STACK_{key.upper()}")


def check_workers(
    view: WorkerView, *, broker: str, lines: list[WorkerLine], timeout: float
) -> list[CheckResult]:
    if not view.workers:
        line = line_for("default", lines)
        where = f"  (or the Procfile line {line.quoted()})" if line else ""
        return [
            fail(
                "workers",
                f"no worker answered a ping on {broker} within {timeout:g} s",
                f"start one: stack run worker{where}",
            )
        ]
    return [ok(f"worker {info.name}", describe(info), **_facts(info)) for info in view.workers.values()]


def describe(info: WorkerInfo) -> str:
    queues = ", ".join(info.queues) or "(none reported)"
    pool = f"{info.pool or '?'} x{info.concurrency}" if info.concurrency else info.pool or "pool unknown"
    return f"alive; queues {queues}; pool {pool}"


def _facts(info: WorkerInfo) -> dict[str, object]:
    return {"queues": list(info.queues), "pool": info.pool, "concurrency": info.concurrency}


def check_agreement(
    view: WorkerView,
    *,
    own: Mapping[str, str],
    registry: JobRegistry,
    elsewhere: Mapping[str, WorkerView],
    broker: str,
) -> list[CheckResult]:
    """Workers must send work where the API does: same broker, same database, same kinds."""
    results: list[CheckResult] = []
    for info in view.workers.values():
        results += _compare(info, own)
        results += _unknown_kinds(info, registry)
    routed = set(registry.queues())
    for url, other in elsewhere.items():
        for info in other.workers.values():
            results += _on_another_broker(info, url, broker=broker, own=own, routed=routed)
    if not results and view.workers:
        results.append(ok("config", f"{len(view.workers)} worker(s) use this broker and database"))
    return results


def _compare(info: WorkerInfo, own: Mapping[str, str]) -> list[CheckResult]:
    name = f"config {info.name}"
    if info.fingerprint is None:
        return [
            warn(
                name,
                f"worker {info.name} runs an older stack without fingerprints: cannot compare its settings",
                "upgrade it, so that it imports stack.jobs.control",
            )
        ]
    results = []
    for key in sorted(set(own) & set(info.fingerprint)):
        if own[key] == info.fingerprint[key]:
            continue
        detail = (
            f"worker {info.name} and this environment disagree on {variable(key)} "
            f"(worker {info.fingerprint[key]}, here {own[key]})"
        )
        if key == "broker":
            # It answered on our broker, so it reaches it, under another URL (host alias, password).
            results.append(
                warn(name, detail + ": same broker under another URL", SAME_EVERYWHERE.format(variable(key)))
            )
        else:
            results.append(fail(name, detail, SAME_EVERYWHERE.format(variable(key)), key=key))
    return results


def _unknown_kinds(info: WorkerInfo, registry: JobRegistry) -> list[CheckResult]:
    if info.kinds is None:
        return []
    missing = sorted(k.name for k in registry if k.queue in info.queues and k.name not in info.kinds)
    if not missing:
        return []
    return [
        fail(
            f"config {info.name}",
            f"worker {info.name} consumes their queues but does not know the kinds {', '.join(missing)}: "
            "STACK_KINDS or the deployed code differs",
            SAME_EVERYWHERE.format("STACK_KINDS") + ", and deploy the same code",
            key="kinds",
        )
    ]


def _on_another_broker(
    info: WorkerInfo, url: str, *, broker: str, own: Mapping[str, str], routed: set[str]
) -> list[CheckResult]:
    ours = sorted(routed & set(info.queues))
    same_database = info.fingerprint is not None and info.fingerprint.get("database") == own.get("database")
    if not same_database and not ours:
        return []  # another application sharing the Redis server
    detail = (
        f"worker {info.name} consumes {', '.join(ours) or ', '.join(info.queues)} on another broker, "
        f"{url} (here {broker}): it never sees this API's jobs"
    )
    fix = SAME_EVERYWHERE.format(variable("broker"))
    if same_database:
        return [fail(f"config {info.name}", detail, fix, key="broker", url=url)]
    return [warn(f"config {info.name}", detail + ", if it belongs to this application", fix, url=url)]


def routes_of(task_routes: Mapping[str, Any], registry: JobRegistry) -> dict[str, list[str]]:
    """{queue: what is routed there}: job kinds by name, other tasks by task name."""
    routes: dict[str, list[str]] = {}
    for kind in registry:
        routes.setdefault(kind.queue, []).append(kind.name)
    for task, route in task_routes.items():
        queue = route.get("queue") if isinstance(route, Mapping) else None
        if queue and not task.startswith(TASK_PREFIX):
            routes.setdefault(queue, []).append(task)
    return {queue: sorted(names) for queue, names in sorted(routes.items())}


def check_queues(
    routes: Mapping[str, list[str]],
    view: WorkerView,
    *,
    depths: Mapping[str, int] | None,
    pending: Mapping[str, PendingStats] | None,
    lines: list[WorkerLine],
    now: datetime | None = None,
) -> list[CheckResult]:
    results = []
    for queue, routed in routes.items():
        kinds = ", ".join(routed)
        consumers = view.consumers(queue)
        stats = (pending or {}).get(queue)
        facts, data = _backlog(queue, depths, stats, now)
        data.update(kinds=list(routed), consumers=consumers)
        name = f"queue {queue}"
        if not consumers:
            detail = f"no worker consumes queue '{queue}' (kinds: {kinds}){facts}"
            results.append(fail(name, detail, fix_for_queue(queue, lines), **data))
        elif stats is not None and stats.age(now) > BACKLOG_WARN_AFTER:
            detail = f"consumed by {', '.join(consumers)}, but jobs wait{facts}"
            fix = "add workers for this queue, or raise STACK_WORKER_CONCURRENCY"
            results.append(warn(name, detail, fix, **data))
        else:
            results.append(ok(name, f"consumed by {', '.join(consumers)}{facts}", **data))
    return results


def _backlog(
    queue: str, depths: Mapping[str, int] | None, stats: PendingStats | None, now: datetime | None
) -> tuple[str, dict[str, object]]:
    parts: list[str] = []
    data: dict[str, object] = {}
    if depths is not None and queue in depths:
        data["depth"] = depths[queue]
        parts.append(f"{depths[queue]} waiting")
    if stats is not None:
        age = stats.age(now)
        data.update(pending=stats.count, oldest_pending_seconds=round(age, 1))
        parts.append(f"{stats.count} pending job(s), oldest {human_seconds(age)}")
        if stats.undispatched:
            data["undispatched"] = stats.undispatched
            parts.append(f"{stats.undispatched} never reached the broker (the sweep re-sends them)")
        missing = stats.sent - depths[queue] if depths and queue in depths else 0
        if missing > 0:
            # Pending and sent, yet neither queued nor claimed: lost by the broker (a restart
            # without persistence), or taken by a worker this very moment.
            data["missing"] = missing
            parts.append(f"{missing} sent but no longer queued (the sweep sends lost ones again)")
    return ("; " + "; ".join(parts) if parts else ""), data
