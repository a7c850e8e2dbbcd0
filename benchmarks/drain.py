"""Pipeline drain: N queued jobs through our job layer against N bare Celery no-op tasks.

Both run on the same worker command line (the stack's worker role: pool, concurrency, prefetch,
acks_late, events). To time the workers and not the submitting, a worker first stops consuming its
queue, the messages are queued, and the clock starts when it consumes again; it stops at the last
`task-succeeded` event (the worker sends them for both).

Both workers run side by side, and the N jobs of each are drained in rounds of N/2 in the order
ours, bare, bare, ours (benchmarks.rounds), the idle worker's CPU left out of each round's.
Each worker first drains a few untimed jobs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bare import BARE_QUEUE, NOOP_TASK, create_bare_celery
from benchmarks.cpu import CpuMeter, describe, process_trees
from benchmarks.rounds import interleave, share
from loadtests import stackproc
from stack import roles
from stack.config import Settings, load_settings

log = logging.getLogger(__name__)

BARE_APP = "benchmarks.bare:celery_app"


class DrainError(RuntimeError):
    pass


@dataclass
class DrainFigures:
    name: str
    jobs: int
    seconds: float
    failed: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # µs per job, by group

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


class SuccessCounter:
    """Counts task-succeeded (and task-failed) events of the given task ids, in a thread."""

    def __init__(self, app: Any, ids: set[str]) -> None:
        self.app = app
        self.ids = ids
        self.succeeded = 0
        self.failed = 0
        self.done = threading.Event()
        self.last_at = 0.0
        self._receiver: Any = None
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drain-events", daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("uuid") not in self.ids:
            return
        if event["type"] == "task-succeeded":
            self.succeeded += 1
        else:
            self.failed += 1
        if self.succeeded + self.failed >= len(self.ids):
            self.last_at = time.perf_counter()
            self.done.set()
            self._receiver.should_stop = True

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(
                conn,
                handlers={"task-succeeded": self._on_event, "task-failed": self._on_event, "*": _ignore},
            )
            # Events are pub/sub: any sent before we subscribe are lost, so the clock may only
            # start once the consumer is declared.
            receiver.on_consume_ready = lambda *args, **kwargs: self._subscribed.set()
            self._receiver = receiver
            receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self, timeout: float = 10) -> None:
        self._thread.start()
        if not self._subscribed.wait(timeout):
            raise DrainError(f"the event receiver did not subscribe within {timeout:g} s")

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        # The receiver checks should_stop between drains of at most a second.
        self._thread.join(timeout=5)


def _ignore(event: dict[str, Any]) -> None:
    return None


def _set_consuming(app: Any, node: str, queue: str, *, consume: bool) -> None:
    control = app.control
    call = control.add_consumer if consume else control.cancel_consumer
    replies = call(queue, destination=[node], reply=True, timeout=5)
    if not replies:
        raise DrainError(f"worker {node} did not answer {'add' if consume else 'cancel'}_consumer({queue})")


# Untimed jobs each worker drains first: its pool processes connect and import on their first jobs.
WARMUP_JOBS = 50


@dataclass
class DrainSide:
    """One side of the drain: its running worker, its Celery app and queue, and how it submits."""

    name: str
    app: Any
    queue: str
    submit: Callable[[], str]  # queues one message, returns its task id
    worker: stackproc.StackProcess
    # What the submitting left to do in the background, done before the clock starts.
    settle: Callable[[], object] = lambda: None


def drain(side: DrainSide, *, count: int, timeout: float, idle: Collection[int] = ()) -> DrainFigures:
    """Pause `side`'s worker, queue `count` messages, settle, resume and time until all succeeded.
    The CPU of the processes in `idle` (the other side's paused worker) is left out."""
    assert side.worker.node is not None
    _set_consuming(side.app, side.worker.node, side.queue, consume=False)
    ids = {side.submit() for _ in range(count)}
    side.settle()
    counter = SuccessCounter(side.app, ids)
    counter.start()
    try:
        with CpuMeter(exclude=idle) as meter:
            started = time.perf_counter()
            _set_consuming(side.app, side.worker.node, side.queue, consume=True)
            if not counter.done.wait(timeout):
                finished = counter.succeeded + counter.failed
                raise DrainError(f"{side.name}: {finished} of {count} tasks finished within {timeout:g} s")
    finally:
        counter.stop()
    cpu = meter.per_operation(count)
    seconds = counter.last_at - started
    log.info("%s: drained %d in %.2f s (%s per job)", side.name, count, seconds, describe(cpu))
    return DrainFigures(name=side.name, jobs=count, seconds=seconds, failed=counter.failed, cpu=cpu)


def combine(rounds: list[DrainFigures]) -> DrainFigures:
    """One side's rounds as one drain: all its jobs over all its timed seconds."""
    jobs = sum(r.jobs for r in rounds)
    groups = {group for r in rounds for group in r.cpu}
    return DrainFigures(
        name=rounds[0].name,
        jobs=jobs,
        seconds=sum(r.seconds for r in rounds),
        failed=sum(r.failed for r in rounds),
        cpu={g: sum(r.cpu.get(g, 0.0) * r.jobs for r in rounds) / jobs for g in groups} if jobs else {},
    )


def interleaved(sides: dict[str, DrainSide], *, count: int, timeout: float) -> dict[str, DrainFigures]:
    """Warm every side up, then drain `count` messages per side in interleaved rounds."""
    for side in sides.values():
        drain(side, count=WARMUP_JOBS, timeout=timeout)

    def one_round(name: str, index: int) -> DrainFigures:
        idle = process_trees(side.worker.pid for side in sides.values() if side.name != name)
        return drain(sides[name], count=share(count, name, index), timeout=timeout, idle=idle)

    return {name: combine(rounds) for name, rounds in interleave(one_round).items()}


def worker_argv(settings: Settings, *, app: str | None = None, queue: str | None = None) -> list[str]:
    """The worker role's command line; `app` and `queue` swap in the baseline, nothing else."""
    launch = roles.worker(settings, all_queues=[queue] if queue else ["default"])
    argv = launch.argv
    if app is not None:
        argv = [app if part == roles.CELERY_APP else part for part in argv]
    return argv


def worker_settings(stack: stackproc.StackEnv, *, name: str, queues: str = "all") -> Settings:
    """The settings `stack run worker` builds its command line from, for this StackEnv."""
    return load_settings(
        redis_url=stack.redis_url,
        database_url=stack.database_url,
        data_dir=stack.data_dir,
        worker_pool=stack.worker_pool,
        worker_concurrency=stack.worker_concurrency,
        worker_name=f"{name}@%h",
        worker_queues=queues,
        log_level=stack.log_level,
    )


def run_drain(
    *,
    stack: stackproc.StackEnv,
    bare: stackproc.StackEnv,
    log_dir: Path,
    count: int,
    steps: int,
    timeout: float,
) -> tuple[DrainFigures, DrainFigures]:
    from stack.jobs.celery_app import create_celery
    from stack.jobs.registry import load_registry
    from stack.jobs.service import JobService
    from stack.runtime import build_runtime

    settings = worker_settings(stack, name="ours")
    registry = load_registry(settings.kinds)
    kind = registry.get("demo")
    runtime = build_runtime(settings, registry)
    celery = create_celery(settings, registry)
    service = JobService(runtime, celery)
    params = kind.validate({"seconds": 0, "steps": steps}).model_dump(mode="json")

    bare_settings = worker_settings(bare, name="bare", queues=BARE_QUEUE)
    bare_celery = create_bare_celery(bare_settings)

    def submit_bare() -> str:
        task_id = str(uuid.uuid4())
        bare_celery.send_task(NOOP_TASK, args=[task_id], task_id=task_id, queue=BARE_QUEUE)
        return task_id

    try:
        with stackproc.running(
            lambda: stackproc.start_worker(
                stack, log_dir=log_dir, name="ours", argv=worker_argv(settings, queue=None)
            ),
            lambda: stackproc.start_worker(
                bare,
                log_dir=log_dir,
                name="bare",
                argv=worker_argv(bare_settings, app=BARE_APP, queue=BARE_QUEUE),
            ),
        ) as (ours_worker, bare_worker):
            sides = {
                "ours": DrainSide(
                    "ours",
                    celery,
                    kind.queue,
                    submit=lambda: service.submit(kind, params).id,
                    worker=ours_worker,
                    # The submits' dispatch marks (one UPDATE of the rows) must not land during
                    # the drain: they would compete with the claims the clock measures.
                    settle=lambda: service.dispatched.flush(60),
                ),
                "bare": DrainSide("bare", bare_celery, BARE_QUEUE, submit=submit_bare, worker=bare_worker),
            }
            figures = interleaved(sides, count=count, timeout=timeout)
    finally:
        service.close()  # writes its pending dispatch marks before the engines go
        runtime.store.dispose()
    return figures["ours"], figures["bare"]
