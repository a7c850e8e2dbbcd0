from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stack.api.app import create_app
from stack.cli import main
from stack.config import _shown, get_settings, load_settings
from stack.errors import ConfigError
from stack.urls import is_secret_name, redact_url
from tests.unit.conftest import make_settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql+psycopg://app:pw@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
        ("redis://u:p@ss@cache:1/0", "redis://u:***@cache:1/0"),  # '@' inside the password
        ("redis://cache/0?password=hunter2&db=1", "redis://cache/0?password=***&db=1"),
        (
            "postgresql://u@db/x?sslmode=require&sslpassword=z",
            "postgresql://u@db/x?sslmode=require&sslpassword=***",
        ),
        ("rediss://:a@h/0?pass=b&passwd=c&pwd=d", "rediss://:***@h/0?pass=***&passwd=***&pwd=***"),
        (
            "https://h/p?token=t&access_token=u&X-Api-Token=v",
            "https://h/p?token=***&access_token=***&X-Api-Token=***",
        ),
        (
            "https://h/p?secret=s&client_secret=c&key=k&api_key=a&apikey=b",
            "https://h/p?secret=***&client_secret=***&key=***&api_key=***&apikey=***",
        ),
        (
            "https://h/p?auth=a&Authorization=b&sig=c&X-Amz-Signature=d",
            "https://h/p?auth=***&Authorization=***&sig=***&X-Amz-Signature=***",
        ),
        ("https://h/p#access_token=t&state=s", "https://h/p#access_token=***&state=s"),
    ],
)
def test_passwords_and_secret_parameters_are_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379/0",
        "postgresql://app@db/x?sslmode=require&connect_timeout=5&keepalives=1",
        "sqlite:////var/lib/app/stack.db",  # urlunsplit would write sqlite:/var/...
        "https://h/p?design=1&page=2#section",
        "redis://cache/0?password=",  # nothing to hide
        "not a url",
    ],
)
def test_urls_without_secrets_come_back_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_only_the_secret_values_change_byte_for_byte() -> None:
    url = "sqlite:///x.db?a=%20b&password=p%40ss&c=d+e"
    assert redact_url(url) == "sqlite:///x.db?a=%20b&password=***&c=d+e"


def test_a_password_urlsplit_would_mangle_is_still_hidden() -> None:
    # urlsplit drops the newline, so the netloc it reports is not in the string as given.
    assert redact_url("redis://:pa\nss@cache/0?token=t") == "redis://:***@cache/0"


def test_unparseable_urls_are_not_echoed() -> None:
    assert redact_url("http://[::1:secret/") == "<unparseable url>"


@pytest.mark.parametrize("name", ["password", "PASS", "ssl_password", "x-api-token", "api%5Fkey", "session"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["db", "sslmode", "keepalives", "design", "page", "timeout"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


# --- where settings are shown: `stack config` and configuration errors ---------------------------

SECRET_ENV = {
    "SECRET_KEY": "hunter2-key",
    "STACK_FLOWER_BASIC_AUTH": "admin:hunter2-flower",
    "STACK_API_TOKENS": "hunter2-a,hunter2-b:read",
    "REDIS_URL": "redis://:hunter2-redis@cache:6379/0",
    "CELERY_BROKER_URL": "redis://cache:6379/1?password=hunter2-query",
    "DATABASE_URL": "postgresql://app:hunter2-db@db/x?sslpassword=hunter2-ssl",
}


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()  # the CLI reads the cached settings; these tests set their own env
    yield
    get_settings.cache_clear()


def test_stack_config_prints_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_settings: None
) -> None:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)

    assert main(["config"]) == 0

    out = capsys.readouterr().out
    assert "hunter2" not in out
    lines = set(out.splitlines())
    assert {
        "secret_key = ***",
        "flower_basic_auth = admin:***",
        "api_tokens = *** (2 tokens)",
        "redis_url = redis://:***@cache:6379/0",
        "celery_broker_url = redis://cache:6379/1?password=***",
        "database_url = postgresql+psycopg://app:***@db/x?sslpassword=***",
    } <= lines


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("secret_key", "hunter2", "***"),
        ("secret_key", 12345, "***"),
        ("api_tokens", ["hunter2", "hunter3:read"], "***"),
        ("api_tokens", "hunter2,hunter3", "***"),
        ("flower_basic_auth", "admin:hunter2", "'admin:***'"),
        ("flower_basic_auth", "hunter2", "***"),
        ("flower_basic_auth", ["admin:hunter2"], "***"),
        ("redis_url", "redis://h/0?password=hunter2", "'redis://h/0?password=***'"),
        ("cors_origins", ["https://u:hunter2@a.example"], "['https://u:***@a.example']"),
        ("port", "eighty", "'eighty'"),
    ],
)
def test_configuration_errors_show_no_secret(field: str, value: object, shown: str) -> None:
    assert _shown(field, value) == shown


def test_a_bad_secret_setting_is_named_but_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, flower_basic_auth=["admin:hunter2"], secret_key=["hunter3"])
    message = str(info.value)
    assert "STACK_FLOWER_BASIC_AUTH" in message and "SECRET_KEY" in message
    assert "hunter" not in message


def test_database_errors_reach_the_log_once_per_burst_and_never_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = make_settings(tmp_path, database_url="postgresql://nobody:hunter2@127.0.0.1:1/none")
    with TestClient(create_app(bad)) as client, caplog.at_level(logging.ERROR, logger="stack.api.app"):
        answers = [client.post("/api/jobs/demo", json={}) for _ in range(3)]

    assert [a.status_code for a in answers] == [503] * 3
    assert all(a.json() == {"detail": "the database is unreachable; see /ready"} for a in answers)
    logged = [
        r.getMessage() for r in caplog.records if r.name == "stack.api.app" and r.levelno >= logging.ERROR
    ]
    assert len(logged) == 1 and "127.0.0.1" in logged[0], logged  # the cause, server-side only
    assert "hunter2" not in logged[0]
