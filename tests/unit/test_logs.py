"""One log format for every role (stack.logs): text without timestamps, JSON lines with the job."""

from __future__ import annotations

import copy
import json
import logging
import logging.config
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from billiard import util as billiard_util
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.app.log import Logging
from uvicorn.config import LOGGING_CONFIG

from stack import roles
from stack.config import AppEnv
from stack.errors import ConfigError
from stack.jobs.celery_app import create_celery
from stack.jobs.sweep import sweep
from stack.logs import (
    HOST_LOGGERS,
    POOL_LOGGER,
    StackHandler,
    configure_for,
    configure_logging,
    job_logging,
    log_format,
)
from stack.runtime import Runtime
from tests.unit.conftest import make_settings

# `LEVEL logger: message`, the level padded to 7, and nothing before it (no timestamp).
TEXT_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) +([\w.]+): (.+)$")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put the root logger, the host libraries'
    loggers, Celery's once-only flag and warnings' printer back as they were."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    touched = (*HOST_LOGGERS, POOL_LOGGER)
    saved_hosts = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in touched}
    saved_levels = {n: logging.getLogger(n).level for n in ("uvicorn.error", "uvicorn.access", POOL_LOGGER)}
    saved_showwarning, saved_setup = warnings.showwarning, Logging._setup
    yield
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    for name, (handlers, propagate) in saved_hosts.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
    warnings.showwarning, Logging._setup = saved_showwarning, saved_setup


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_every_library_logs_in_the_one_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig(copy.deepcopy(LOGGING_CONFIG))  # what uvicorn installs at start
    logging.getLogger("celery").addHandler(logging.StreamHandler())  # as Celery's hijack would
    configure_logging("info")
    logging.getLogger("stack.jobs.runner").info("job %s (%s) succeeded", "j1", "demo")
    logging.getLogger("celery.worker.strategy").info(
        "Task %(name)s[%(id)s] received", {"name": "jobs.demo", "id": "j1"}
    )
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8000")
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/", "1.1", 200)
    logging.getLogger("tornado.application").error("Uncaught exception GET /")
    logging.getLogger("flower.command").info("Visit me at http://127.0.0.1:5555")
    assert printed(capsys) == [
        "INFO    stack.jobs.runner: job j1 (demo) succeeded",
        "INFO    celery.worker.strategy: Task jobs.demo[j1] received",
        "INFO    uvicorn.error: Uvicorn running on http://127.0.0.1:8000",
        'INFO    uvicorn.access: 127.0.0.1:1 - "GET / HTTP/1.1" 200',
        "ERROR   tornado.application: Uncaught exception GET /",
        "INFO    flower.command: Visit me at http://127.0.0.1:5555",
    ]


