"""Why a job waits: the `hint` of `GET /api/jobs/{id}` for a job pending longer than HINT_AFTER.

Answering that needs the workers' queues (a Celery broadcast) and the queue depths (Redis), far
too slow and too noisy for every poll of every client. A background thread keeps one cached view
instead, refreshed every few seconds, and only while somebody asks: an API nobody polls about a
late job sends no broadcast at all. Requests only read the cache, so they never wait on the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from celery import Celery

from stack.checks import check_broker
from stack.config import Settings, redact_url
from stack.doctor.probe import gather_workers, is_redis_url, queue_depths, redis_client, unacked_count
from stack.doctor.procfiles import start_command
from stack.jobs.models import RUNNING_STATUSES, Job, JobStatus, Worker, as_utc

log = logging.getLogger(__name__)

HINT_AFTER = 10.0  # seconds pending before a job gets a hint
REFRESH_EVERY = 3.0  # seconds between two refreshes of the view while hints are asked for
DEMAND_WINDOW = 60.0  # keep refreshing this long after the last request that needed a hint
STALE_AFTER = 15.0  # an older view (refresher stuck on a dying broker) is not trusted
INSPECT_TIMEOUT = 1.0


@dataclass(frozen=True)
class QueueView:
    """What the workers and the broker looked like at `at` (time.monotonic())."""

    at: float
    broker: str  # redacted URL
    broker_ok: bool = True
    workers: tuple[str, ...] = ()
    consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    depths: dict[str, int] | None = None  # None: not a Redis broker
    unacked: int = 0


def select_hint(view: QueueView, queue: str, *, dispatched: bool) -> str | None:
    """The one most likely reason a job on `queue` is still pending; None if nothing is wrong."""
    if not view.broker_ok:
        return f"the broker is unreachable ({view.broker}); the job runs once it answers"
    if not dispatched:
        return "not handed to the broker yet (it was unreachable at submit); the sweep sends it again"
    if not view.workers:
        return f"no worker is running on {view.broker}; start one: stack run worker"
    if not view.consumers.get(queue):
        return f"no worker consumes queue '{queue}'; start one: {start_command(queue)}"
    depth = (view.depths or {}).get(queue, 0)
    if depth or view.unacked:
        return f"workers are alive but all busy (queue depth {depth})"
    if view.depths is not None:  # a Redis queue we can see into, and it is empty
        return (
            f"its message is no longer in queue '{queue}' (lost by the broker, e.g. a Redis restart "
            "without persistence); beat's sweep sends it again: is `stack run beat` running?"
        )
    return None


def probe_view(
    app: Celery,
    *,
    broker_url: str,
    prefix: str,
    queues: Iterable[str],
    timeout: float,
    inspect_timeout: float = INSPECT_TIMEOUT,
) -> QueueView:
    """One refresh: broker reachable? who consumes what? how deep is each queue?"""
    shown = redact_url(broker_url)
    queues = list(queues)
    depths: dict[str, int] | None = None
    unacked = 0
    try:
        if is_redis_url(broker_url):
            with redis_client(broker_url, timeout=timeout) as client:
                depths = queue_depths(client, queues, prefix=prefix)
                unacked = unacked_count(client, prefix=prefix)
        elif not check_broker(broker_url, timeout=timeout).ok:
            return QueueView(at=time.monotonic(), broker=shown, broker_ok=False)
    except Exception as exc:  # any client error here means the broker does not answer
        log.debug("hint probe: broker %s unreachable: %s", shown, exc)
        return QueueView(at=time.monotonic(), broker=shown, broker_ok=False)
    view = gather_workers(app, timeout=inspect_timeout, commands=("active_queues",))
    consumers = {q: tuple(view.consumers(q)) for q in queues}
    return QueueView(
        at=time.monotonic(),
        broker=shown,
        workers=tuple(view.workers),
        consumers=consumers,
        depths=depths,
        unacked=unacked,
    )


class HintCache:
    """The cached view and the thread that refreshes it on demand. `start()` and `stop()` belong
    to the app's lifespan; `hint_for()` is what request handlers call."""

    def __init__(
        self,
        probe: Callable[[], QueueView],
        *,
        hint_after: float = HINT_AFTER,
        refresh_every: float = REFRESH_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self.hint_after = hint_after
        self.refresh_every = refresh_every
        self._clock = clock
        self._view: QueueView | None = None
        self._last_demand = float("-inf")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def view(self) -> QueueView | None:
        return self._view

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="stack-hints", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the refresher; a refresh under way is abandoned after `timeout` (daemon thread)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("hint refresher still busy after %.1f s; leaving it behind", timeout)
        self._thread = None

    def hint_for(self, job: Job, *, now: datetime | None = None) -> str | None:
        if job.status is not JobStatus.PENDING or _age(job.created_at, now) < self.hint_after:
            return None
        self._last_demand = self._clock()
        self._wake.set()
        view = self._view
        if view is None or self._clock() - view.at > max(STALE_AFTER, 3 * self.refresh_every):
            return None  # not known yet: the refresher has just been woken
        return select_hint(view, job.queue, dispatched=job.dispatched_at is not None)

    def refresh(self) -> None:
        try:
            self._view = self._probe()
        except Exception:  # a refresher that dies would leave every later hint empty
            log.exception("refreshing the hint cache failed")

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stopping.is_set() and self._clock() - self._last_demand < DEMAND_WINDOW:
                self.refresh()
                self._stopping.wait(self.refresh_every)


def owner_hint(
    job: Job,
    *,
    settings: Settings,
    workers: Callable[[list[str]], dict[str, Worker]],
    now: datetime | None = None,
) -> str | None:
    """Why a running job shows no sign of life: its worker stopped heartbeating (or is gone).
    None while the job moves or its worker beats; `workers` is read only for a silent job."""
    if job.status not in RUNNING_STATUSES or job.worker_id is None:
        return None
    now = now or datetime.now(UTC)
    if _age(job.updated_at, now) < settings.hint_after:
        return None
    worker = workers([job.worker_id]).get(job.worker_id)
    name = job.worker or "its worker"
    silent = _age(worker.heartbeat_at, now) if worker is not None else None
    if silent is not None and silent < 2 * settings.heartbeat_interval:
        return None  # alive: a long step between two progress reports
    lost = f"{name} is gone" if silent is None else f"{name} has sent no heartbeat for {silent:.0f} s"
    overdue = settings.worker_dead_after + 2 * settings.sweep_interval
    if silent is not None and silent < overdue:
        return (
            f"{lost} (killed or out of memory?); the sweep runs the job again once its worker has "
            f"been silent for STACK_WORKER_DEAD_AFTER={settings.worker_dead_after:g} s"
        )
    return f"{lost}; beat's sweep should have queued the job again: is `stack run beat` running?"


def _age(created_at: datetime, now: datetime | None) -> float:
    return ((now or datetime.now(UTC)) - as_utc(created_at)).total_seconds()
