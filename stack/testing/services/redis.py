"""Redis for tests: a given URL, a testcontainers container, or a local redis-server child.

Every test module gets a logical database of its own (`allocate_db`), flushed before use and given
back afterwards (`release_db`). Flushing is the one destructive thing the plugin does to Redis, so
it only ever flushes a database that is provably the plugin's: empty, or carrying the
`stack:test:owner` marker the plugin wrote when it first took it. A server the plugin started
itself (local, docker) is wholly ours; there any database may be flushed.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis

from stack.errors import ConfigError
from stack.testing.services.base import Service, ServiceError
from stack.testing.services.containers import DockerServer
from stack.testing.services.local import LocalServer
from stack.testing.services.selection import REDIS_DBS_ENV, URL_ENV, image_for
from stack.urls import redact_url

logger = logging.getLogger(__name__)

DEFAULT_DATABASES = 16

# Marks a logical database as the test plugin's, so a later run may flush it again. Its value
# starts with OWNER_MARK; the rest says which run took it, for whoever finds it.
OWNER_KEY = "stack:test:owner"
OWNER_MARK = "stack.testing"
_FOREIGN_SAMPLE = 5
_URL_ENV = URL_ENV["redis"]


def db_index(url: str) -> int:
    """The logical database a Redis URL selects, read as redis-py does: `?db=` wins over the path."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    raw = query.get("db") or ("" if parts.scheme == "unix" else parts.path.strip("/")) or "0"
    if not raw.isdigit():
        raise ConfigError(
            f"{redact_url(url)!r} does not name a Redis database: the path (or ?db=) must be a "
            "number, e.g. redis://127.0.0.1:6379/5"
        )
    return int(raw)


def with_db(url: str, index: int) -> str:
    """The same server URL pointed at logical database `index`."""
    parts = urlsplit(url)
    # redis-py reads ?db= before the path; keep exactly one of them so they cannot disagree.
    query = [p for p in parts.query.split("&") if p and not p.startswith("db=")]
    if parts.scheme == "unix":  # the path is the socket's, so the index can only go in the query
        # By hand: urlunsplit would drop the empty host and turn unix:///run into unix:/run.
        return url.split("?", 1)[0].split("#", 1)[0] + "?" + "&".join([*query, f"db={index}"])
    return urlunsplit(parts._replace(path=f"/{index}", query="&".join(query)))


def owner_mark() -> str:
    since = datetime.now(UTC).isoformat(timespec="seconds")
    return f"{OWNER_MARK} host={socket.gethostname()} pid={os.getpid()} since={since}"


