"""`stack run api` with WEB_CONCURRENCY > 1: one listening socket per uvicorn process.

uvicorn's `--workers N` has N processes accept from ONE shared socket: whichever process wakes
first takes the connection, so a burst of keep-alive connections can all land on one process
while the others idle (measured: one worker at 98 % of a core, the other idle, half the peak
throughput; behind a proxy that keeps a few connections open, production sees the same).
Here each process listens on a socket of its own, all bound to the same port with
`SO_REUSEPORT`, and the kernel spreads new connections across them evenly.

The supervisor binds each socket, hands it to a plain `uvicorn --fd` child (so every uvicorn
flag still works), keeps one child per socket alive (a crashed one is replaced, with backoff),
and forwards SIGTERM/SIGINT for a graceful stop. It never accepts a connection itself.

The same sockets make a reload seamless (`stack run api --reload`, stack/reload.py): a new API
binds the port while the old one still serves. A socket is bound here but *listened on* by
uvicorn (asyncio's `create_server` calls `listen()`) once the app has started, so a new API whose
code is broken never takes a share of the connections; at stop, the sockets stop listening
before uvicorn drains, so new connections go to the other API at once instead of waiting in a
queue nobody accepts from.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from stack.config import get_settings
from stack.dev.children import spawn
from stack.logs import configure_for

log = logging.getLogger("stack.api.workers")

BACKLOG = 2048
RESTART_BACKOFF_MAX = 10.0
STOP_GRACE = 15.0  # uvicorn's own graceful shutdown is 10 s (roles.api)


def supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def reuseport_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted sockets inherit this; uvicorn sets it itself only on sockets it created (with
    # `--fd` it takes ours for a Unix socket), and without it a kept-alive connection waits
    # ~40 ms on Nagle's algorithm for every response larger than one packet.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(BACKLOG)
    return sock


def listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def stop_listening(sock: socket.socket) -> None:
    """Take the socket out of the port's SO_REUSEPORT group for every process holding it (its
    uvicorn child keeps a copy of the descriptor open until it exits)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)


@dataclass
class Slot:
    """One worker: its own listening socket and the uvicorn process serving it."""

    number: int
    sock: socket.socket
    process: subprocess.Popen[bytes] | None = None
    crashes: int = 0
    started_at: float = field(default=0.0)


class ReusePortSupervisor:
    def __init__(self, *, host: str, port: int, workers: int, uvicorn_args: Sequence[str]) -> None:
        self.host, self.port, self.workers = host, port, workers
        self.uvicorn_args = list(uvicorn_args)
        self._stop = threading.Event()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping %d api workers", signal.Signals(signum).name, self.workers)
        self._stop.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        slots = [
            Slot(n, reuseport_socket(self.host, self.port, listen=False)) for n in range(1, self.workers + 1)
        ]
        log.info(
            "api: %d uvicorn workers on http://%s:%d, one SO_REUSEPORT socket each",
            self.workers,
            self.host,
            self.port,
        )
        try:
            for slot in slots:
                self._spawn(slot)
            while not self._stop.wait(0.2):
                if self._never_served(slots):
                    return 1
                for slot in slots:
                    self._replace_if_dead(slot)
        finally:
            self._stop_all(slots)
        return 0

    def _spawn(self, slot: Slot) -> None:
        fd = slot.sock.fileno()
        # --workers 1: uvicorn would otherwise read WEB_CONCURRENCY and fork its own workers.
        argv = [sys.executable, "-m", "uvicorn", "--fd", str(fd), "--workers", "1", *self.uvicorn_args]
        slot.process = spawn(argv, pass_fds=(fd,))  # stopped by the kernel if we are killed
        slot.started_at = time.monotonic()
        log.info("api worker %d started (pid %d)", slot.number, slot.process.pid)

    @staticmethod
    def _never_served(slots: Sequence[Slot]) -> bool:
        """A worker died before any socket was listened on: the app cannot start (broken code,
        bad settings). Starting it again would print the same traceback every few seconds; exit,
        and let whoever started us (the --reload supervisor, an orchestrator) decide."""
        dead = [s for s in slots if s.process is not None and s.process.poll() is not None]
        if not dead or any(listening(s.sock) for s in slots):
            return False
        log.error(
            "api worker %d exited with %s before the app served a request; stopping",
            dead[0].number,
            dead[0].process.returncode if dead[0].process else None,
        )
        return True

    def _replace_if_dead(self, slot: Slot) -> None:
        process = slot.process
        if process is None or process.poll() is None:
            return
        healthy = time.monotonic() - slot.started_at > 30
        slot.crashes = 0 if healthy else slot.crashes + 1
        delay = min(RESTART_BACKOFF_MAX, 0.5 * 2**slot.crashes) if slot.crashes else 0.0
        log.warning(
            "api worker %d (pid %d) exited with %s; starting another%s",
            slot.number,
            process.pid,
            process.returncode,
            f" in {delay:g} s" if delay else "",
        )
        slot.process = None
        if not self._stop.wait(delay):
            self._spawn(slot)

    def _stop_all(self, slots: Sequence[Slot]) -> None:
        for slot in slots:
            stop_listening(slot.sock)
        running = [s.process for s in slots if s.process is not None and s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("api worker pid %d ignored SIGTERM for %g s; killing it", process.pid, STOP_GRACE)
                process.kill()
                process.wait()
        for slot in slots:
            slot.sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.api.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args, uvicorn_args = parser.parse_known_args(argv)
    if uvicorn_args[:1] == ["--"]:
        uvicorn_args = uvicorn_args[1:]
    configure_for(get_settings())  # the roles' one format (STACK_LOG_FORMAT)
    try:
        supervisor = ReusePortSupervisor(
            host=args.host, port=args.port, workers=args.workers, uvicorn_args=uvicorn_args
        )
        return supervisor.run()
    except OSError as exc:
        print(
            f"stack: error: cannot listen on {args.host}:{args.port}: {exc} (set PORT or HOST)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
