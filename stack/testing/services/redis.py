"""Redis for tests: a given URL, a testcontainers container, or a local redis-server child."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from stack.testing.services.base import Service, ServiceError
from stack.testing.services.local import LocalServer

logger = logging.getLogger(__name__)

DEFAULT_DATABASES = 16
DOCKER_IMAGE = "redis:7-alpine"


def with_db(url: str, index: int) -> str:
    """The same server URL pointed at logical database `index`."""
    parts = urlsplit(url)
    # redis-py also reads ?db=; drop it so the path is the only source of truth.
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("db="))
    return urlunsplit(parts._replace(path=f"/{index}", query=query))


class RedisService(Service):
    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        self._db_counter = itertools.count()
        self._db_lock = threading.Lock()
        self._databases: int | None = None

    def client(self, url: str | None = None, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis.from_url(url or self.url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def _probe(self, timeout: float) -> None:
        client = self.client(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()

    def allocate_db(self) -> str:
        """A URL to a flushed logical database, taking 0..N-1 in turn."""
        with self._db_lock:
            index = next(self._db_counter) % self._database_count()
        url = with_db(self.url, index)
        client = self.client(url)
        try:
            client.flushdb()
        finally:
            client.close()
        return url

    def _database_count(self) -> int:
        if self._databases is None:
            self._databases = DEFAULT_DATABASES
            client = self.client()
            try:
                self._databases = int(str(client.config_get("databases")["databases"]))
            except Exception:  # managed Redis often forbids CONFIG; 16 is the server default
                logger.debug("CONFIG GET databases failed; assuming %d", DEFAULT_DATABASES)
            finally:
                client.close()
        return self._databases


class UrlRedis(RedisService):
    """A Redis someone else runs (STACK_TEST_REDIS_URL); we never stop it."""

    provider = "url"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def teardown(self) -> None:
        pass


class DockerRedis(RedisService):
    """A throwaway container started through testcontainers."""

    provider = "docker"

    def __init__(self, image: str | None = None) -> None:
        super().__init__()
        self.image = image or os.environ.get("STACK_TEST_REDIS_IMAGE", DOCKER_IMAGE)
        self._container: Any = None

    def start(self) -> None:
        try:  # testcontainers >= 4.10 moved the modules under `community`
            from testcontainers.community.redis import RedisContainer
        except ImportError:
            from testcontainers.redis import RedisContainer
        try:
            container = RedisContainer(self.image)
            self._container = container
            container.start()
        except Exception as exc:
            raise ServiceError(
                f"redis (docker): could not start {self.image} with testcontainers: {exc}"
            ) from exc
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        self.url = f"redis://{host}:{port}/0"

    def teardown(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.stop()


class LocalRedis(LocalServer, RedisService):
    """redis-server as our child process, on a free port; no persistence unless `persistent`
    (an append-only file in its dir, so a restart keeps queued messages, as production Redis does)."""

    START_TIMEOUT = 10.0
    LOG_NAME = "redis.log"

    def __init__(self, executable: Path, *, port: int | None = None, persistent: bool = False) -> None:
        super().__init__()
        self.executable = executable
        self.persistent = persistent
        self._init_local(port)

    def _prepare(self, directory: Path) -> None:
        pass  # redis-server needs nothing but an empty dir

    def _argv(self, directory: Path, port: int) -> list[str]:
        return [
            str(self.executable),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            "--databases",
            str(DEFAULT_DATABASES),
        ]

    def _server_url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"
