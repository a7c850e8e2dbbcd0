"""PostgreSQL for tests: a given URL, a testcontainers container, or a local postmaster child.

Test databases are created and dropped by name only, and only names the plugin makes
(`new_database_name`: `stack_<what>_<8 hex>`): a service drops nothing but the databases it
created itself, and never the database its URL connects to, so pointing STACK_TEST_DATABASE_URL
at a real server cannot cost anyone a database.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from stack.testing.services.base import Service, ServiceError
from stack.testing.services.containers import DockerServer
from stack.testing.services.local import LocalServer
from stack.testing.services.processes import RunAs, unprivileged_user
from stack.testing.services.selection import URL_ENV, image_for
from stack.urls import redact_url

logger = logging.getLogger(__name__)

# Durability buys nothing in a throwaway cluster and costs seconds per test run.
THROWAWAY_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
TEST_DB_PREFIX = "stack_"
# Exactly what new_database_name makes; nothing else is ever created or dropped. Lowercase ASCII
# and at most 63 bytes (NAMEDATALEN), so the server never folds or truncates it into another name.
_TEST_DB_NAME = re.compile(rf"^{TEST_DB_PREFIX}[a-z0-9_]{{1,48}}_[0-9a-f]{{8}}$")


def libpq_url(url: str) -> str:
    """`postgresql://` form of any SQLAlchemy-style URL (`postgresql+psycopg://`, `postgres://`)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.lower().startswith("postgres"):
        raise ServiceError(f"not a PostgreSQL URL: {url!r}; expected postgresql://user@host/db")
    return f"postgresql://{rest}"


def with_database(url: str, name: str) -> str:
    """The same server URL pointed at database `name`."""
    parts = urlsplit(url)
    # libpq lets ?dbname= override the path: left in, every test would land in the URL's database.
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("dbname="))
    return urlunsplit(parts._replace(path=f"/{name}", query=query))


