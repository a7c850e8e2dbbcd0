"""Doctor's judgements on made-up facts: worker replies, fingerprints, queue depths, beat files."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stack.doctor import checks, queues
from stack.doctor.probe import PendingStats, WorkerInfo, WorkerView, build_view
from stack.doctor.procfiles import WorkerLine
from stack.doctor.result import Status
from stack.jobs.registry import JobRegistry
from tests.unit.conftest import make_settings

HERE = {"broker": "b" * 12, "database": "d" * 12}
BROKER = "redis://:***@127.0.0.1:6379/0"
CONTENT_LINE = WorkerLine(
    "procfiles/split-queues.Procfile",
    "worker_content",
    "STACK_WORKER_QUEUES=content stack run worker",
    ("content",),
)


class NoParams(BaseModel):
    pass


def registry() -> JobRegistry:
    reg = JobRegistry()
    for name, queue in [("generate_image", "content"), ("generate_content", "content"), ("demo", "default")]:
        reg.kind(name, params=NoParams, queue=queue)(lambda params, job: None)
    return reg


def worker(
    name: str, *queues_: str, fingerprint: dict[str, str] | None = HERE, kinds: tuple[str, ...] | None = None
):
    if fingerprint is not None and kinds is None:
        kinds = ("generate_image", "generate_content", "demo")
    return WorkerInfo(name, tuple(queues_), "prefork", 2, fingerprint, kinds)


def view(*infos: WorkerInfo, beat: tuple[str, ...] = ()) -> WorkerView:
    return WorkerView({i.name: i for i in infos}, beat)


# --- replies -> view ------------------------------------------------------------------------------
def test_build_view_reads_queues_pool_fingerprint_and_separates_beat() -> None:
    replies: dict[str, dict[str, Any]] = {
        "ping": {"content@h": {"ok": "pong"}, "old@h": {"ok": "pong"}, "celerybeat@h": {"ok": "pong"}},
        "active_queues": {
            "content@h": [{"name": "content"}],
            "old@h": [{"name": "default"}, {"name": "logs"}],
        },
        "stats": {
            "content@h": {
                "pool": {"implementation": "celery.concurrency.thread:TaskPool", "max-concurrency": 4}
            }
        },
        "stack_fingerprint": {
            "content@h": {"fingerprint": HERE, "kinds": ["generate_image"]},
            "old@h": {"error": "KeyError('stack_fingerprint')"},  # what an older worker answers
        },
    }
    result = build_view(replies)
    assert result.beat_nodes == ("celerybeat@h",)
    assert set(result.workers) == {"content@h", "old@h"}
    content = result.workers["content@h"]
    assert (content.queues, content.pool, content.concurrency) == (("content",), "threads", 4)
    assert content.fingerprint == HERE and content.kinds == ("generate_image",)
    assert result.workers["old@h"].fingerprint is None
    assert result.consumers("default") == ["old@h"]


# --- workers ---------------------------------------------------------------------------------------
def test_no_worker_fails_with_the_start_command() -> None:
    [result] = queues.check_workers(WorkerView(), broker=BROKER, lines=[], timeout=1.0)
    assert result.status is Status.FAIL
    assert BROKER in result.detail
    assert "stack run worker" in result.fix


def test_each_worker_gets_a_line_with_queues_pool_and_concurrency() -> None:
    results = queues.check_workers(view(worker("content@h", "content")), broker=BROKER, lines=[], timeout=1)
    assert [(r.name, r.status) for r in results] == [("worker content@h", Status.OK)]
    assert "queues content; pool prefork x2" in results[0].detail


# --- agreement ------------------------------------------------------------------------------------
def agreement(v: WorkerView, elsewhere: dict[str, WorkerView] | None = None) -> list:
    return queues.check_agreement(v, own=HERE, registry=registry(), elsewhere=elsewhere or {}, broker=BROKER)


def test_workers_that_agree_give_one_ok_line() -> None:
    [result] = agreement(view(worker("a@h", "content"), worker("b@h", "default")))
    assert result.status is Status.OK and "2 worker(s)" in result.detail


def test_database_mismatch_fails_naming_database_url() -> None:
    other = {**HERE, "database": "x" * 12}
    [result] = agreement(view(worker("a@h", "content", fingerprint=other)))
    assert result.status is Status.FAIL
    assert "DATABASE_URL" in result.detail and "a@h" in result.detail
    assert "DATABASE_URL" in result.fix


def test_a_worker_without_fingerprints_is_a_warning() -> None:
    [result] = agreement(view(worker("old@h", "content", fingerprint=None)))
    assert result.status is Status.WARN
    assert "worker old@h runs an older stack without fingerprints" in result.detail


def test_a_worker_missing_routed_kinds_fails_naming_stack_kinds() -> None:
    [result] = agreement(view(worker("a@h", "content", kinds=("generate_image", "demo"))))
    assert result.status is Status.FAIL
    assert "generate_content" in result.detail and "STACK_KINDS" in result.fix


def test_worker_on_another_broker_with_our_database_fails_naming_the_broker_variable() -> None:
    stray = view(worker("stray@h", "content"))
    results = agreement(WorkerView(), {"redis://127.0.0.1:6379/5": stray})
    [result] = results
    assert result.status is Status.FAIL
    assert "another broker, redis://127.0.0.1:6379/5" in result.detail
    assert "CELERY_BROKER_URL (or REDIS_URL)" in result.fix


def test_another_application_on_the_same_redis_server_is_ignored() -> None:
    other_app = view(worker("billing@h", "invoices", fingerprint={"broker": "1" * 12, "database": "2" * 12}))
    assert agreement(view(worker("a@h", "content")), {"redis://h/7": other_app})[0].status is Status.OK


def test_an_old_worker_elsewhere_on_our_queues_is_only_a_warning() -> None:
    old = view(worker("old@h", "content", fingerprint=None))
    [result] = agreement(WorkerView(), {"redis://h/5": old})
    assert result.status is Status.WARN and "if it belongs to this application" in result.detail


# --- queues ----------------------------------------------------------------------------------------
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_queue_without_consumer_fails_naming_kinds_and_the_fix() -> None:
    pending = {"content": PendingStats(3, NOW - timedelta(seconds=42), 0)}
    results = queues.check_queues(
        queues.routes_of({}, registry()),
        view(worker("d@h", "default")),
        depths={"content": 3, "default": 0},
        pending=pending,
        lines=[CONTENT_LINE],
        now=NOW,
    )
    content = next(r for r in results if r.name == "queue content")
    assert content.status is Status.FAIL
    assert "no worker consumes queue 'content' (kinds: generate_content, generate_image)" in content.detail
    assert "3 waiting" in content.detail and "oldest 42 s" in content.detail
    assert content.fix.startswith("start one: STACK_WORKER_QUEUES=content stack run worker")
    assert "worker_content: STACK_WORKER_QUEUES=content stack run worker" in content.fix
    assert content.data["depth"] == 3 and content.data["oldest_pending_seconds"] == 42
    assert next(r for r in results if r.name == "queue default").status is Status.OK


def test_routes_name_kinds_and_other_tasks() -> None:
    routes = queues.routes_of(
        {"app.cleanup": {"queue": "default"}, "jobs.demo": {"queue": "default"}}, registry()
    )
    assert routes == {"content": ["generate_content", "generate_image"], "default": ["app.cleanup", "demo"]}


def test_old_pending_jobs_on_a_consumed_queue_warn_that_workers_cannot_keep_up() -> None:
    pending = {"default": PendingStats(9, NOW - timedelta(minutes=5), 2)}
    results = queues.check_queues(
        queues.routes_of({}, registry()),
        view(worker("a@h", "content", "default")),
        depths=None,
        pending=pending,
        lines=[],
        now=NOW,
    )
    default = next(r for r in results if r.name == "queue default")
    assert default.status is Status.WARN
    assert "oldest 5 min" in default.detail and "2 never reached the broker" in default.detail


def test_pending_jobs_missing_from_their_queue_are_reported() -> None:
    pending = {"default": PendingStats(5, NOW - timedelta(seconds=20), 1)}
    results = queues.check_queues(
        queues.routes_of({}, registry()),
        view(worker("a@h", "content", "default")),
        depths={"default": 1, "content": 0},
        pending=pending,
        lines=[],
        now=NOW,
    )
    default = next(r for r in results if r.name == "queue default")
    assert "1 waiting" in default.detail and "3 sent but no longer queued" in default.detail
    assert default.data["missing"] == 3


# --- beat -------------------------------------------------------------------------------------------
def test_beat_answering_a_ping_is_ok() -> None:
    result = checks.check_beat(
        periodic=["sweep"], beat_nodes=("celerybeat@h",), remote_control=True, schedule_files=[]
    )
    assert result.status is Status.OK and "celerybeat@h" in result.detail


def test_no_periodic_tasks_means_beat_is_not_needed() -> None:
    result = checks.check_beat(periodic=[], beat_nodes=(), remote_control=False, schedule_files=[])
    assert result.status is Status.OK


def test_a_fresh_schedule_file_means_beat_runs_here(tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    schedule.write_bytes(b"")
    result = checks.check_beat(
        periodic=["sweep"], beat_nodes=(), remote_control=False, schedule_files=[schedule]
    )
    assert result.status is Status.OK and "this machine" in result.detail


def test_unknown_beat_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    schedule.write_bytes(b"")
    hour_ago = time.time() - 3600
    os.utime(schedule, (hour_ago, hour_ago))
    result = checks.check_beat(
        periodic=["sweep"], beat_nodes=(), remote_control=False, schedule_files=[schedule]
    )
    assert result.status is Status.WARN
    assert "60 min old" in result.detail and "stack run beat" in result.fix


def test_silent_beat_with_remote_control_on_fails() -> None:
    result = checks.check_beat(periodic=["sweep"], beat_nodes=(), remote_control=True, schedule_files=[])
    assert result.status is Status.FAIL and "stack run beat" in result.fix


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "REDIS_URL (unset: the embedded Redis"),
        ({"redis_url": "redis://h/0"}, "REDIS_URL"),
        ({"celery_broker_url": "redis://h/1"}, "CELERY_BROKER_URL"),
    ],
)
def test_broker_fix_names_the_variable_that_decided_it(
    tmp_path: Path, overrides: dict, expected: str
) -> None:
    settings = make_settings(tmp_path, **{"celery_broker_url": None, **overrides})
    assert checks.broker_setting(settings).startswith(expected)


# --- heartbeats ------------------------------------------------------------------------------------
def _worker(name: str, silent: float, running: list[str] | None = None):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from stack.jobs.models import Worker, utcnow

    beat = utcnow() - timedelta(seconds=silent)
    return Worker(
        id=name, name=f"{name}@h", pid=1, queues=["default"], running=running or [], heartbeat_at=beat
    )


def test_heartbeats_list_each_worker_with_its_last_beat() -> None:
    from stack.config import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    result = checks.check_heartbeats(
        [_worker("one", 2, ["j1"]), _worker("two", 4)], {"one": 1}, settings=settings
    )
    assert result.status is Status.OK
    assert result.detail == "last heartbeats: one@h 2 s ago, running 1; two@h 4 s ago, running 0"


def test_a_dead_worker_with_jobs_marked_running_is_a_warning_naming_beat() -> None:
    from stack.config import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    result = checks.check_heartbeats([_worker("one", 2), _worker("gone", 95)], {"gone": 2}, settings=settings)
    assert result.status is Status.WARN
    assert "dead: gone@h silent for 95 s, 2 job(s) still marked running" in result.detail
    assert "is `stack run beat` running?" in result.fix
    quiet = checks.check_heartbeats([_worker("gone", 95)], {}, settings=settings)
    assert quiet.status is Status.OK and "1 dead worker(s) with no job left" in quiet.detail


def test_no_heartbeat_at_all_is_a_warning() -> None:
    from stack.config import Settings

    result = checks.check_heartbeats([], {}, settings=Settings(_env_file=None))  # type: ignore[call-arg]
    assert result.status is Status.WARN and "stack run worker" in result.fix
