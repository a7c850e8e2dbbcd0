"""Each role's command line, and the CLI's handling of roles and errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stack import cli, roles
from stack.config import Role
from stack.errors import ConfigError
from tests.unit.conftest import make_settings

QUEUES = ["content", "default", "logs"]


def test_api_runs_uvicorn_factory_on_host_port_with_workers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, host="0.0.0.0", port=9000, web_concurrency=4)
    launch = roles.api(settings, reuseport=False)  # e.g. macOS or Windows
    assert launch.argv[:3] == [sys.executable, "-m", "uvicorn"]
    assert "--factory" in launch.argv and roles.API_FACTORY in launch.argv
    assert launch.argv[launch.argv.index("--host") + 1] == "0.0.0.0"
    assert launch.argv[launch.argv.index("--port") + 1] == "9000"
    assert launch.argv[launch.argv.index("--workers") + 1] == "4"
    assert launch.migrate_first is True


def test_api_workers_get_a_listening_socket_each_where_the_kernel_balances_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, host="0.0.0.0", port=9000, web_concurrency=4)
    launch = roles.api(settings, ["--http", "h11"], reuseport=True)
    assert launch.argv[:3] == [sys.executable, "-m", "stack.api.workers"]
    supervisor, uvicorn = launch.argv[3 : launch.argv.index("--")], launch.argv[launch.argv.index("--") + 1 :]
    assert supervisor == ["--host", "0.0.0.0", "--port", "9000", "--workers", "4"]
    assert uvicorn[:2] == ["--factory", roles.API_FACTORY] and uvicorn[-2:] == ["--http", "h11"]
    single = roles.api(make_settings(tmp_path, web_concurrency=1), reuseport=True)
    assert single.argv[:3] == [sys.executable, "-m", "uvicorn"]  # one process: nothing to balance


def test_api_can_skip_migrations(tmp_path: Path) -> None:
    assert roles.api(make_settings(tmp_path, migrate_on_start=False)).migrate_first is False


def test_worker_serves_every_queue_by_default(tmp_path: Path) -> None:
    launch = roles.worker(make_settings(tmp_path), all_queues=QUEUES, platform="linux")
    argv = launch.argv
    assert argv[:5] == [sys.executable, "-m", "celery", "-A", roles.CELERY_APP]
    assert argv[argv.index("--queues") + 1] == "content,default,logs"
    assert argv[argv.index("--pool") + 1] == "prefork"
    assert argv[argv.index("--hostname") + 1] == "worker@%h"
    assert "--concurrency" not in argv  # Celery's default: one per CPU
    assert not launch.migrate_first


def test_worker_queues_pool_concurrency_and_passthrough(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_queues=["content"], worker_pool="threads", worker_concurrency=8)
    argv = roles.worker(settings, ["--max-tasks-per-child", "100"], all_queues=QUEUES, platform="linux").argv
    assert argv[argv.index("--queues") + 1] == "content"
    assert argv[argv.index("--pool") + 1] == "threads"
    assert argv[argv.index("--concurrency") + 1] == "8"
    assert argv[argv.index("--hostname") + 1] == "content@%h"
    assert argv[-2:] == ["--max-tasks-per-child", "100"]


def test_worker_on_windows_falls_back_from_prefork_with_a_warning(tmp_path: Path) -> None:
    launch = roles.worker(make_settings(tmp_path), all_queues=QUEUES, platform="win32")
    assert launch.argv[launch.argv.index("--pool") + 1] == "threads"
    assert launch.warnings and "Windows" in launch.warnings[0]


def test_worker_unknown_pool_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STACK_WORKER_POOL"):
        roles.worker(make_settings(tmp_path, worker_pool="turbo"), all_queues=QUEUES)


def test_beat_keeps_its_schedule_in_the_data_dir(tmp_path: Path) -> None:
    argv = roles.beat(make_settings(tmp_path)).argv
    assert "beat" in argv
    assert argv[argv.index("--schedule") + 1] == str((tmp_path / "data" / "celerybeat-schedule").resolve())


def test_flower_basic_auth_goes_through_the_environment(tmp_path: Path) -> None:
    launch = roles.flower(make_settings(tmp_path, flower_basic_auth="admin:s3cret", flower_port=5601))
    assert launch.env == {"FLOWER_BASIC_AUTH": "admin:s3cret"}
    assert "s3cret" not in " ".join(launch.argv)
    assert "--port=5601" in launch.argv


def test_flower_in_production_requires_basic_auth(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STACK_FLOWER_BASIC_AUTH"):
        roles.flower(make_settings(tmp_path, app_env="production"))
    with pytest.raises(ConfigError, match="user:password"):
        roles.flower(make_settings(tmp_path, flower_basic_auth="nocolon"))


def test_in_process_roles_have_no_command_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        roles.launch_for(Role.MIGRATE, make_settings(tmp_path), [], all_queues=QUEUES)


def test_cli_without_role_or_service_type_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run"]) == 1
    assert "SERVICE_TYPE" in capsys.readouterr().err


def test_cli_role_from_service_type(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SERVICE_TYPE", "migrate")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    cli.get_settings.cache_clear()
    try:
        assert cli.main(["run"]) == 0
    finally:
        cli.get_settings.cache_clear()
    assert (tmp_path / "x.db").exists()


def test_cli_config_error_is_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    cli.get_settings.cache_clear()
    try:
        assert cli.main(["run", "api"]) == 1
    finally:
        cli.get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("stack: error: DATABASE_URL is not set") and "Traceback" not in err


def test_help_lists_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in (
        "REDIS_URL",
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "CELERY_ENABLED",
        "SERVICE_TYPE",
        "STACK_MAX_BODY_BYTES",
        "STACK_WORKER_QUEUES",
        "STACK_MIGRATE_ON_START",
    ):
        assert name in out


def test_worker_skips_mingle_and_gossip(tmp_path: Path) -> None:
    # Revocations live in the job row, so worker-to-worker revoke sync only slows start-up.
    argv = roles.worker(make_settings(tmp_path), all_queues=QUEUES, platform="linux").argv
    assert "--without-mingle" in argv and "--without-gossip" in argv
