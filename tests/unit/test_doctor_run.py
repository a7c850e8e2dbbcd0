"""`run_doctor` and `stack doctor` as a whole, with no server: a dead broker (fast failure), inline
mode, and an in-process worker on the memory transport (fingerprints, queues, canaries)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient

import stack.jobs.control  # noqa: F401  # the worker side of doctor: registers stack_fingerprint
from app.images import generate_image
from app.kinds import registry as app_registry
from app.params import ImageParams
from stack import cli
from stack.api.app import create_app
from stack.config import Settings
from stack.doctor import run_doctor
from stack.doctor.canary import candidate_params, run_canaries
from stack.doctor.report import render_text
from stack.doctor.result import CheckResult, Status
from stack.jobs.celery_app import create_celery
from stack.jobs.migrate import upgrade
from stack.jobs.registry import JobRegistry, outputs_dir
from stack.runtime import Runtime, build_runtime
from stack.testing.services.processes import free_port
from tests.unit.conftest import make_settings


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def migrated(settings: Settings) -> Settings:
    runtime = build_runtime(settings)
    upgrade(runtime.engine)
    runtime.engine.dispose()
    return settings


def test_dead_broker_fails_within_seconds_and_skips_what_needs_it(tmp_path: Path) -> None:
    dead = f"redis://:secret@127.0.0.1:{free_port()}/0"
    settings = migrated(make_settings(tmp_path, celery_broker_url=dead, celery_result_backend=dead))
    started = time.monotonic()
    results = by_name(run_doctor(settings, timeout=1.0))
    took = time.monotonic() - started
    assert took < 3, f"doctor took {took:.1f} s with a dead broker"
    broker = results["broker"]
    assert broker.status is Status.FAIL
    assert "redis://:***@127.0.0.1" in broker.detail and "secret" not in broker.detail
    assert "CELERY_BROKER_URL" in broker.fix
    assert results["workers"].status is Status.WARN
    assert results["database"].status is Status.OK and results["migrations"].status is Status.OK


def test_inline_mode_needs_no_broker(tmp_path: Path) -> None:
    settings = migrated(make_settings(tmp_path, celery_enabled=False))
    results = by_name(run_doctor(settings))
    assert "CELERY_ENABLED=false" in results["broker"].detail
    assert all(r.status is Status.OK for r in results.values())


@pytest.fixture(scope="module")
def worker_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = build_runtime(make_settings(tmp_path_factory.mktemp("doctor")))
    upgrade(runtime.engine)
    app = create_celery(runtime.settings, runtime.registry)
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.stack_runtime._runtime = runtime  # type: ignore[attr-defined]  # same SQLite file
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        queues=["default", "content"],  # not `logs`: doctor must say so
        loglevel="WARNING",
        shutdown_timeout=10,
    ):
        yield runtime
    runtime.engine.dispose()


def test_doctor_against_an_in_process_worker(
    worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker answers stack_fingerprint with get_settings(): make it this test's settings.
    monkeypatch.setattr("stack.jobs.control.get_settings", lambda: worker_runtime.settings)
    results = run_doctor(worker_runtime.settings, canary_timeout=10, root=Path(__file__).parents[2])
    named = by_name(results)
    report = render_text(results)
    workers = [r for r in results if r.name.startswith("worker ")]
    assert len(workers) == 1 and "queues content, default" in workers[0].detail, report
    assert named["config"].status is Status.OK, report
    assert named["queue content"].status is Status.OK
    logs = named["queue logs"]
    assert logs.status is Status.FAIL and "no worker consumes queue 'logs' (kinds: write_log)" in logs.detail
    assert "STACK_WORKER_QUEUES=logs stack run worker" in logs.fix
    assert (
        named["canary default"].status is Status.OK
        and "demo ran end to end" in named["canary default"].detail
    )
    assert named["canary content"].status is Status.OK
    assert "canary logs" not in named  # no consumer: the queue line already says it
    # The canaries are marked, and not among the user's jobs unless asked for.
    canaries = {named[f"canary {q}"].data["job_id"] for q in ("default", "content")}
    store = worker_runtime.store
    assert canaries <= {job.id for job in store.list(canaries=True, limit=500) if job.canary}
    assert not canaries & {job.id for job in store.list(limit=500)}
    with TestClient(create_app(worker_runtime.settings)) as api:
        listed = {job["task_id"] for job in api.get("/api/jobs", params={"limit": 500}).json()["jobs"]}
        every = api.get("/api/jobs", params={"limit": 500, "canary": "true"}).json()["jobs"]
    assert not canaries & listed and canaries <= {job["task_id"] for job in every}


def test_every_reference_kind_has_canary_params() -> None:
    for kind in app_registry:
        raw = candidate_params(kind)[0 if kind.name == "demo" else -2]  # ours, else the model's example
        assert kind.validate(raw), kind.name


def test_canary_files_are_removed_after_the_check(worker_runtime: Runtime) -> None:
    images = JobRegistry()
    images.kind("generate_image", params=ImageParams, queue="content")(generate_image)
    celery = create_celery(worker_runtime.settings, worker_runtime.registry)
    storage = worker_runtime.settings.effective_storage_dir
    try:
        [result] = run_canaries(
            celery, worker_runtime.store, images, ["content"], timeout=10, storage_dir=storage
        )
    finally:
        celery.close()
    assert result.status is Status.OK, result
    job = worker_runtime.store.get(result.data["job_id"])
    assert job is not None and job.canary and job.result["bytes"] > 0  # it did write a PNG
    assert not outputs_dir(storage, job.id).exists()


def test_a_worker_on_another_database_is_named(
    worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = make_settings(Path("/elsewhere"), database_url="sqlite:////elsewhere/jobs.db")
    monkeypatch.setattr("stack.jobs.control.get_settings", lambda: elsewhere)
    results = run_doctor(worker_runtime.settings, canary=False)
    [config] = [r for r in results if r.name.startswith("config ")]
    assert config.status is Status.FAIL and "DATABASE_URL" in config.detail


def test_cli_exit_status_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = migrated(make_settings(tmp_path, celery_broker_url=dead, celery_result_backend=dead))
    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    assert cli.main(["doctor", "--json", "--timeout", "1"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}["broker"] == "fail"

    inline = migrated(make_settings(tmp_path / "inline", celery_enabled=False))
    monkeypatch.setattr(cli, "get_settings", lambda: inline)
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("ok    database")
    assert out.rstrip().splitlines()[-1].startswith("all checks passed")
