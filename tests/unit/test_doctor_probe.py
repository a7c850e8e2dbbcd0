"""Doctor's probes on fakes: Redis (fakeredis), the job table (SQLite), Procfiles, deadlines."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import fakeredis
import pytest
from sqlalchemy import update

from stack.doctor import checks, probe
from stack.doctor.procfiles import fix_for_queue, line_for, procfile_argument, running_procfile, worker_lines
from stack.doctor.result import Status
from stack.jobs.liveness import Owner
from stack.jobs.migrate import head_revision
from stack.jobs.models import Job, JobStatus, utcnow
from stack.runtime import Runtime
from tests.unit.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]


# --- deadlines --------------------------------------------------------------------------------------
def test_a_probe_that_hangs_is_abandoned_at_its_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(probe.DeadlineExceeded, match=r"the broker did not answer within 0\.2 s"):
        probe.with_deadline(lambda: time.sleep(5), 0.2, what="the broker")
    assert time.monotonic() - started < 1


def test_in_parallel_costs_the_slowest_call_and_keeps_errors() -> None:
    def boom() -> None:
        raise ValueError("no")

    def slow(value: int) -> int:
        time.sleep(0.3)
        return value

    started = time.monotonic()
    out = probe.in_parallel({"a": lambda: slow(1), "b": lambda: slow(2), "c": boom}, seconds=2)
    assert time.monotonic() - started < 0.6
    assert (out["a"], out["b"], type(out["c"])) == (1, 2, ValueError)


# --- Redis ------------------------------------------------------------------------------------------
def test_queue_depths_count_priority_sub_queues_of_the_namespace_only() -> None:
    client = fakeredis.FakeRedis()
    client.rpush("app:content", "m1", "m2")
    client.rpush("app:content\x06\x169", "urgent")
    client.hset("app:unacked", "tag", "msg")
    client.rpush("content", "another app's", "messages")  # no prefix: not ours
    client.hset("other:unacked", "tag", "msg")
    assert probe.queue_depths(client, ["content", "logs"], prefix="app:") == {"content": 3, "logs": 0}
    assert probe.unacked_count(client, prefix="app:") == 1
    assert probe.queue_depths(client, ["content"], prefix="") == {"content": 2}


def test_celery_bindings_group_queues_by_key_prefix() -> None:
    client = fakeredis.FakeRedis()
    # The tables kombu writes: `<global_keyprefix>_kombu.binding.<exchange>`, members
    # `routing_key \x06\x16 pattern \x06\x16 queue`.
    client.sadd("app:_kombu.binding.content", "content\x06\x16\x06\x16content")
    client.sadd("app:_kombu.binding.celery.pidbox", "\x06\x16\x06\x16celery@h.celery.pidbox")
    client.sadd("_kombu.binding.default", "default\x06\x16\x06\x16default")
    client.sadd("_kombu.binding.celeryev", "worker.#\x06\x16\x06\x16celeryev.x")
    client.set("cache:_kombu.binding.not-a-set", "1")
    assert probe.celery_bindings(client) == {"app:": {"content"}, "": {"default"}, "cache:": set()}


def test_other_celery_dbs_finds_the_databases_with_worker_mailboxes(monkeypatch: pytest.MonkeyPatch) -> None:
    server = fakeredis.FakeServer()

    class WithKeyspace(fakeredis.FakeRedis):
        def info(self, section: str | None = None, *args: object, **kwargs: object) -> dict:
            # fakeredis has no INFO; this is the shape redis-py parses `INFO keyspace` into.
            sizes = {db: fakeredis.FakeRedis(server=server, db=db).dbsize() for db in range(16)}
            return {f"db{db}": {"keys": n} for db, n in sizes.items() if n}

    def client(url: str, *, timeout: float) -> fakeredis.FakeRedis:
        return WithKeyspace(server=server, db=probe.redis_db(url))

    monkeypatch.setattr(probe, "redis_client", client)
    client("redis://h/3", timeout=1).sadd("app:" + probe.PIDBOX_BINDING_KEY, "x")  # ours
    client("redis://h/5", timeout=1).sadd("app:" + probe.PIDBOX_BINDING_KEY, "x")  # a stray worker
    client("redis://h/6", timeout=1).sadd(probe.PIDBOX_BINDING_KEY, "x")  # another app's workers
    client("redis://h/7", timeout=1).set("cache:key", "1")  # not Celery
    assert probe.other_celery_dbs("redis://h/3", timeout=1, prefix="app:") == [5]


@pytest.mark.parametrize(
    ("url", "db", "moved"),
    [
        ("redis://:pw@h:6379/3", 3, "redis://:pw@h:6379/5"),
        ("redis://h:6379", 0, "redis://h:6379/5"),
    ],
)
def test_redis_db_index_in_urls(url: str, db: int, moved: str) -> None:
    assert probe.redis_db(url) == db
    assert probe.with_db(url, 5) == moved


# --- the job table ----------------------------------------------------------------------------------
def test_pending_by_queue_counts_and_ages(runtime: Runtime) -> None:
    store = runtime.store
    old = store.create(kind="generate_image", queue="content", params={})
    store.create(kind="generate_image", queue="content", params={})
    done = store.create(kind="demo", queue="default", params={})
    store.succeed(done.id, result=None, attempt=0)
    with runtime.engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(Job.id == old.id)
            .values(created_at=utcnow() - timedelta(seconds=90), dispatched_at=utcnow())
        )
    pending = probe.pending_by_queue(runtime.engine)
    assert set(pending) == {"content"}
    content = pending["content"]
    assert (content.count, content.undispatched) == (2, 1)
    assert 89 < content.age() < 100


# --- database checks --------------------------------------------------------------------------------
def test_missing_sqlite_file_fails_without_creating_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'nope' / 'jobs.db'}")
    from stack.doctor import doctor_engine

    result = checks.check_database(settings, doctor_engine(settings, timeout=1), timeout=1)
    assert result.status is Status.FAIL and "stack run migrate" in result.fix
    assert not (tmp_path / "nope").exists()


def test_unmigrated_database_names_the_missing_revision(tmp_path: Path) -> None:
    from stack.doctor import doctor_engine

    (tmp_path / "empty.db").write_bytes(b"")
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    result = checks.check_migrations(doctor_engine(settings, timeout=1), timeout=1)
    assert result.status is Status.FAIL
    assert "missing 0001_jobs (create stack_jobs)" in result.detail
    assert "stack run migrate" in result.fix


def test_migrated_database_is_at_head(runtime: Runtime) -> None:
    result = checks.check_migrations(runtime.engine, timeout=1)
    assert result.status is Status.OK and head_revision() in result.detail


# --- Procfiles --------------------------------------------------------------------------------------
def test_worker_lines_of_the_repository_procfiles() -> None:
    lines = worker_lines(REPO)
    by_name = {(line.path, line.name): line for line in lines}
    assert by_name[("procfiles/split-queues.Procfile", "worker_content")].queues == ("content",)
    assert by_name[("Procfile.prod", "worker")].queues is None  # every queue
    # The stack runs from `Procfile` (make dev, honcho start): its worker serves every queue.
    content = line_for("content", lines)
    assert content is not None and (content.path, content.name) == ("Procfile", "worker")


def test_the_running_procfile_is_quoted_first_and_its_dedicated_line_wins() -> None:
    running = REPO / "procfiles" / "split-queues.Procfile"
    content = line_for("content", worker_lines(REPO, running=running))
    assert content is not None and (content.path, content.name) == (
        "procfiles/split-queues.Procfile",
        "worker_content",
    )


@pytest.mark.parametrize(
    ("argv", "procfile"),
    [
        (["honcho", "start"], None),
        (["/v/bin/honcho", "-f", "procfiles/minimal.Procfile", "start"], "procfiles/minimal.Procfile"),
        (["honcho", "start", "--procfile=P2"], "P2"),
        (["honcho", "start", "-fP3"], "P3"),
    ],
)
def test_procfile_argument_of_honcho(argv: list[str], procfile: str | None) -> None:
    assert procfile_argument(argv) == procfile


def test_a_honcho_running_in_the_folder_names_its_procfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Process:
        def __init__(self, argv: list[str], cwd: str) -> None:
            self.info = {"cmdline": argv, "cwd": cwd}

    processes = [
        Process(["python", "-m", "pytest"], str(tmp_path)),
        Process(["honcho", "-f", "elsewhere.Procfile", "start"], "/somewhere/else"),
        Process([".venv/bin/honcho", "start", "-f", "procfiles/minimal.Procfile"], str(tmp_path)),
    ]
    monkeypatch.setattr("stack.doctor.procfiles.psutil.process_iter", lambda attrs: iter(processes))
    assert running_procfile(tmp_path) == tmp_path / "procfiles" / "minimal.Procfile"
    monkeypatch.setattr("stack.doctor.procfiles.psutil.process_iter", lambda attrs: iter(processes[:2]))
    assert running_procfile(tmp_path) is None


def test_fix_without_procfiles_is_the_bare_command(tmp_path: Path) -> None:
    assert (
        fix_for_queue("logs", worker_lines(tmp_path))
        == "start one: STACK_WORKER_QUEUES=logs stack run worker"
    )


def test_quoted_queue_lists_and_all(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "a: STACK_WORKER_QUEUES='content,logs' stack run worker\n"
        "b: STACK_WORKER_QUEUES=all stack run worker\n"
        "web: stack run api\n"
    )
    lines = worker_lines(tmp_path)
    assert [(line.name, line.queues) for line in lines] == [("a", ("content", "logs")), ("b", None)]


def test_pending_statuses_only(runtime: Runtime) -> None:
    job = runtime.store.create(kind="demo", queue="default", params={})
    runtime.store.claim(job.id, owner=Owner("w"))
    assert probe.pending_by_queue(runtime.engine) == {}
    assert runtime.store.get(job.id).status is JobStatus.STARTED  # type: ignore[union-attr]


def test_a_running_procfile_outside_the_folder_is_quoted_first(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("worker: stack run worker --reload\n")
    elsewhere = tmp_path / "deploy" / "queues.Procfile"
    elsewhere.parent.mkdir()
    elsewhere.write_text("worker_logs: STACK_WORKER_QUEUES=logs stack run worker\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "Procfile").write_text("worker: stack run worker --reload\n")
    logs = line_for("logs", worker_lines(project, running=elsewhere))
    assert logs is not None and (logs.path, logs.name) == (str(elsewhere), "worker_logs")
    assert line_for("logs", worker_lines(project)).path == "Procfile"  # type: ignore[union-attr]
