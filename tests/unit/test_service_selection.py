"""Which provider serves Redis and PostgreSQL in tests: pure rules, no servers, no Docker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stack.errors import ConfigError
from stack.testing.services.base import Kind
from stack.testing.services.selection import (
    DEFAULT_IMAGE,
    IMAGE_ENV,
    URL_ENV,
    DockerVerdict,
    Mode,
    ProviderChoice,
    Unavailable,
    parse_mode,
    resolve_mode,
    select_provider,
)

REDIS_BIN = Path("/opt/redis/bin/redis-server")
PG_BIN = Path("/usr/lib/postgresql/16/bin")
KINDS: list[Kind] = ["redis", "postgres"]


def _never(image: str) -> DockerVerdict:
    raise AssertionError("Docker must not be asked here")


def _engine(answers: bool) -> Callable[[str], DockerVerdict]:
    """An engine that can run every image (True) or does not answer at all (False)."""

    def check(image: str) -> DockerVerdict:
        if answers:
            return DockerVerdict(image, engine=True, usable=True)
        return DockerVerdict(image, engine=False, usable=False, reason="no Docker engine answers")

    return check


def _missing(image: str) -> DockerVerdict:
    """An engine that answers but has no images and no registry (an offline CI machine)."""
    return DockerVerdict(
        image,
        engine=True,
        usable=False,
        reason=f"image {image} is not present and cannot be pulled (registry unreachable: no such host)",
    )


def _docker(kind: Kind) -> ProviderChoice:
    return ProviderChoice(kind, "docker", image=DEFAULT_IMAGE[kind])


def _no_lookup(kind: Kind) -> Path | None:
    raise AssertionError("binaries must not be looked up here")


def _binaries(found: bool) -> Callable[[Kind], Path | None]:
    def lookup(kind: Kind) -> Path | None:
        if not found:
            return None
        return REDIS_BIN if kind == "redis" else PG_BIN

    return lookup


def select(
    kind: Kind,
    mode: Mode = "auto",
    *,
    env: dict[str, str] | None = None,
    docker: bool | Callable[[str], DockerVerdict] = False,
    binaries: bool | Callable[[Kind], Path | None] = False,
) -> ProviderChoice | Unavailable:
    return select_provider(
        kind,
        mode,
        env=env or {},
        docker_check=docker if callable(docker) else _engine(docker),
        find_binaries=binaries if callable(binaries) else _binaries(binaries),
    )


# --- auto ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_url_wins_without_asking_docker_or_looking_for_binaries(kind: Kind) -> None:
    url = "redis://cache:6379/0" if kind == "redis" else "postgresql://u:p@db/app"
    choice = select(kind, env={URL_ENV[kind]: url}, docker=_never, binaries=_no_lookup)
    assert choice == ProviderChoice(kind, "url", url=url)


@pytest.mark.parametrize("kind", KINDS)
def test_docker_when_the_engine_answers(kind: Kind) -> None:
    choice = select(kind, docker=True, binaries=_no_lookup)
    assert choice == _docker(kind)


def test_local_when_no_url_no_docker_but_binaries() -> None:
    assert select("redis", binaries=True) == ProviderChoice("redis", "local", binary=REDIS_BIN)
    assert select("postgres", binaries=True) == ProviderChoice("postgres", "local", binary=PG_BIN)


def test_blank_url_counts_as_unset() -> None:
    choice = select("postgres", env={"STACK_TEST_DATABASE_URL": "  "}, binaries=True)
    assert isinstance(choice, ProviderChoice)
    assert choice.provider == "local"


def test_the_url_of_one_kind_does_not_serve_the_other() -> None:
    env = {"STACK_TEST_DATABASE_URL": "postgresql://db/app"}
    redis_choice = select("redis", env=env, binaries=True)
    assert isinstance(redis_choice, ProviderChoice)
    assert redis_choice.provider == "local"


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_available_says_every_way_to_fix_it(kind: Kind) -> None:
    choice = select(kind)
    assert isinstance(choice, Unavailable)
    assert URL_ENV[kind] in choice.reason
    assert "Docker" in choice.reason
    assert "install" in choice.reason


def test_postgres_unavailable_reason_names_the_package() -> None:
    choice = select("postgres")
    assert isinstance(choice, Unavailable)
    assert "apt-get install postgresql" in choice.reason
    assert "STACK_TEST_DATABASE_URL=postgresql://" in choice.reason


# --- explicit modes -----------------------------------------------------------------------------
def test_url_mode_uses_the_url() -> None:
    env = {"STACK_TEST_REDIS_URL": "redis://r:6379/0"}
    choice = select("redis", "url", env=env, docker=_never, binaries=_no_lookup)
    assert choice == ProviderChoice("redis", "url", url="redis://r:6379/0")


def test_redis_dbs_come_with_the_redis_url_and_reach_the_service() -> None:
    from stack.testing.services.redis import UrlRedis
    from stack.testing.services.selection import build_service

    env = {"STACK_TEST_REDIS_URL": "redis://r:6379/5", "STACK_TEST_REDIS_DBS": " 3 "}
    choice = select("redis", env=env, docker=_never, binaries=_no_lookup)
    assert choice == ProviderChoice("redis", "url", url="redis://r:6379/5", redis_dbs=3)
    service = build_service(choice)
    assert isinstance(service, UrlRedis) and service.databases() == range(5, 8)
    # Unset: the URL's database and no other.
    only = build_service(select("redis", env={"STACK_TEST_REDIS_URL": "redis://r:6379/5"}))
    assert isinstance(only, UrlRedis) and only.databases() == range(5, 6)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "5-8"])
def test_a_malformed_redis_dbs_is_an_error_not_a_guess(value: str) -> None:
    env = {"STACK_TEST_REDIS_URL": "redis://r:6379/5", "STACK_TEST_REDIS_DBS": value}
    with pytest.raises(ConfigError, match=r"STACK_TEST_REDIS_DBS=.*at least 1"):
        select("redis", env=env)


def test_redis_dbs_matter_only_for_a_redis_url() -> None:
    env = {"STACK_TEST_REDIS_DBS": "nonsense", "STACK_TEST_DATABASE_URL": "postgresql://db/app"}
    assert select("postgres", env=env) == ProviderChoice("postgres", "url", url="postgresql://db/app")
    assert select("redis", env=env, docker=True) == _docker("redis")


@pytest.mark.parametrize("kind", KINDS)
def test_url_mode_without_url_is_unavailable_even_with_docker_and_binaries(kind: Kind) -> None:
    choice = select(kind, "url", docker=True, binaries=True)
    assert isinstance(choice, Unavailable)
    assert f"set {URL_ENV[kind]}=" in choice.reason


def test_docker_mode_ignores_the_url() -> None:
    env = {"STACK_TEST_REDIS_URL": "redis://r:6379/0"}
    assert select("redis", "docker", env=env, docker=True) == _docker("redis")


def test_docker_mode_without_engine_is_unavailable_even_with_binaries() -> None:
    choice = select("postgres", "docker", docker=False, binaries=True)
    assert isinstance(choice, Unavailable)
    assert "start Docker" in choice.reason


def test_local_mode_ignores_url_and_docker() -> None:
    env = {"STACK_TEST_DATABASE_URL": "postgresql://db/app"}
    choice = select("postgres", "local", env=env, docker=_never, binaries=True)
    assert choice == ProviderChoice("postgres", "local", binary=PG_BIN)


@pytest.mark.parametrize(
    ("kind", "hint"),
    [("redis", "redis-server"), ("postgres", "apt-get install postgresql")],
)
def test_local_mode_without_binaries_says_what_to_install(kind: Kind, hint: str) -> None:
    choice = select(kind, "local", docker=_never)
    assert isinstance(choice, Unavailable)
    assert hint in choice.reason
    assert choice.reason.startswith(f"{kind}:")


# --- docker images: present, pullable, or not ------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_docker_is_asked_about_the_image_from_the_environment(kind: Kind) -> None:
    asked: list[str] = []

    def check(image: str) -> DockerVerdict:
        asked.append(image)
        return DockerVerdict(image, engine=True, usable=True)

    env = {IMAGE_ENV[kind]: " stack-local/thing:1 "}
    assert select(kind, env=env, docker=check) == ProviderChoice(kind, "docker", image="stack-local/thing:1")
    assert select(kind, docker=check) == _docker(kind)
    assert asked == ["stack-local/thing:1", DEFAULT_IMAGE[kind]]


@pytest.mark.parametrize("kind", KINDS)
def test_auto_falls_back_to_binaries_with_one_line_naming_image_and_fix(kind: Kind) -> None:
    choice = select(kind, docker=_missing, binaries=True)
    assert isinstance(choice, ProviderChoice)
    assert choice.provider == "local" and choice.binary is not None
    line = choice.fallback
    assert line is not None and "\n" not in line
    assert line.startswith(f"{kind}: docker: image {DEFAULT_IMAGE[kind]} is not present and cannot be pulled")
    assert "registry unreachable" in line
    assert "using local binaries" in line
    assert f"set {IMAGE_ENV[kind]} to a local image" in line
    assert "STACK_SERVICES=local" in line


def test_no_fallback_line_without_an_engine() -> None:
    # The usual machine without Docker: nothing surprising happened, nothing to explain.
    choice = select("redis", docker=False, binaries=True)
    assert choice == ProviderChoice("redis", "local", binary=REDIS_BIN)


def test_auto_with_unusable_images_and_no_binaries_names_the_image_setting() -> None:
    choice = select("postgres", docker=_missing)
    assert isinstance(choice, Unavailable)
    assert "docker: image postgres:16-alpine is not present" in choice.reason
    assert "STACK_TEST_POSTGRES_IMAGE" in choice.reason
    assert "apt-get install postgresql" in choice.reason


@pytest.mark.parametrize("kind", KINDS)
def test_docker_mode_with_an_unusable_image_is_unavailable_naming_image_and_fix(kind: Kind) -> None:
    choice = select(kind, "docker", docker=_missing, binaries=_no_lookup)
    assert isinstance(choice, Unavailable)
    assert DEFAULT_IMAGE[kind] in choice.reason
    assert IMAGE_ENV[kind] in choice.reason
    assert "STACK_SERVICES=local" in choice.reason


def test_local_mode_never_asks_docker_about_images() -> None:
    choice = select("redis", "local", env={IMAGE_ENV["redis"]: "x"}, docker=_never, binaries=True)
    assert choice == ProviderChoice("redis", "local", binary=REDIS_BIN)


# --- the engine's rules: where containers are reached, stale containers, registry errors ------------
def test_containers_are_reached_at_127_0_0_1_when_the_engine_runs_here() -> None:
    from stack.testing.services.engine import connection_settings

    here = connection_settings({}, engine_name="vm", hostname="vm")
    assert here == {"TESTCONTAINERS_CONNECTION_MODE": "docker_host", "TC_HOST": "127.0.0.1"}
    assert (
        connection_settings({"DOCKER_HOST": "unix:///run/docker.sock"}, engine_name="vm", hostname="vm")
        == here
    )


@pytest.mark.parametrize(
    ("env", "engine_name"),
    [
        ({"TC_HOST": "10.0.0.5"}, "vm"),  # the user said where
        ({"TESTCONTAINERS_CONNECTION_MODE": "bridge_ip"}, "vm"),
        ({"DOCKER_HOST": "tcp://build-host:2376"}, "vm"),  # a remote engine
        ({}, "docker-desktop"),  # the engine runs in another machine (Docker Desktop's VM)
    ],
)
def test_testcontainers_keeps_its_own_answer_elsewhere(env: dict[str, str], engine_name: str) -> None:
    from stack.testing.services.engine import connection_settings

    assert connection_settings(env, engine_name=engine_name, hostname="vm") == {}


def test_only_containers_of_ended_sessions_on_this_host_are_stale() -> None:
    from stack.testing.services.engine import owner_value, stale_containers

    owners = [
        ("dead", owner_value("vm", 111)),
        ("live", owner_value("vm", 222)),  # another session running right now
        ("other-host", owner_value("ci-7", 111)),
        ("garbled", "vm pid?"),
    ]
    assert stale_containers(owners, hostname="vm", alive=lambda pid: pid == 222) == ["dead"]


def test_registry_errors_say_whether_the_registry_was_reached() -> None:
    from stack.testing.services.engine import pull_problem

    dns = 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host'
    assert pull_problem(dns, timed_out=False).startswith("registry unreachable: ")
    assert pull_problem("manifest unknown", timed_out=False) == "manifest unknown"
    assert "did not answer within" in pull_problem("", timed_out=True)


# --- mode parsing ---------------------------------------------------------------------------------
def test_option_wins_over_environment() -> None:
    assert resolve_mode("local", {"STACK_SERVICES": "docker"}) == "local"


def test_environment_used_without_option() -> None:
    assert resolve_mode(None, {"STACK_SERVICES": "Docker "}) == "docker"


def test_default_is_auto() -> None:
    assert resolve_mode(None, {}) == "auto"
    assert parse_mode("") == "auto"


def test_unknown_mode_names_the_value_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'podman'.*auto, url, docker, local"):
        parse_mode("podman")


# --- finding local binaries -----------------------------------------------------------------------
def _tool(directory: Path, name: str, content: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    path.chmod(0o755)


def test_highest_postgres_version_wins_numerically() -> None:
    from stack.testing.services.binaries import _best

    dirs = [Path("/usr/lib/postgresql/9.6/bin"), Path("/usr/lib/postgresql/16/bin")]
    assert _best(dirs) == Path("/usr/lib/postgresql/16/bin")
    assert _best([]) is None


def test_real_initdb_on_path_gives_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.testing.services.binaries import _from_path

    for tool in ("initdb", "postgres"):
        _tool(tmp_path / "pg", tool, b"\x7fELF")
    monkeypatch.setenv("PATH", str(tmp_path / "pg"))
    assert _from_path() == tmp_path / "pg"


def test_debian_pg_wrapper_on_path_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.testing.services.binaries import _from_path

    for tool in ("initdb", "postgres"):
        _tool(tmp_path / "bin", tool, b"#!/usr/bin/perl\n# pg_wrapper\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert _from_path() is None


# --- URLs handed to tests -------------------------------------------------------------------------
def test_redis_logical_database_replaces_path_and_db_query() -> None:
    from stack.testing.services.redis import with_db

    assert with_db("redis://:pw@h:1/0", 5) == "redis://:pw@h:1/5"
    assert with_db("rediss://h:1?db=2&ssl_cert_reqs=none", 3) == "rediss://h:1/3?ssl_cert_reqs=none"
    assert with_db("redis://h:1", 7) == "redis://h:1/7"


def test_postgres_urls_are_plain_libpq_form() -> None:
    from stack.testing.services.postgres import libpq_url, new_database_name, with_database

    assert libpq_url("postgresql+psycopg://u:p@h/db") == "postgresql://u:p@h/db"
    assert libpq_url("postgres://u@h/db") == "postgresql://u@h/db"
    assert with_database("postgresql://u@h:5/postgres?sslmode=disable", "t1") == (
        "postgresql://u@h:5/t1?sslmode=disable"
    )
    name = new_database_name("stack_My-Module.v2")
    assert name.startswith("stack_my_module_v2_")
    assert name != new_database_name("stack_My-Module.v2")
    assert len(new_database_name("x" * 100)) <= 63