class RedisService(Service):
    """A Redis server whose logical databases are lent to test modules, one module per database."""

    name = "redis"
    # True when the plugin started the server itself, so no one else's data can be in it.
    owns_server: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._db_lock = threading.Lock()
        self._in_use: set[int] = set()
        self._cursor = 0
        self._databases: int | None = None

    def client(self, url: str | None = None, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis.from_url(url or self.url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def _probe(self, timeout: float) -> None:
        client = self.client(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()

    # --- logical databases ----------------------------------------------------------------------
    def databases(self) -> range:
        """The logical databases this service may hand out: all of a server we own."""
        return range(self._database_count())

    def allocate_db(self) -> str:
        """A URL to a flushed logical database no other allocation holds; `release_db` gives it back.

        Raises ServiceError when every allowed database is taken, or when the next one holds keys
        the plugin did not put there (on a server we do not own).
        """
        with self._db_lock:
            pool = self.databases()
            free = [index for index in pool if index not in self._in_use]
            if not free:
                raise self._exhausted(pool)
            # Round robin: a just-released database is reused last, in case something lingers on it.
            index = next((i for i in free if i >= self._cursor), free[0])
            self._in_use.add(index)
            self._cursor = index + 1
        url = with_db(self.url, index)
        try:
            self._claim(url, index)
        except BaseException:
            with self._db_lock:
                self._in_use.discard(index)
            raise
        logger.debug("redis db %d allocated: %s", index, redact_url(url))
        return url

    def release_db(self, url: str) -> None:
        """Let a later `allocate_db` hand this database out again (it is flushed then, not now)."""
        with self._db_lock:
            self._in_use.discard(db_index(url))

    def _claim(self, url: str, index: int) -> None:
        """Flush database `index` and mark it as ours, unless it holds someone else's keys."""
        client = self.client(url)
        try:
            if self.owns_server or self._is_marked(client):
                with client.pipeline(transaction=True) as pipe:  # never left flushed but unmarked
                    pipe.flushdb()
                    pipe.set(OWNER_KEY, owner_mark())
                    pipe.execute()
            elif client.dbsize() == 0:
                # Nothing to flush: mark it only, so a key written meanwhile by someone else survives.
                client.set(OWNER_KEY, owner_mark())
            else:
                raise self._foreign(client, url, index)
        except redis.ResponseError as exc:  # e.g. "DB index is out of range", or ACLs forbid FLUSHDB
            raise ServiceError(
                f"redis ({self.provider}): could not take db {index} at {redact_url(url)}: {exc}"
                + self._claim_hint()
            ) from exc
        finally:
            client.close()

    @staticmethod
    def _is_marked(client: redis.Redis) -> bool:
        try:
            value = client.get(OWNER_KEY)
        except redis.ResponseError:  # WRONGTYPE: someone else's key that happens to share the name
            return False
        return isinstance(value, bytes) and value.startswith(OWNER_MARK.encode())

    def _foreign(self, client: redis.Redis, url: str, index: int) -> ServiceError:
        try:
            keys = list(itertools.islice(client.scan_iter(count=100), _FOREIGN_SAMPLE))
            sample = [repr(key.decode(errors="replace")[:60]) for key in keys]
        except redis.ResponseError:  # an ACL may allow DBSIZE but not SCAN; refuse all the same
            sample = ["(their names cannot be listed: SCAN is not permitted)"]
        count = client.dbsize()
        return ServiceError(
            f"refusing to flush Redis db {index} at {redact_url(url)}{self._source(index)}: it holds "
            f"{count} key(s) the stack test plugin did not put there, e.g. {', '.join(sample)}, and "
            f"no {OWNER_KEY!r} marker. The tests flush their database: point {_URL_ENV} at an empty "
            "database (another /N) or at a throwaway server, or unset it to let the plugin start "
            "its own Redis."
        )

    def _source(self, index: int) -> str:
        """Which setting led to database `index`, for error messages."""
        return ""

    def _exhausted(self, pool: range) -> ServiceError:
        return ServiceError(
            f"redis ({self.provider}): every allowed logical database ({_describe(pool)}) is already "
            "handed out in this test session; release_db() the ones no longer needed" + self._allowance_hint()
        )

    def _allowance_hint(self) -> str:
        return ""

    def _claim_hint(self) -> str:
        return ""

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


def _describe(pool: range) -> str:
    if len(pool) == 1:
        return f"db {pool[0]}"
    return f"dbs {pool[0]}-{pool[-1]}"


class UrlRedis(RedisService):
    """A Redis someone else runs (STACK_TEST_REDIS_URL); we never stop it.

    The tests use the database the URL names (`/5`, or `?db=5`; none means 0) and, only when
    STACK_TEST_REDIS_DBS=N allows it, the N-1 after it (5, 6, ...). Modules take turns on them:
    each module's database is flushed when it is handed out and given back after the module, so
    one database is enough unless a test needs two at once (then the error names
    STACK_TEST_REDIS_DBS). A database is flushed only when it is empty or carries the
    `stack:test:owner` marker a previous run wrote; anything else is refused, and its keys are
    left alone. Run one test session at a time per database range.
    """

    provider = "url"

    def __init__(self, url: str, *, databases: int = 1) -> None:
        super().__init__()
        if databases < 1:
            raise ConfigError(f"{REDIS_DBS_ENV}={databases} is not valid; use a count of at least 1")
        self.url = url
        self.first_db = db_index(url)
        self.allowed = databases

    def databases(self) -> range:
        return range(self.first_db, self.first_db + self.allowed)

    def _allowance_hint(self) -> str:
        pool = self.databases()
        more = len(pool) + 1
        return (
            f". {_URL_ENV}={redact_url(self.url)} with {REDIS_DBS_ENV}={len(pool)} allows {_describe(pool)}; "
            f"set {REDIS_DBS_ENV}={more} to also allow db {pool[-1] + 1} (it must be empty or "
            "already the plugin's, and exist on the server), or unset "
            f"{_URL_ENV} to let the plugin start its own Redis"
        )

    def _source(self, index: int) -> str:
        if index == self.first_db:
            return f" ({_URL_ENV})"
        pool = self.databases()
        return (
            f" ({_describe(pool)} allowed by {_URL_ENV} and {REDIS_DBS_ENV}={self.allowed}; "
            f"a lower {REDIS_DBS_ENV} leaves it out)"
        )

    def _claim_hint(self) -> str:
        return (
            f"; check {_URL_ENV} and {REDIS_DBS_ENV}: each database must exist on the server "
            "(CONFIG databases) and the user needs SELECT, DBSIZE, GET, SET and FLUSHDB on it"
        )

    def teardown(self) -> None:
        pass


class DockerRedis(DockerServer, RedisService):
    """A throwaway container started through testcontainers (STACK_TEST_REDIS_IMAGE)."""

    owns_server = True
    CONTAINER_PORT = 6379

    def __init__(self, image: str | None = None) -> None:
        super().__init__()
        self._init_docker(image or image_for("redis", os.environ))

    def _configure(self, container: Any) -> None:
        # Explicit, so any Redis image behaves alike: no protected mode (clients come through
        # Docker's port mapping, not loopback) and no persistence.
        container.with_command(
            [
                "redis-server",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                str(DEFAULT_DATABASES),
            ]
        )

    def _server_url(self, host: str, port: int) -> str:
        return f"redis://{host}:{port}/0"


class LocalRedis(LocalServer, RedisService):
    """redis-server as our child process, on a free port; no persistence unless `persistent`
    (an append-only file in its dir, so a restart keeps queued messages, as production Redis does)."""

    owns_server = True
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
