"""stack's pytest plugin (entry point `pytest11: stack`).

Part 1, services: session-scoped real Redis and PostgreSQL servers, chosen by
`--stack-services=auto|url|docker|local` (or STACK_SERVICES), and per-module fresh databases.
Every fixture is small and can be overridden in a conftest.py, as in pytest-celery.

Fixtures:
    stack_services_mode      session  "auto" | "url" | "docker" | "local"
    stack_redis_service      session  a started RedisService (skips when none is available)
    stack_postgres_service   session  a started PostgresService (skips when none is available)
    stack_redis_url          module   redis://host:port/N, a flushed logical database (never one
                                      holding someone else's keys)
    stack_database_url       module   postgresql://.../db, a database created for the module
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, cast

import pytest

from stack.errors import ConfigError
from stack.testing.services.selection import (
    MODE_ENV,
    MODES,
    Mode,
    Unavailable,
    build_service,
    check_image,
    find_binaries,
    resolve_mode,
    select_provider,
)

if TYPE_CHECKING:
    from stack.testing.services.base import Kind, Service
    from stack.testing.services.postgres import PostgresService
    from stack.testing.services.redis import RedisService

logger = logging.getLogger(__name__)

REQUIRED_ENV = "STACK_E2E_REQUIRED"
READY_TIMEOUT = 60.0


@dataclass
class _BringUp:
    """How a session service was served, for the one-line summary."""

    provider: str
    seconds: float | None = None


_bring_ups_key = pytest.StashKey[dict[str, _BringUp]]()
_mode_key = pytest.StashKey[Mode]()
_fallbacks_key = pytest.StashKey[list[str]]()


# --- hooks ----------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stack", "stack test services")
    group.addoption(
        "--stack-services",
        choices=MODES,
        default=None,
        help=(
            "where e2e tests get Redis and PostgreSQL: url (STACK_TEST_REDIS_URL / "
            "STACK_TEST_DATABASE_URL), docker (testcontainers), local (binaries), or auto = the "
            f"first that works in that order. Default: ${MODE_ENV} or auto."
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end tests against real Redis, PostgreSQL and worker processes"
    )
    try:
        config.stash[_mode_key] = resolve_mode(config.getoption("--stack-services"), os.environ)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_bring_ups_key] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in terminalreporter.config.stash.get(_fallbacks_key, []):
        terminalreporter.write_line(f"stack services: {line}")
    bring_ups = terminalreporter.config.stash.get(_bring_ups_key, {})
    if bring_ups:
        terminalreporter.write_line(_summary_line(bring_ups))


def _summary_line(bring_ups: dict[str, _BringUp]) -> str:
    parts = []
    for kind, info in bring_ups.items():
        took = f" ({info.seconds:.2f} s)" if info.seconds is not None else ""
        parts.append(f"{kind}={info.provider}{took}")
    return "stack services: " + " ".join(parts)


# --- session services -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def stack_services_mode(pytestconfig: pytest.Config) -> Mode:
    """Override to force a provider for a whole test suite."""
    return pytestconfig.stash.get(_mode_key, "auto")


@pytest.fixture(scope="session")
def stack_redis_service(pytestconfig: pytest.Config, stack_services_mode: Mode) -> Iterator[RedisService]:
    yield from cast("Iterator[RedisService]", _serve(pytestconfig, "redis", stack_services_mode))


@pytest.fixture(scope="session")
def stack_postgres_service(
    pytestconfig: pytest.Config, stack_services_mode: Mode
) -> Iterator[PostgresService]:
    services = _serve(pytestconfig, "postgres", stack_services_mode)
    yield from cast("Iterator[PostgresService]", services)


def _serve(config: pytest.Config, kind: Kind, mode: Mode) -> Iterator[Service]:
    """Select, start, yield and always tear down one session service."""
    bring_ups = config.stash.setdefault(_bring_ups_key, {})
    # check_image asks the engine once per image per process (it is cached): with no engine
    # the ping costs its whole timeout.
    choice = select_provider(
        kind, mode, env=os.environ, docker_check=check_image, find_binaries=find_binaries
    )
    if isinstance(choice, Unavailable):
        bring_ups[kind] = _BringUp("unavailable")
        _not_available(choice.reason)
    if choice.fallback:
        # The one line saying why Docker was passed over: logged now, printed in the summary.
        logger.warning("%s", choice.fallback)
        config.stash.setdefault(_fallbacks_key, []).append(choice.fallback)
    service = build_service(choice)
    started = time.monotonic()
    try:
        service.start()
        service.wait_ready(READY_TIMEOUT)
        seconds = time.monotonic() - started
        bring_ups[kind] = _BringUp(service.provider, seconds)
        logger.info("%s served by %s in %.2f s: %r", kind, service.provider, seconds, service)
        yield service
    finally:
        # Also runs on Ctrl-C and when start() failed halfway (e.g. a process is up, not ready).
        service.teardown()


def _not_available(reason: str) -> NoReturn:
    if os.environ.get(REQUIRED_ENV, "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} ({REQUIRED_ENV} is set, so this is an error)", pytrace=False)
    pytest.skip(reason)


# --- per-module resources -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack_redis_url(stack_redis_service: RedisService) -> Iterator[str]:
    """A flushed logical Redis database for this module, e.g. redis://127.0.0.1:40123/3.

    Given back after the module, so the one database STACK_TEST_REDIS_URL names serves every
    module in turn; the service refuses a database holding keys that are not the plugin's.
    """
    url = stack_redis_service.allocate_db()
    try:
        yield url
    finally:
        # Fixtures using the URL (the module's processes) depend on this one, so they are gone.
        stack_redis_service.release_db(url)


@pytest.fixture(scope="module")
def stack_database_url(
    request: pytest.FixtureRequest, stack_postgres_service: PostgresService
) -> Iterator[str]:
    """A PostgreSQL database created for this module and dropped after it (postgresql:// URL).

    Named `stack_<module>_<8 hex>`; the service drops only databases it created, never the one
    STACK_TEST_DATABASE_URL names.
    """
    from stack.testing.services.postgres import database_name, new_database_name

    module = request.module.__name__.rsplit(".", 1)[-1] if request.module else "session"
    url = stack_postgres_service.create_database(new_database_name(_db_prefix(module)))
    try:
        yield url
    finally:
        stack_postgres_service.drop_database(database_name(url))


def _db_prefix(module: str) -> str:
    # The module name makes a leftover database easy to trace back to its tests.
    return "stack_" + re.sub(r"^test_", "", module)[:30]


# --- process fixtures -----------------------------------------------------------------------------
# Re-exported so that the one entry point registers them too.
from stack.testing.fixtures import (  # noqa: E402
    stack_api,
    stack_env,
    stack_processes,
    stack_procfile,
    stack_service_env,
    stack_start,
)

__all__ = [
    "stack_api",
    "stack_env",
    "stack_processes",
    "stack_procfile",
    "stack_service_env",
    "stack_start",
]
