"""The canary: one real job through each queue, as the API would send it (row first, then the
message), timed until the worker marks it done. Proves broker -> worker -> database end to end.

Each queue's canary is its cheapest kind that can run: `demo` preferred (seconds=0), else the
first kind whose params model validates one of its JSON-schema `examples` (an app gives a kind
cheap example params to have it canaried), else `{}`. Canary rows are marked (`canary`, left out
of GET /api/jobs unless `?canary=true`) and the files they wrote are removed after the check.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import ValidationError

from stack.doctor.result import CheckResult, fail, ok, warn
from stack.jobs.models import Job, JobStatus
from stack.jobs.registry import JobKind, JobRegistry, outputs_dir
from stack.jobs.service import publish
from stack.jobs.store import JobStore

log = logging.getLogger(__name__)

CANARY_MESSAGE = "stack doctor canary"
# Cheapest params first, for the kinds known to be canary-friendly; demo's carry a mark.
CHEAP_PARAMS: dict[str, list[dict[str, Any]]] = {
    "demo": [
        {"seconds": 0, "steps": 1, "message": CANARY_MESSAGE},
        {"seconds": 0, "steps": 1},
        {"seconds": 0},
    ]
}
POLL_INTERVAL = 0.05


@dataclass
class Canary:
    queue: str
    kind: JobKind
    params: dict[str, Any]
    job_id: str = ""
    sent_at: float = 0.0
    error: str = ""
    final: Job | None = None
    took: float = 0.0


def candidate_params(kind: JobKind) -> list[dict[str, Any]]:
    """Params to try, cheapest first: ours for known kinds, the model's examples, the defaults."""
    examples = kind.params.model_json_schema().get("examples") or []
    return [*CHEAP_PARAMS.get(kind.name, []), *(e for e in examples if isinstance(e, dict)), {}]


def pick(registry: JobRegistry, queue: str) -> tuple[JobKind, dict[str, Any]] | None:
    kinds = sorted((k for k in registry if k.queue == queue), key=lambda k: (k.name != "demo", k.name))
    for kind in kinds:
        for raw in candidate_params(kind):
            try:
                return kind, kind.validate(raw).model_dump(mode="json")
            except ValidationError:
                continue
    return None


def run_canaries(
    app: Celery,
    store: JobStore,
    registry: JobRegistry,
    queues: list[str],
    *,
    timeout: float,
    storage_dir: Path | None = None,
) -> list[CheckResult]:
    """One canary per queue, all in flight at once, so the slowest queue bounds the wait. The
    files the canaries wrote under `storage_dir` (STACK_STORAGE_DIR) are removed afterwards."""
    results: list[CheckResult] = []
    canaries: list[Canary] = []
    for queue in queues:
        chosen = pick(registry, queue)
        if chosen is None:
            results.append(
                warn(
                    f"canary {queue}",
                    f"skipped: no kind on queue '{queue}' has params it can run with",
                    "give one of its kinds' params models cheap `examples` (pydantic "
                    "json_schema_extra) or defaults for every param, to have it tested end to end",
                )
            )
            continue
        canaries.append(Canary(queue, *chosen))
    for canary in canaries:
        _send(app, store, canary)
    _wait(store, [c for c in canaries if not c.error], timeout=timeout)
    results += [_judge(store, canary, timeout) for canary in canaries]
    if storage_dir is not None:
        for canary in canaries:
            if canary.job_id:  # a canary still running writes after this: rare, and harmless
                shutil.rmtree(outputs_dir(storage_dir, canary.job_id), ignore_errors=True)
    return sorted(results, key=lambda r: r.name)


def _send(app: Celery, store: JobStore, canary: Canary) -> None:
    """Exactly what the API does on submit: commit the row, then publish its id."""
    kind = canary.kind
    try:
        canary.sent_at = time.monotonic()
        canary.job_id = store.create(kind=kind.name, queue=canary.queue, params=canary.params, canary=True).id
    except Exception as exc:  # a database error is the finding itself
        canary.error = f"{type(exc).__name__}: {exc}"
        return
    try:
        publish(app, kind, canary.job_id)
    except Exception as exc:  # kept for the report; the row must not linger for the sweep
        canary.error = f"{type(exc).__name__}: {exc}"
        store.revoke(canary.job_id, message="doctor canary could not be sent")
        return
    store.mark_dispatched([canary.job_id])


def _wait(store: JobStore, canaries: list[Canary], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(canaries)
    while waiting and time.monotonic() < deadline:
        for canary in list(waiting):
            job = store.get(canary.job_id)
            if job is not None and job.status.is_terminal:
                canary.final, canary.took = job, time.monotonic() - canary.sent_at
                waiting.remove(canary)
        if waiting:
            time.sleep(POLL_INTERVAL)


def _judge(store: JobStore, canary: Canary, timeout: float) -> CheckResult:
    name = f"canary {canary.queue}"
    kind = canary.kind.name
    if canary.error:
        return fail(
            name, f"could not send a {kind} job: {canary.error}", "see the broker and database lines above"
        )
    job = canary.final
    if job is None:
        stuck = store.revoke(canary.job_id, message="doctor canary timed out") or store.get(canary.job_id)
        where = f"{stuck.status.value} at {stuck.progress}%" if stuck else "its row vanished"
        return fail(
            name,
            f"{kind} job {canary.job_id} did not finish within {timeout:g} s ({where})",
            f"see the lines above for queue '{canary.queue}', and the worker's log",
            job_id=canary.job_id,
        )
    data = {"job_id": job.id, "kind": kind, "seconds": round(canary.took, 3), "worker": job.worker}
    if job.status is JobStatus.SUCCESS:
        return ok(name, f"{kind} ran end to end in {canary.took:.2f} s on {job.worker}", **data)
    error = (job.error or job.message or "").strip().splitlines()[-1:] or [""]
    return fail(
        name,
        f"{kind} job {job.id} ended {job.status.value} on {job.worker}: {error[0][:200]}",
        "see the worker's log for the traceback",
        **data,
    )
