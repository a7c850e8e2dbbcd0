"""`stack run api` with WEB_CONCURRENCY=2: each uvicorn process listens on its own SO_REUSEPORT
socket, so the kernel spreads keep-alive connections over both; a dead one is replaced and the
port keeps answering; SIGTERM stops them all."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from stack.api.workers import supported
from stack.dev.readiness import listening_sockets
from stack.testing.procfile import ProcfileStack
from stack.testing.services.base import wait_for
from tests.e2e.conftest import write_procfile

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not supported(), reason="SO_REUSEPORT balancing is Linux-only"),
]


@pytest.fixture(scope="module")
def stack_procfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_procfile(tmp_path_factory, "web: stack run api\n")


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {"WEB_CONCURRENCY": "2"}


def uvicorn_children(stack: ProcfileStack) -> list[psutil.Process]:
    pid = stack["web"].pid
    assert pid is not None
    return [c for c in psutil.Process(pid).children() if "--fd" in c.cmdline()]


def two_workers(stack: ProcfileStack) -> list[psutil.Process]:
    return wait_for(
        lambda: (found := uvicorn_children(stack)) and len(found) == 2 and found,
        what="two uvicorn workers",
        timeout=30,
    )


@pytest.fixture
def keepalive(stack_processes: ProcfileStack) -> Iterator[list[socket.socket]]:
    # Each worker binds its own socket once its app has loaded: /ready answering means one does.
    port = int(stack_processes.api_url.rsplit(":", 1)[1])
    wait_for(
        lambda: all(listening_sockets(w.pid, port) for w in two_workers(stack_processes)),
        what="both uvicorn workers listening",
        timeout=60,
    )
    connections = []
    for _ in range(32):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        assert b"200 OK" in sock.recv(4096)
        connections.append(sock)
    yield connections
    for sock in connections:
        sock.close()


def test_keepalive_connections_spread_over_both_workers(
    stack_processes: ProcfileStack, keepalive: list[socket.socket]
) -> None:
    workers = two_workers(stack_processes)
    served = Counter({w.pid: len(w.net_connections(kind="tcp")) - 1 for w in workers})  # minus the listener
    assert sum(served.values()) >= len(keepalive)
    assert min(served.values()) >= 4, f"connections per worker: {dict(served)}"


def test_a_dead_worker_is_replaced_and_the_port_keeps_answering(stack_processes: ProcfileStack) -> None:
    first, second = two_workers(stack_processes)
    first.kill()
    answers = [httpx.get(f"{stack_processes.api_url}/health", timeout=5).status_code for _ in range(20)]
    assert answers == [200] * 20  # the survivor and the replacement's socket (queued) carry on
    replaced = wait_for(
        lambda: {c.pid for c in uvicorn_children(stack_processes)} - {first.pid, second.pid},
        what="a new uvicorn worker",
        timeout=30,
    )
    assert len(replaced) == 1 and second.is_running()


def test_sigterm_stops_every_worker(stack_processes: ProcfileStack) -> None:
    children = uvicorn_children(stack_processes)
    stack_processes["web"].stop(timeout=20)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
    stack_processes["web"].start()  # leave the module's stack as it found it
    stack_processes.wait_ready(timeout=60)
