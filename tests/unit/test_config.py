from __future__ import annotations

from pathlib import Path

import pytest

from stack.config import Settings, load_settings, normalise_database_url, redact_url
from stack.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/app", "postgresql+psycopg://u:p@db:5432/app"),
        ("postgresql://u:p@db/app", "postgresql+psycopg://u:p@db/app"),
        ("postgresql+psycopg://u:p@db/app", "postgresql+psycopg://u:p@db/app"),
        ("postgresql+asyncpg://u:p@db/app", "postgresql+psycopg://u:p@db/app"),
        ("postgresql+psycopg2://u:p@db/app", "postgresql+psycopg://u:p@db/app"),
        ("postgresql+asyncpg://u:p@db/app?ssl=require", "postgresql+psycopg://u:p@db/app?sslmode=require"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite:////abs/path.db", "sqlite:////abs/path.db"),
    ],
)
def test_database_url_every_platform_form(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_database_url_unsupported_backend_names_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://u:secret@db/app")
    with pytest.raises(ConfigError, match="DATABASE_URL") as info:
        load_settings()
    assert "secret" not in str(info.value)


def test_development_defaults_need_nothing(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.result_backend == settings.broker_url
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith(".stack/stack.db")
    assert settings.uses_embedded_redis


def test_embedded_redis_port_moves_the_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_REDIS_PORT", "6390")
    assert load_settings().broker_url == "redis://127.0.0.1:6390/0"


def test_broker_and_backend_default_to_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    settings = load_settings()
    assert settings.broker_url == settings.result_backend == "redis://cache:6379/2"
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://broker:6379/0")
    assert load_settings().broker_url == "redis://broker:6379/0"
    assert load_settings().result_backend == "redis://cache:6379/2"


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "SECRET_KEY"])
def test_production_refuses_silent_defaults(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    for name, value in {
        "DATABASE_URL": "postgresql://u:p@db/app",
        "REDIS_URL": "redis://cache:6379/0",
        "SECRET_KEY": "x" * 40,
    }.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^{missing} is not set"):
        load_settings()


def test_production_complete_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db/app")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    settings = load_settings()
    assert settings.is_production
    assert settings.database_url == "postgresql+psycopg://u:p@db/app"


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(ConfigError, match="PORT"):
        load_settings()
    monkeypatch.setenv("PORT", "8000")
    monkeypatch.setenv("SERVICE_TYPE", "wroker")
    with pytest.raises(ConfigError, match="SERVICE_TYPE"):
        load_settings()


def test_queues_and_role_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_WORKER_QUEUES", " content, logs ,")
    monkeypatch.setenv("SERVICE_TYPE", "Worker")
    monkeypatch.setenv("CELERY_ENABLED", "false")
    settings = load_settings()
    assert settings.worker_queues == ["content", "logs"]
    assert settings.service_type == "worker"
    assert settings.celery_enabled is False


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("postgresql://app:pw@db/x") == "postgresql://app:***@db/x"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_fingerprint_compares_without_secrets() -> None:
    a = Settings(_env_file=None, redis_url="redis://:pw@a:6379/0")  # type: ignore[call-arg]
    b = Settings(_env_file=None, redis_url="redis://:pw@b:6379/0")  # type: ignore[call-arg]
    assert a.fingerprint()["broker"] != b.fingerprint()["broker"]
    assert "pw" not in str(a.fingerprint())


def test_time_limits_must_nest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_TASK_SOFT_TIME_LIMIT", "30")
    monkeypatch.setenv("STACK_TASK_TIME_LIMIT", "20")
    with pytest.raises(ConfigError, match="STACK_TASK_SOFT_TIME_LIMIT must be lower"):
        load_settings()
    monkeypatch.setenv("STACK_TASK_SOFT_TIME_LIMIT", "10")
    monkeypatch.setenv("STACK_VISIBILITY_TIMEOUT", "15")
    with pytest.raises(ConfigError, match="STACK_VISIBILITY_TIMEOUT must be longer"):
        load_settings()
    monkeypatch.setenv("STACK_VISIBILITY_TIMEOUT", "25")
    assert load_settings().effective_visibility_timeout == 25