def test_uvicorn_log_config_file_routes_uvicorn_through_the_stack_handler(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACK_DATA_DIR", str(tmp_path))
    # What uvicorn does with `--log-config` (stack.roles): dictConfig of the JSON file.
    logging.config.dictConfig(json.loads(roles.UVICORN_LOG_CONFIG.read_text()))
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8000")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)  # routine: DEBUG
    assert printed(capsys) == ["INFO    uvicorn.error: Uvicorn running on http://127.0.0.1:8000"]
    assert [type(h) for h in logging.getLogger().handlers].count(StackHandler) == 1
    argv = roles.api(make_settings(tmp_path)).argv
    assert argv[argv.index("--log-config") + 1] == str(roles.UVICORN_LOG_CONFIG)


def test_configuring_twice_leaves_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    configure_logging("info")
    logging.getLogger("stack").info("once")
    assert printed(capsys) == ["INFO    stack: once"]


def test_celery_logs_through_the_stack_handler(capsys: pytest.CaptureFixture[str], runtime: Runtime) -> None:
    app = create_celery(runtime.settings, runtime.registry)
    Logging._setup = False
    app.log.setup(loglevel="INFO")  # what `celery worker --loglevel INFO` and beat do
    assert [type(h) for h in logging.getLogger().handlers].count(StackHandler) == 1
    assert not logging.getLogger("celery").handlers  # Celery did not install its own format
    logging.getLogger("celery.apps.worker").info("%s ready.", "worker@host")
    lines = printed(capsys)
    assert lines == ["INFO    celery.apps.worker: worker@host ready."]
    assert all(TEXT_LINE.match(line) for line in lines)


def test_celerys_privilege_warning_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    warnings.warn("running as root:\nabsolutely not\n\nrecommended", UserWarning, stacklevel=1)
    [line] = printed(capsys)
    assert line.startswith("WARNING py.warnings: UserWarning: running as root: absolutely not recommended (")


def test_routine_lines_show_only_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    routine = [
        ("uvicorn.error", "Application startup complete."),
        ("flower.inspector", "Inspect method %s failed"),
        ("celery.beat", "Scheduler: Sending due task %s (%s)"),
        ("alembic.runtime.plugins", "setup plugin %s"),
    ]

    def emit() -> None:
        for name, template in routine:
            args = ("a", "b")[: template.count("%s") + template.count("%d")]
            level = logging.WARNING if name == "flower.inspector" else logging.INFO
            logging.getLogger(name).log(level, template, *args)

    configure_logging("info")
    emit()
    assert printed(capsys) == []
    configure_logging("debug")
    emit()
    lines = printed(capsys)
    assert len(lines) == len(routine) and all(line.startswith("DEBUG ") for line in lines)


def test_a_lost_pool_process_is_one_line_and_stacks_warning_stands_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    billiard_util.get_logger().error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 7, "signal 9")
    request_log = logging.getLogger("celery.worker.request")
    for exc in (WorkerLostError("Worker exited prematurely: signal 9"), TimeLimitExceeded(330)):
        try:
            raise exc
        except Exception as raised:
            request_log.error("Task handler raised error: %r", raised, exc_info=True)
    try:
        raise ValueError("a bug in a request class")
    except ValueError as raised:
        request_log.error("Task handler raised error: %r", raised, exc_info=True)
    lines = printed(capsys)
    assert lines[0] == "ERROR   multiprocessing: Process 'ForkPoolWorker-1' pid:7 exited with 'signal 9'"
    assert (
        lines[1]
        == "ERROR   celery.worker.request: Task handler raised error: ValueError('a bug in a request class')"
    )
    assert lines[2] == "Traceback (most recent call last):"  # an unexpected error keeps its traceback
    assert not any("WorkerLostError" in line or "TimeLimitExceeded" in line for line in lines)


def test_json_lines_carry_time_level_logger_message_and_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", fmt="json")
    log = logging.getLogger("stack.jobs.runner")
    with job_logging("job-1", "demo"):
        log.warning("job %s (%s) failed: %s", "job-1", "demo", "boom")
    log.info("outside any job")
    inside, outside = (json.loads(line) for line in printed(capsys))
    assert inside["level"] == "WARNING" and inside["logger"] == "stack.jobs.runner"
    assert inside["message"] == "job job-1 (demo) failed: boom"
    assert (inside["job_id"], inside["kind"]) == ("job-1", "demo")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", inside["time"])
    assert "job_id" not in outside and "kind" not in outside


def test_json_is_the_default_in_production_only(tmp_path: Path) -> None:
    assert log_format(make_settings(tmp_path)) == "text"
    assert log_format(make_settings(tmp_path, log_format="json")) == "json"
    production = make_settings(tmp_path).model_copy(update={"app_env": AppEnv.PRODUCTION})
    assert log_format(production) == "json"
    assert log_format(production.model_copy(update={"log_format": "text"})) == "text"


def test_bad_level_or_format_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"STACK_LOG_LEVEL='loud' is not a log level; use one of debug"):
        configure_for(make_settings(tmp_path, log_level="loud"))
    with pytest.raises(ConfigError, match=r"STACK_LOG_FORMAT='xml' is not a log format; use text or json"):
        configure_for(make_settings(tmp_path, log_format="xml"))


def test_a_sweep_that_did_nothing_logs_at_debug_only(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stack.jobs.sweep")
    sweep(runtime, create_celery(runtime.settings, runtime.registry))
    swept = [r for r in caplog.records if r.name == "stack.jobs.sweep"]
    assert [(r.levelno, r.getMessage()) for r in swept] == [(logging.DEBUG, "sweep: nothing to do")]


def test_flower_starts_under_stack_logging_without_tornados_format(tmp_path: Path) -> None:
    argv = roles.flower(make_settings(tmp_path)).argv
    assert argv[1:3] == ["-m", "stack.logs"] and "flower" in argv and "--logging=none" in argv
