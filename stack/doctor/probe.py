"""Asking the running system what it looks like: workers (Celery broadcasts), queue depths (Redis)
and pending jobs (the job table). Every call is bounded by a timeout; the checks that judge these
facts live in `checks.py` and `queues.py`, so they can be tested on made-up replies.

Shared by `stack doctor` and the API's hint cache (`stack.jobs.hints`).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from sqlalchemy import Engine, case, func, select

from stack.jobs.control import FINGERPRINT_COMMAND
from stack.jobs.models import Job, JobStatus, as_utc

log = logging.getLogger(__name__)

BEAT_NODE_PREFIX = "celerybeat@"  # Celery >= 5.7 beat answers pings under this name when enabled
# kombu's Redis transport keeps messages sent with a priority in sibling lists named like this.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
UNACKED_KEY = "unacked"  # kombu's Redis transport default
PIDBOX_BINDING_KEY = "_kombu.binding.celery.pidbox"  # exists in every Redis db Celery workers use
BINDING_MARK = "_kombu.binding."  # kombu's exchange tables: `<global_keyprefix>_kombu.binding.<exchange>`
BINDING_SEPARATOR = "\x06\x16"  # between routing key, pattern and queue in a table's members

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    pass


def with_deadline(fn: Callable[[], T], seconds: float, *, what: str) -> T:
    """Run `fn` in a daemon thread and give up after `seconds`, so no library's retry loop can
    hang the doctor; an abandoned thread dies with the process."""
    value = in_parallel({what: fn}, seconds=seconds)[what]
    if isinstance(value, Exception):
        raise value
    return value  # type: ignore[no-any-return]


def in_parallel(calls: Mapping[str, Callable[[], Any]], *, seconds: float) -> dict[str, Any]:
    """{name: its value, or the exception it raised, or DeadlineExceeded}: independent probes
    cost the slowest one, not their sum."""
    outcome: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            outcome[name] = fn()
        except Exception as exc:  # reported per probe by the caller; the traceback with -v
            log.debug("%s failed", name, exc_info=True)
            outcome[name] = exc

    threads = [
        threading.Thread(target=run, args=item, name=f"doctor-{item[0]}", daemon=True)
        for item in calls.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {
        name: outcome.get(name, DeadlineExceeded(f"{name} did not answer within {seconds:g} s"))
        for name in calls
    }


def probe_app(url: str, *, timeout: float, prefix: str) -> Celery:
    """A bare Celery app for broadcasts to a broker, which gives up instead of retrying. `prefix`
    (Settings.redis_prefix) is the namespace whose workers it reaches: their mailboxes are
    prefixed like every other key of theirs."""
    app = Celery("stack-doctor", broker=url, set_as_current=False)
    options: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if prefix:
        options["global_keyprefix"] = prefix
    app.conf.update(
        accept_content=["json"],
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_transport_options=options,
    )
    return app


# --- workers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerInfo:
    name: str
    queues: tuple[str, ...] = ()
    pool: str | None = None
    concurrency: int | None = None
    fingerprint: dict[str, str] | None = None  # None: the worker does not know the command
    kinds: tuple[str, ...] | None = None


@dataclass(frozen=True)
class WorkerView:
    workers: dict[str, WorkerInfo] = field(default_factory=dict)
    beat_nodes: tuple[str, ...] = ()

    def consumers(self, queue: str) -> list[str]:
        return sorted(name for name, info in self.workers.items() if queue in info.queues)


def broadcast_replies(app: Celery, commands: Iterable[str], *, timeout: float) -> dict[str, dict[str, Any]]:
    """{command: {node: reply}}. The commands go out in parallel: each broadcast waits its whole
    timeout for stragglers, so sequential ones would add up."""

    def ask(command: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for reply in app.control.broadcast(command, reply=True, timeout=timeout) or []:
            merged.update(reply)
        return merged

    answers = in_parallel({c: functools.partial(ask, c) for c in commands}, seconds=timeout + 5)
    for command, answer in answers.items():
        if isinstance(answer, Exception):  # the broker went away mid-way: no replies
            log.debug("broadcast %s failed: %s", command, answer)
    return {c: a if isinstance(a, dict) else {} for c, a in answers.items()}


def build_view(replies: Mapping[str, Mapping[str, Any]]) -> WorkerView:
    """A WorkerView from the replies to ping, active_queues, stats and stack_fingerprint."""
    nodes = {node for reply in replies.values() for node in reply}
    beat = tuple(sorted(n for n in nodes if n.startswith(BEAT_NODE_PREFIX)))
    workers = {}
    for name in sorted(nodes - set(beat)):
        queues = replies.get("active_queues", {}).get(name) or []
        stats = replies.get("stats", {}).get(name) or {}
        pool = stats.get("pool") or {}
        fingerprint = replies.get(FINGERPRINT_COMMAND, {}).get(name)
        # An older worker answers {"error": "KeyError(...)"}: no fingerprint, no kinds.
        known: dict[str, Any] = fingerprint if isinstance(fingerprint, dict) else {}
        prints = known.get("fingerprint")
        workers[name] = WorkerInfo(
            name=name,
            queues=tuple(sorted(q.get("name", "") for q in queues if isinstance(q, dict))),
            pool=_pool_name(pool.get("implementation")),
            concurrency=pool.get("max-concurrency"),
            fingerprint=dict(prints) if isinstance(prints, dict) else None,
            kinds=tuple(known.get("kinds") or ()) if isinstance(prints, dict) else None,
        )
    return WorkerView(workers=workers, beat_nodes=beat)


def _pool_name(implementation: str | None) -> str | None:
    # "celery.concurrency.prefork:TaskPool" -> "prefork"; "...thread:TaskPool" -> "threads".
    if not implementation:
        return None
    module = implementation.split(":", 1)[0].rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(module, module)


WORKER_COMMANDS = ("ping", "active_queues", "stats", FINGERPRINT_COMMAND)


def gather_workers(app: Celery, *, timeout: float, commands: Iterable[str] = WORKER_COMMANDS) -> WorkerView:
    return build_view(broadcast_replies(app, commands, timeout=timeout))


# --- Redis: queue depths and other databases ------------------------------------------------------------
def is_redis_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("redis", "rediss")


def redis_client(url: str, *, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def queue_depths(client: redis.Redis, queues: Iterable[str], *, prefix: str) -> dict[str, int]:
    """Messages waiting in each queue of the namespace `prefix` (Settings.redis_prefix: kombu's
    global_keyprefix), priority sub-queues included (one round trip)."""
    queues = list(queues)
    pipeline = client.pipeline(transaction=False)
    for queue in queues:
        for suffix in PRIORITY_SUFFIXES:
            pipeline.llen(prefix + queue + suffix)
    lengths = pipeline.execute()
    step = len(PRIORITY_SUFFIXES)
    return {q: int(sum(lengths[i * step : (i + 1) * step])) for i, q in enumerate(queues)}


def queue_snapshot(
    client: redis.Redis, queues: Iterable[str], *, prefix: str
) -> tuple[dict[str, int], set[str]]:
    """At one instant (MULTI/EXEC): the depth of each queue, and the ids of the tasks handed to
    workers and not acknowledged yet (kombu's `unacked` hash: running, reserved, or waiting
    for a retry's countdown)."""
    queues = list(queues)
    pipeline = client.pipeline(transaction=True)
    for queue in queues:
        for suffix in PRIORITY_SUFFIXES:
            pipeline.llen(prefix + queue + suffix)
    pipeline.hvals(prefix + UNACKED_KEY)
    *lengths, unacked = pipeline.execute()
    step = len(PRIORITY_SUFFIXES)
    depths = {q: int(sum(lengths[i * step : (i + 1) * step])) for i, q in enumerate(queues)}
    return depths, {task_id for raw in unacked if (task_id := _task_id(raw))}


def _task_id(raw: bytes) -> str | None:
    # kombu stores [message, exchange, routing_key]; Celery's protocol 2 puts the id in headers.
    try:
        message = json.loads(raw)[0]
        task_id = message["headers"]["id"]
    except (ValueError, LookupError, TypeError):
        return None
    return task_id if isinstance(task_id, str) else None


def unacked_count(client: redis.Redis, *, prefix: str) -> int:
    """Messages delivered to workers and not acknowledged yet (running or reserved): with
    acks_late, a busy worker's jobs sit here, not in the queue."""
    return int(client.hlen(prefix + UNACKED_KEY))


def redis_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def with_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def other_celery_dbs(url: str, *, timeout: float, prefix: str) -> list[int]:
    """Other logical databases of the same Redis server that Celery workers of this namespace
    have used: where a worker started with another REDIS_URL / CELERY_BROKER_URL db index would be."""
    own = redis_db(url)
    with redis_client(url, timeout=timeout) as client:
        indexes = [int(str(name).removeprefix("db")) for name in client.info("keyspace")]
    found = []
    for index in sorted(i for i in indexes if i != own):
        with redis_client(with_db(url, index), timeout=timeout) as other:
            if other.exists(prefix + PIDBOX_BINDING_KEY):
                found.append(index)
    return found


def celery_bindings(client: redis.Redis) -> dict[str, set[str]]:
    """{key prefix: queues bound} of every Celery (kombu) app whose tables are in this db: each
    app's `global_keyprefix` ('' for none) and the queues its exchanges route to."""
    found: dict[str, set[str]] = {}
    for raw in client.scan_iter(match=f"*{BINDING_MARK}*", count=500):
        key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        prefix, _, exchange = key.partition(BINDING_MARK)
        queues = found.setdefault(prefix, set())
        if exchange.endswith("pidbox") or exchange == "celeryev":
            continue  # worker mailboxes and events: every app has them, they name no queue
        if client.type(raw) not in (b"set", "set"):
            continue
        for member in client.smembers(raw):
            text = member.decode(errors="replace") if isinstance(member, bytes) else str(member)
            queues.add(text.rsplit(BINDING_SEPARATOR, 1)[-1])
    return found


# --- the job table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PendingStats:
    count: int
    oldest: datetime
    undispatched: int

    @property
    def sent(self) -> int:
        """Pending jobs whose message was published: each should be in its queue, or in a
        worker's hands about to be claimed."""
        return self.count - self.undispatched

    def age(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return max(0.0, (now - as_utc(self.oldest)).total_seconds())


def sent_pending_by_queue(
    engine: Engine, *, sent_before: datetime, excluding: Iterable[str]
) -> dict[str, int]:
    """{queue: pending jobs whose message was sent before `sent_before`}, leaving out `excluding`."""
    query = (
        select(Job.queue, func.count())
        .where(Job.status == JobStatus.PENDING, Job.dispatched_at < sent_before)
        .group_by(Job.queue)
    )
    excluded = list(excluding)
    if excluded:
        query = query.where(Job.id.not_in(excluded))
    with engine.connect() as connection:
        return {row[0]: int(row[1]) for row in connection.execute(query).all()}


def pending_by_queue(engine: Engine) -> dict[str, PendingStats]:
    never_sent = func.sum(case((Job.dispatched_at.is_(None), 1), else_=0))
    query = (
        select(Job.queue, func.count(), func.min(Job.created_at), never_sent)
        .where(Job.status == JobStatus.PENDING)
        .group_by(Job.queue)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return {row[0]: PendingStats(int(row[1]), row[2], int(row[3] or 0)) for row in rows}
