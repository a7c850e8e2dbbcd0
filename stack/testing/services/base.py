"""The shape every test service has, whichever provider serves it (url, docker or local).

Modelled on pytest-celery's vendors: one small class per provider with `url`, `ready()` and
`teardown()`, so fixtures can treat a container, a child process and a given URL the same way.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Literal, Self, TypeVar

from stack.errors import StackError
from stack.urls import redact_url

logger = logging.getLogger(__name__)

Kind = Literal["redis", "postgres"]
ProviderName = Literal["url", "docker", "local"]

# Short enough that a dead server is noticed quickly, long enough for a loaded CI machine.
PROBE_TIMEOUT = 1.0
POLL_INTERVAL = 0.05


class ServiceError(StackError):
    """A test service could not be started, reached or stopped."""


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = POLL_INTERVAL) -> T:
    """Poll `predicate` until it returns something true, and return that; raise ServiceError
    naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise ServiceError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)
    return value


class Service(ABC):
    """A Redis or PostgreSQL server the tests can use, reachable at `url`."""

    name: ClassVar[Kind]
    provider: ClassVar[ProviderName]

    def __init__(self) -> None:
        self.url = ""
        self.last_error: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:  # noqa: B027 - providers that own nothing have nothing to start
        """Bring the server up (no-op for a server someone else runs)."""

    @abstractmethod
    def teardown(self) -> None:
        """Release everything this object started; safe to call twice."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    # --- readiness ------------------------------------------------------------------------------
    @abstractmethod
    def _probe(self, timeout: float) -> None:
        """One real round trip to the server; raises when it does not answer."""

    def ready(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """True when the server answers a real request right now."""
        if not self.url:
            self.last_error = ServiceError("not started")
            return False
        try:
            self._probe(timeout)
        except Exception as exc:  # any failure means "not ready"; wait_ready reports it
            self.last_error = exc
            return False
        self.last_error = None
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until `ready()`; fail with the provider, the last error and the server log."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            self._check_alive()
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.name} ({self.provider}) at {redact_url(self.url) or '<no url>'} did "
                    f"not become ready within {timeout:.1f} s; last error: {self.last_error!r}"
                    + self._diagnostics()
                )
            time.sleep(POLL_INTERVAL)

    def _check_alive(self) -> None:  # noqa: B027 - only local servers can die early
        """Raise at once when the server can no longer come up (e.g. its process exited)."""

    def _diagnostics(self) -> str:
        """Extra context for error messages, e.g. the tail of a local server's log."""
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url) or '(not started)'}>"


class OwnedServer(Service):
    """A server this process runs (a child process or a container), which it can also stop and
    restart: the tests' way to take it away from the stack under test and bring it back."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server, keeping its port and its data for `start()`."""

    def restart(self, *, downtime: float = 0.0) -> None:
        """Stop, stay down for `downtime` s, and start again on the same port with the same data."""
        self.stop()
        if downtime:
            time.sleep(downtime)
        self.start()