def database_name(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/"))


def connected_databases(url: str) -> set[str]:
    """Every name the database `url` connects to may have: libpq takes ?dbname=, then the path,
    then (with neither) the user name. Used to refuse ever dropping the URL's own database."""
    parts = urlsplit(url)
    names = {database_name(url), unquote(parts.username or "")}
    names.update(value for key, value in parse_qsl(parts.query) if key in ("dbname", "user"))
    return {name for name in names if name}


def new_database_name(prefix: str = "stack_test") -> str:
    """A fresh, valid test database name: `stack_`, `prefix` cleaned up, random hex to keep it unique.

    The `stack_` start and the hex end are what lets `drop_database` tell the plugin's databases
    from anyone else's.
    """
    cleaned = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_") or "test"
    cleaned = cleaned.removeprefix(TEST_DB_PREFIX).strip("_") or "test"
    return f"{TEST_DB_PREFIX}{cleaned[:48]}_{secrets.token_hex(4)}"


def is_test_database_name(name: str) -> bool:
    """True for names `new_database_name` makes, the only ones the plugin creates or drops."""
    return bool(_TEST_DB_NAME.match(name))


class PostgresService(Service):
    name = "postgres"

    def __init__(self) -> None:
        super().__init__()
        # What this object created and has not dropped yet: the only names it will ever drop.
        self._created: set[str] = set()

    def connect(self, url: str | None = None, timeout: float = 5.0) -> psycopg.Connection[Any]:
        # libpq's connect_timeout is whole seconds (and at least 2 in recent versions).
        return psycopg.connect(url or self.url, connect_timeout=max(1, round(timeout)), autocommit=True)

    def _probe(self, timeout: float) -> None:
        with self.connect(timeout=timeout) as conn:
            conn.execute("SELECT 1")

    def database_url(self, name: str) -> str:
        return with_database(self.url, name)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its `postgresql://` URL.

        `name` must come from `new_database_name` (default: a fresh one), so that it can be told
        apart from the databases the server already had when the time comes to drop it.
        """
        name = name or new_database_name()
        if not is_test_database_name(name):
            raise ServiceError(
                f"refusing to create test database {name!r}: the plugin only creates (and later "
                f"drops) names made by new_database_name(), like {new_database_name('module')!r}"
            )
        self._refuse_own(name, "create")
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._created.add(name)
        logger.debug("created database %s", name)
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database this object created, even if connections are still open (worker
        processes may linger); anything else is refused with ServiceError."""
        self._refuse_own(name, "drop")
        if not is_test_database_name(name):
            raise ServiceError(
                f"refusing to drop database {name!r}: it is not a test database name the plugin "
                f"makes ({TEST_DB_PREFIX}<name>_<8 hex>), so it may be someone else's"
            )
        if name not in self._created:
            raise ServiceError(
                f"refusing to drop database {name!r}: this {self.name} ({self.provider}) service did "
                "not create it; drop only what create_database() returned (a leftover of an "
                "earlier run can be dropped by hand)"
            )
        ident = sql.Identifier(name)
        with self.connect() as conn:
            if conn.info.server_version >= 130000:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            else:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
        self._created.discard(name)
        logger.debug("dropped database %s", name)

    def _refuse_own(self, name: str, action: str) -> None:
        if name in connected_databases(self.url):
            where = f" ({URL_ENV['postgres']})" if self.provider == "url" else ""
            raise ServiceError(
                f"refusing to {action} database {name!r}: it is the database "
                f"{redact_url(self.url)}{where} connects to; the plugin only {action}s databases "
                "of its own next to it"
            )


class UrlPostgres(PostgresService):
    """A PostgreSQL someone else runs (STACK_TEST_DATABASE_URL); we never stop it.

    Test databases are created next to the URL's database, so its user needs CREATEDB. The URL's
    own database is only connected to: never written, never dropped. Each test database is named
    `stack_<module>_<8 hex>` and dropped after its module; nothing else on the server is touched.
    """

    provider = "url"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = libpq_url(url)

    def teardown(self) -> None:
        pass


class DockerPostgres(DockerServer, PostgresService):
    """A throwaway container started through testcontainers (STACK_TEST_POSTGRES_IMAGE); any
    image following the official one's POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB and
    `postgres -c name=value` conventions works."""

    CONTAINER_PORT = 5432
    STOP_SIGNAL = signal.SIGINT  # "fast" shutdown: ends sessions, no waiting for clients

    def __init__(self, image: str | None = None) -> None:
        super().__init__()
        self._init_docker(image or image_for("postgres", os.environ))

    def _configure(self, container: Any) -> None:
        container.with_env("POSTGRES_USER", "postgres")
        container.with_env("POSTGRES_PASSWORD", "postgres")
        container.with_env("POSTGRES_DB", "postgres")
        # Understood by the official image too; syncing a throwaway cluster costs seconds.
        container.with_env("POSTGRES_INITDB_ARGS", "--no-sync")
        container.with_command(["postgres", *server_settings()])

    def _server_url(self, host: str, port: int) -> str:
        return f"postgresql://postgres:postgres@{host}:{port}/postgres"


class LocalPostgres(LocalServer, PostgresService):
    """initdb into a temp dir, then the postmaster as our child process on a free port."""

    START_TIMEOUT = 30.0
    INITDB_TIMEOUT = 120.0
    LOG_NAME = "postgres.log"
    STOP_SIGNAL = signal.SIGINT  # "fast" shutdown: ends sessions, no waiting for clients
    DEATH_SIGNAL = signal.SIGQUIT  # "immediate": nobody is left to care about a clean stop

    def __init__(self, bin_dir: Path, *, port: int | None = None) -> None:
        super().__init__()
        self.bin_dir = bin_dir
        # PostgreSQL refuses to run as root; None when we are not root.
        self._init_local(port, run_as=unprivileged_user())

    def _make_dir(self) -> Path:
        # As root the server runs as another user, who must be able to reach the dir: /tmp is
        # world-traversable, while TMPDIR may point into /root.
        parent = "/tmp" if self.run_as and os.path.isdir("/tmp") else None
        directory = Path(tempfile.mkdtemp(prefix="stack-postgres-", dir=parent))
        if self.run_as:
            os.chown(directory, self.run_as.uid, self.run_as.gid)
        return directory

    def _prepare(self, directory: Path) -> None:
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(directory / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",  # the environment's locale may not exist on this machine
            "--no-sync",
        ]
        _run(argv, cwd=directory, run_as=self.run_as, timeout=self.INITDB_TIMEOUT)

    def _argv(self, directory: Path, port: int) -> list[str]:
        argv = [str(self.bin_dir / "postgres"), "-D", str(directory / "data"), "-p", str(port)]
        argv += ["-k", str(directory)]  # unix socket in our dir, not /var/run/postgresql
        return argv + server_settings(listen_addresses="127.0.0.1")

    def _server_url(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def server_settings(**extra: str) -> list[str]:
    """`-c name=value` arguments for a throwaway server: THROWAWAY_SETTINGS plus `extra`."""
    return [arg for key, value in {**extra, **THROWAWAY_SETTINGS}.items() for arg in ("-c", f"{key}={value}")]


def _run(argv: list[str], *, cwd: Path, run_as: RunAs | None, timeout: float) -> None:
    extra = run_as.popen_kwargs() if run_as else {}
    what = f"{Path(argv[0]).name}" + (f" (as user {run_as.name})" if run_as else "")
    try:
        result = subprocess.run(  # type: ignore[call-overload]
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, **extra
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what} did not finish within {timeout:.0f} s: {argv}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise ServiceError(
            f"{what} failed with exit code {result.returncode}: {' '.join(argv)}\n" + "\n".join(output)
        )
