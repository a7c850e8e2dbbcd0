"""The `redis` role decides between running, reusing and idling — and says why."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.embedded_redis import embedded_redis_plan, redis_server_binary
from stack.errors import ConfigError
from tests.unit.conftest import make_settings


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held by something that is not Redis."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_configured_redis_url_means_no_embedded_redis(tmp_path: Path) -> None:
    argv, why = embedded_redis_plan(make_settings(tmp_path, redis_url="redis://:pw@cache:6379/0"))
    assert argv is None
    assert "REDIS_URL is set" in why and "pw" not in why


def test_free_port_runs_the_bundled_server(tmp_path: Path) -> None:
    port = free_port()
    argv, why = embedded_redis_plan(make_settings(tmp_path, redis_port=port))
    assert argv is not None and argv[0] == redis_server_binary()
    assert argv[argv.index("--port") + 1] == str(port)
    assert argv[argv.index("--bind") + 1] == "127.0.0.1"
    assert argv[argv.index("--daemonize") + 1] == "no"  # foreground: Ctrl-C in honcho stops it
    assert str(port) in why


def test_port_taken_by_something_else_names_the_setting(tmp_path: Path, busy_port: int) -> None:
    with pytest.raises(ConfigError, match="STACK_REDIS_PORT"):
        embedded_redis_plan(make_settings(tmp_path, redis_port=busy_port))
