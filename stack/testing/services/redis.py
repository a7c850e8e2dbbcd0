"""Redis for tests: a given URL, a testcontainers container, or a local redis-server child."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from stack.testing.services.base import Service, ServiceError
from stack.testing.services.processes import ServerProcess, free_port, read_tail

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
        return redis.Redis.from_url(
            url or self.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

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
                self._databases = int(client.config_get("databases")["databases"])
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
        container = RedisContainer(self.image)
        self._container = container
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        self.url = f"redis://{host}:{port}/0"

    def teardown(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.stop()


class LocalRedis(RedisService):
    """redis-server as our child process, on a free port, with no persistence."""

    provider = "local"
    START_TIMEOUT = 10.0
    PORT_ATTEMPTS = 3

    def __init__(self, executable: Path, *, port: int | None = None) -> None:
        super().__init__()
        self.executable = executable
        self.port = port
        self._fixed_port = port is not None
        self._dir: Path | None = None
        self._process: ServerProcess | None = None

    def start(self) -> None:
        """Start on `port` (or a free one) and wait until it answers PING."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="stack-redis-"))
        attempts = 1 if self._fixed_port else self.PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self._fixed_port:
                self.port = free_port()
            try:
                self._launch()
                return
            except ServiceError:
                # Another process may have taken the free port between our check and the bind.
                self._stop_process()
                if attempt == attempts:
                    raise
                logger.debug("redis-server on port %s did not come up; retrying", self.port)

    def _launch(self) -> None:
        assert self._dir is not None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = ServerProcess(
            [
                str(self.executable),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir),
                "--daemonize", "no",
                "--databases", str(DEFAULT_DATABASES),
            ],
            name=f"redis-server :{self.port}",
            log_path=self._dir / "redis.log",
            cwd=self._dir,
        )
        self._process.start()
        self.wait_ready(self.START_TIMEOUT)

    def stop(self) -> None:
        """Stop the server but keep the port, so `start()` brings it back at the same URL."""
        self._stop_process()
        # The port is ours from now on: a restart must come back where clients expect it.
        self._fixed_port = self.port is not None

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop()

    def restart(self, *, downtime: float = 0.0) -> None:
        """Stop, optionally stay down for `downtime` s, and start again on the same port."""
        self.stop()
        if downtime:
            time.sleep(downtime)
        self.start()

    def teardown(self) -> None:
        self.stop()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _check_alive(self) -> None:
        if self._process is None or not self._process.alive():
            code = self._process.exit_code() if self._process else None
            raise ServiceError(
                f"redis-server ({self.executable}) on port {self.port} exited with code {code} "
                "before answering PING" + self._diagnostics()
            )

    def _diagnostics(self) -> str:
        if self._dir is None:
            return ""
        tail = read_tail(self._dir / "redis.log")
        return f"\n--- {self._dir / 'redis.log'} (last lines) ---\n{tail}"
