"""What every container-run test server shares: a testcontainers container on a host port chosen
up front, a readiness wait that notices a dead container at once, stop/start, and removal.

The host port is fixed (not a random published one) so that `restart()` brings the server back
where clients expect it, as `LocalServer` does. testcontainers' own wait strategies are not used:
they keep polling a container that has already exited for their whole timeout (120 s), while
`wait_ready` here checks the container's state between probes and fails with its log.
"""

from __future__ import annotations

import logging
import signal
from abc import abstractmethod
from typing import Any, ClassVar, cast

from stack.testing.services.base import OwnedServer, ServiceError
from stack.testing.services.processes import free_port
from stack.testing.services.selection import MODE_ENV, docker_fix

logger = logging.getLogger(__name__)

_LOG_LINES = 30


class DockerServer(OwnedServer):
    """A server in a container started through testcontainers, published on 127.0.0.1-reachable
    `port` (or wherever testcontainers says the engine's host is).

    Subclasses say which port the server listens on inside (`CONTAINER_PORT`), how to configure
    the container (`_configure`) and which URL reaches it (`_server_url`). Mix in before the
    kind's base class, e.g. `class DockerRedis(DockerServer, RedisService)`.
    """

    provider = "docker"
    CONTAINER_PORT: ClassVar[int]
    START_TIMEOUT: ClassVar[float] = 60.0
    STOP_TIMEOUT: ClassVar[float] = 20.0
    PORT_ATTEMPTS: ClassVar[int] = 3
    STOP_SIGNAL: ClassVar[signal.Signals] = signal.SIGTERM

    image: str
    port: int | None
    _container: Any  # testcontainers' DockerContainer once created

    def _init_docker(self, image: str) -> None:
        self.image = image
        self.port = None
        self._container = None

    # --- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def _configure(self, container: Any) -> None:
        """Environment and command of a new container."""

    @abstractmethod
    def _server_url(self, host: str, port: int) -> str:
        """The URL clients use to reach the server at `host`:`port`."""

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create and start the container (or start the stopped one again) and wait until the
        server answers."""
        if self._container is None:
            self._create()
        else:
            self._wrapped().start()
        self.wait_ready(self.START_TIMEOUT)

    def _create(self) -> None:
        from testcontainers.core.container import DockerContainer

        from stack.testing.services.engine import owner_labels, prepare_testcontainers

        prepare_testcontainers()
        for attempt in range(1, self.PORT_ATTEMPTS + 1):
            port = free_port()
            container = DockerContainer(self.image, labels=owner_labels())
            container.with_bind_ports(self.CONTAINER_PORT, port)
            self._configure(container)
            try:
                container.start()
            except Exception as exc:
                _remove(container)
                # Another process may have taken the free port between our check and the bind.
                if "port is already allocated" in str(exc) and attempt < self.PORT_ATTEMPTS:
                    logger.debug("%s: port %d taken meanwhile; retrying", self.name, port)
                    continue
                raise ServiceError(
                    f"{self.name} (docker): could not start a container of {self.image}: {exc}; "
                    f"{docker_fix(self.name)}"
                ) from exc
            self._container, self.port = container, port
            self.url = self._server_url(container.get_container_host_ip(), port)
            logger.debug(
                "%s (docker): %s started as %s", self.name, self.image, container.get_container_id()[:12]
            )
            return

    def stop(self) -> None:
        """Stop the server but keep the container (its data and port), so `start()` brings it back
        at `url`."""
        wrapped = self._wrapped()
        wrapped.reload()
        if wrapped.status != "running":
            return
        # `docker stop` would send SIGTERM, which PostgreSQL takes as "wait for every client to
        # leave"; the subclass's signal asks for a fast shutdown instead.
        wrapped.kill(signal=self.STOP_SIGNAL.name)
        try:
            wrapped.wait(timeout=self.STOP_TIMEOUT)
        except Exception:  # still running after the timeout: stop it the hard way
            logger.warning(
                "%s (docker): no exit %.0f s after %s; killing",
                self.name,
                self.STOP_TIMEOUT,
                self.STOP_SIGNAL.name,
            )
            wrapped.stop(timeout=0)

    def teardown(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            _remove(container)

    def _wrapped(self) -> Any:
        if self._container is None:
            raise ServiceError(f"{self.name} (docker): no container; start() it first")
        return self._container.get_wrapped_container()

    # --- diagnostics ----------------------------------------------------------------------------
    def _check_alive(self) -> None:
        wrapped = self._wrapped()
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            code = wrapped.attrs.get("State", {}).get("ExitCode")
            raise ServiceError(
                f"{self.name} (docker): the container of {self.image} exited with code {code} before "
                f"accepting connections; {docker_fix(self.name)}. If the image is a home-made one, "
                f"it must start a server on port {self.CONTAINER_PORT} by itself" + self._diagnostics()
            )

    def _diagnostics(self) -> str:
        if self._container is None:
            return ""
        try:
            logs = cast(bytes, self._wrapped().logs(tail=_LOG_LINES)).decode(errors="replace")
        except Exception as exc:  # the container may be gone already
            return f"\n(container log unavailable: {exc!r})"
        return f"\n--- container log of {self.image} (last lines) ---\n{logs.rstrip()}"


def _remove(container: Any) -> None:
    """Remove a container and its anonymous volumes; a failure is logged, not raised, so that
    teardown carries on with the other services."""
    try:
        container.stop()  # testcontainers' stop() is `docker rm --force --volumes`
    except Exception as exc:
        logger.warning(
            "docker: could not remove a container of %s: %r (see `docker ps -a`; %s=local avoids Docker)",
            getattr(container, "image", "?"),
            exc,
            MODE_ENV,
        )
