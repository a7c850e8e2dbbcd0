"""compose.yaml, the Dockerfile and .dockerignore, checked without a Docker engine.

`.ci/compose-roundtrip` runs the topology for real; these catch the mistakes that would only show
there, minutes later: a role that would refuse to start, a service that migrates, a file the
image copies but the build context leaves out, a registry-only image with no way around it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack import roles
from stack.api.auth import resolve_auth
from stack.config import Role, Settings, load_settings
from stack.jobs.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# What a user must set: compose refuses to start without them (`${NAME:?why}`).
REQUIRED = {
    "SECRET_KEY": "s3cret-key-for-tests",
    "STACK_API_TOKENS": "a-long-random-token-for-tests",
    "FLOWER_BASIC_AUTH": "ci:flower-password",
    "POSTGRES_PASSWORD": "pg-password",
}
APP_SERVICES = ("migrate", "api", "worker", "beat", "flower")
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` substitution."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise LookupError(f"{name} is required: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(substitute, value)


def environment(service: str, env: dict[str, str] = REQUIRED) -> dict[str, str]:
    return {name: interpolate(str(value), env) for name, value in SERVICES[service]["environment"].items()}


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in environment(service).items():
        monkeypatch.setenv(name, value)
    return load_settings()  # production's checks included: a missing secret fails here


def test_the_topology_has_every_role_two_workers_and_both_servers() -> None:
    assert set(SERVICES) == {*APP_SERVICES, "redis", "postgres"}
    # docker-compose 1.29 and the compose plugin both honour deploy.replicas.
    assert SERVICES["worker"]["deploy"]["replicas"] == 2
    for name in APP_SERVICES:
        assert environment(name)["SERVICE_TYPE"] == name, f"{name} runs another role"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_each_role_starts_with_the_settings_it_is_given(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(service, monkeypatch)
    assert settings.is_production
    role = Role(service)
    if role is Role.MIGRATE:
        return
    if role is Role.API:
        resolve_auth(settings)
    roles.launch_for(role, settings, [], all_queues=load_registry(settings.kinds).queues())


def test_every_service_uses_the_same_broker_and_database() -> None:
    # The stuck-at-0% pain: an API and workers on different brokers or databases.
    shared = {name: environment(name) for name in APP_SERVICES}
    for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        assert len({env[key] for env in shared.values()}) == 1, f"{key} differs between services"
    password = REQUIRED["POSTGRES_PASSWORD"]
    assert environment("postgres")["POSTGRES_PASSWORD"] == password
    assert f":{password}@postgres:5432/" in shared["api"]["DATABASE_URL"]


def test_migrations_run_once_in_migrate_before_anything_else() -> None:
    assert SERVICES["migrate"].get("restart") == "no", "a migrate that restarts would run again"
    assert environment("api")["STACK_MIGRATE_ON_START"] == "false"
    for name in ("api", "worker", "beat", "flower"):
        depends = SERVICES[name]["depends_on"]
        assert depends == {"migrate": {"condition": "service_completed_successfully"}}, name
    migrate_waits_for = SERVICES["migrate"]["depends_on"]
    assert migrate_waits_for == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


@pytest.mark.parametrize("variable", sorted(REQUIRED))
def test_a_missing_secret_is_refused_naming_it(variable: str) -> None:
    given = {name: value for name, value in REQUIRED.items() if name != variable}
    with pytest.raises(LookupError, match=variable):
        for name in SERVICES:
            if "environment" in SERVICES[name]:
                environment(name, given)


def test_every_image_can_come_from_somewhere_else_than_a_registry() -> None:
    assert SERVICES["redis"]["image"] == "${STACK_REDIS_IMAGE:-redis:7-alpine}"
    assert SERVICES["postgres"]["image"] == "${STACK_POSTGRES_IMAGE:-postgres:16-alpine}"
    for name in APP_SERVICES:
        build = SERVICES[name]["build"]
        assert build["args"]["BASE_IMAGE"] == "${STACK_BASE_IMAGE:-python:3.11-slim}"
        assert interpolate(SERVICES[name]["image"], {}) == "stack:latest"
    # The base is an argument of every stage, declared before the first FROM.
    assert DOCKERFILE.index("ARG BASE_IMAGE=python:3.11-slim") < DOCKERFILE.index("FROM ")
    assert {line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("FROM ")} == {
        "${BASE_IMAGE}",
        "deps",
    }


def test_the_image_runs_unprivileged_and_its_role_comes_from_service_type() -> None:
    user = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("USER ")]
    assert user == ["stack"], "the last stage runs as the unprivileged user"
    assert DOCKERFILE.rstrip().splitlines()[-1] == 'CMD ["stack", "run"]'


def _dockerignore_allows(path: str) -> bool:
    """The last matching line decides, as Docker's own matcher does (top-level names here)."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!")
        if pattern == "*" or pattern == path:
            allowed = negated
    return allowed


def test_the_build_context_holds_what_the_dockerfile_copies_and_little_else() -> None:
    copied: set[str] = set()
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(source.replace("[s]", "s") for source in line.split()[1:-1])
    assert copied == {"pyproject.toml", "README.md", "stack", "app", "wheels"}
    for path in copied:
        assert _dockerignore_allows(path), f".dockerignore leaves {path} out, and the Dockerfile copies it"
    for path in (".venv", ".git", "tests", ".stack"):
        assert not _dockerignore_allows(path), f"{path} would be sent to every build"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "--file", str(ROOT / "compose.yaml"), "config", "--quiet"],
        env={"PATH": "/usr/bin:/bin", **REQUIRED},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
