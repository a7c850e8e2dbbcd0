"""The checks of the environment itself: broker, result backend, database, migrations, beat.

Each is a small function returning a CheckResult whose fix names the setting to change. The checks
of workers and queues are in `queues.py`, the end-to-end canary in `canary.py`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from stack import checks as reachability
from stack.config import Settings, redact_url
from stack.doctor.probe import DeadlineExceeded, is_redis_url, with_deadline
from stack.doctor.result import CheckResult, fail, human_seconds, ok, warn
from stack.jobs.migrate import MIGRATIONS_DIR, current_revision
from stack.jobs.models import Worker, as_utc, utcnow

# Beat rewrites its schedule file at least every 3 min (Scheduler.sync_every) plus one loop of at
# most 5 min (beat_max_loop_interval): older than this, no beat has run here recently.
BEAT_FILE_STALE_AFTER = 600.0


def broker_setting(settings: Settings) -> str:
    """The variable that decided the broker URL, for fixes that say what to change."""
    if settings.celery_broker_url:
        return "CELERY_BROKER_URL"
    return "REDIS_URL" if settings.redis_url else "REDIS_URL (unset: the embedded Redis, `stack run redis`)"


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def _reach(name: str, url: str, *, timeout: float) -> tuple[reachability.CheckResult, str]:
    started = time.monotonic()
    try:
        # check_broker has its own timeouts; the deadline is for a library that ignores them.
        result = with_deadline(
            lambda: reachability.check_broker(url, timeout=timeout), timeout + 1, what=name
        )
    except DeadlineExceeded as exc:
        result = reachability.CheckResult(name, False, f"{redact_url(url)}: {exc}")
    return result, _ms(started)


def check_broker(settings: Settings, *, timeout: float) -> CheckResult:
    result, took = _reach("broker", settings.broker_url, timeout=timeout)
    if result.ok:
        return ok("broker", f"{redact_url(settings.broker_url)} answers ({took})")
    return fail(
        "broker",
        f"{result.detail} ({took})",
        f"start the broker, or set {broker_setting(settings)} to one that answers "
        "(the API and every worker must use the same)",
    )


def check_result_backend(settings: Settings, *, timeout: float) -> CheckResult:
    url = settings.result_backend
    setting = "CELERY_RESULT_BACKEND" if settings.celery_result_backend else broker_setting(settings)
    if not is_redis_url(url):
        return warn("result backend", f"{redact_url(url)} not checked: doctor checks Redis backends only")
    result, took = _reach("result backend", url, timeout=timeout)
    if result.ok:
        return ok("result backend", f"{redact_url(url)} answers ({took})")
    return fail(
        "result backend", f"{result.detail} ({took})", f"start it, or set {setting} to one that answers"
    )


def check_database(settings: Settings, engine: Engine, *, timeout: float) -> CheckResult:
    url = settings.effective_database_url
    database = make_url(url).database
    if url.startswith("sqlite") and database and not Path(database).exists():
        return fail(
            "database",
            f"{url} does not exist",
            "create it with `stack run migrate`, or set DATABASE_URL to the API's database",
        )
    started = time.monotonic()
    try:
        result = with_deadline(lambda: reachability.check_database(engine), timeout + 1, what="the database")
    except DeadlineExceeded as exc:
        result = reachability.CheckResult("database", False, str(exc))
    if result.ok:
        return ok("database", f"{redact_url(url)} answers ({_ms(started)})")
    return fail(
        "database",
        f"{redact_url(url)}: {result.detail}",
        "start the database, or set DATABASE_URL to one that answers (the API and every worker "
        "must use the same)",
    )


def check_migrations(engine: Engine, *, timeout: float) -> CheckResult:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    try:
        current = with_deadline(lambda: current_revision(engine), timeout + 1, what="the database")
    except Exception as exc:
        return fail("migrations", f"cannot read the schema revision: {exc}", "check DATABASE_URL")
    if current == head:
        return ok("migrations", f"at head ({head})", revision=current)
    try:
        missing = [f"{r.revision} ({r.doc})" for r in script.iterate_revisions(head, current or "base")]
    except CommandError:
        return warn(
            "migrations",
            f"the database is at {current}, a revision this code does not know (newer code elsewhere?)",
            "deploy the same version of the code everywhere",
            revision=current,
        )
    return fail(
        "migrations",
        f"database at {current or 'no revision (empty)'}, missing {', '.join(reversed(missing))}",
        "run `stack run migrate` (or start the api role with STACK_MIGRATE_ON_START=true)",
        revision=current,
        missing=missing,
    )


def check_beat(
    *,
    periodic: list[str],
    beat_nodes: tuple[str, ...],
    remote_control: bool,
    schedule_files: list[Path],
    now: float | None = None,
) -> CheckResult:
    """Beat is seen two ways. Across machines: with `beat_enable_remote_control` (Celery >= 5.7)
    beat answers pings as celerybeat@host, and stops answering when its scheduler stalls. On this
    machine: the schedule file in STACK_DATA_DIR, which beat rewrites while it runs."""
    if beat_nodes:
        return ok(
            "beat", f"{', '.join(beat_nodes)} answers (its scheduler is ticking)", nodes=list(beat_nodes)
        )
    age = _newest_age(schedule_files, now)
    if age is not None and age < BEAT_FILE_STALE_AFTER:
        return ok("beat", f"schedule file written {human_seconds(age)} ago (beat runs on this machine)")
    if not periodic:
        return ok("beat", "no periodic tasks configured; beat is not needed")
    start = f"start it: stack run beat (exactly one per deployment; it sends {', '.join(periodic)})"
    if remote_control:
        return fail("beat", "no beat answered a ping, or its scheduler stalled", start)
    seen = f"; the schedule file here is {human_seconds(age)} old" if age is not None else ""
    return warn(
        "beat",
        f"unknown: beat does not answer pings (beat_enable_remote_control is off){seen}",
        f"if beat is not running, {start}",
    )


def _newest_age(files: list[Path], now: float | None) -> float | None:
    mtimes = [p.stat().st_mtime for p in files if p.exists()]
    if not mtimes:
        return None
    return max(0.0, (now if now is not None else time.time()) - max(mtimes))


def check_heartbeats(
    workers: Sequence[Worker],
    running_jobs: dict[str, int],
    *,
    settings: Settings,
    now: datetime | None = None,
) -> CheckResult:
    """The workers' rows in stack_workers (`running_jobs`: jobs marked running per worker id):
    who heartbeats, how long ago, running what. A worker silent past STACK_WORKER_DEAD_AFTER is
    dead; its jobs still marked running wait for beat's sweep."""
    if not workers:
        return warn(
            "heartbeats",
            "no worker heartbeats into this database",
            "start one (stack run worker) with this DATABASE_URL; workers of an older stack do not heartbeat",
        )
    now = now or utcnow()
    alive, dead, stranded = [], [], 0
    for worker in workers:
        silent = (now - as_utc(worker.heartbeat_at)).total_seconds()
        if silent <= settings.worker_dead_after:
            alive.append(f"{worker.name} {human_seconds(silent)} ago, running {len(worker.running)}")
            continue
        owned = running_jobs.get(worker.id, 0)
        stranded += owned
        dead.append(f"{worker.name} silent for {human_seconds(silent)}, {owned} job(s) still marked running")
    detail = f"last heartbeats: {'; '.join(alive) or 'none alive'}"
    listed = {"alive": alive, "dead": dead}
    if stranded:
        overdue = settings.worker_dead_after + 2 * settings.sweep_interval
        return warn(
            "heartbeats",
            f"{detail}; dead: {'; '.join(dead)}",
            f"beat's sweep runs a dead worker's jobs again within {overdue:g} s of its last heartbeat: "
            "is `stack run beat` running?",
            **listed,
        )
    if dead:
        detail += f" ({len(dead)} dead worker(s) with no job left, forgotten after an hour)"
    return ok("heartbeats", detail, **listed)
