"""Child server processes that never outlive the test session.

Three layers make sure of that: the fixtures tear down (also on Ctrl-C and failed tests), an
`atexit` hook stops whatever is still running, and on Linux the kernel sends the server a signal
when pytest itself dies (PR_SET_PDEATHSIG), which covers `kill -9` of the test run.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.testing.services.base import ServiceError

logger = logging.getLogger(__name__)

SERVICE_USER = "stack-pg"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account to run servers that refuse root (PostgreSQL)."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def unprivileged_user() -> RunAs | None:
    """None when we are not root; otherwise `stack-pg` (created if missing) or `nobody`."""
    if os.geteuid() != 0:
        return None
    entry = _getpwnam(SERVICE_USER) or _create_system_user(SERVICE_USER) or _getpwnam("nobody")
    if entry is None:
        raise ServiceError(
            "running as root, and PostgreSQL refuses root: could not create or find an "
            f"unprivileged user ({SERVICE_USER!r} or 'nobody'); run the tests as a normal user"
        )
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create_system_user(name: str) -> pwd.struct_passwd | None:
    useradd = shutil.which("useradd") or next(
        (p for p in ("/usr/sbin/useradd", "/sbin/useradd") if os.access(p, os.X_OK)), None
    )
    if useradd is None:
        return None
    argv = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode not in (0, 9):  # 9: already exists (another xdist worker won the race)
        logger.warning("useradd %s failed (%s): %s", name, result.returncode, result.stderr.strip())
    return _getpwnam(name)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (callers retry if it is taken before they bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _death_signal_setter(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to signal the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl  # resolved before fork, not in the child

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return set_death_signal


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    death_signal: signal.Signals = signal.SIGTERM,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """A child with its output appended to `log_path`, in a session of its own (a Ctrl-C in the
    terminal reaches pytest, which then stops children in order, instead of all racing to shut
    down), and signalled by the kernel if we die."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_death_signal_setter(death_signal),
            **popen,
        )


class ServerProcess:
    """One server child process, its output in a log file, stoppable with a deadline."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path,
        cwd: Path,
        run_as: RunAs | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        death_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.log_path = log_path
        self.cwd = cwd
        self.run_as = run_as
        self.stop_signal = stop_signal
        self.death_signal = death_signal
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self.alive():
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        extra = self.run_as.popen_kwargs() if self.run_as else {}
        self._proc = spawn(
            self.argv, cwd=self.cwd, log_path=self.log_path, death_signal=self.death_signal, **extra
        )
        _register(self)
        logger.debug("started %s (pid %s): %s", self.name, self.pid, " ".join(self.argv))

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask politely with `stop_signal`; after `timeout` s, SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(self.stop_signal)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "%s (pid %s) ignored %s for %.1f s; killing it",
                        self.name,
                        proc.pid,
                        self.stop_signal.name,
                        timeout,
                    )
                    proc.kill()
                    proc.wait(5)
        finally:
            _unregister(self)
            self._proc = None

    def log_tail(self, lines: int = 20) -> str:
        return read_tail(self.log_path, lines)


def read_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a server log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


# --- the atexit backstop ------------------------------------------------------------------------
_live: dict[int, ServerProcess] = {}
_live_lock = threading.Lock()


def _register(proc: ServerProcess) -> None:
    with _live_lock:
        _live[id(proc)] = proc


def _unregister(proc: ServerProcess) -> None:
    with _live_lock:
        _live.pop(id(proc), None)


@atexit.register
def _stop_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live.values())
    for proc in leftovers:
        logger.warning("stopping %s (pid %s) left running at exit", proc.name, proc.pid)
        try:
            proc.stop(timeout=5)
        except Exception:  # at exit, keep going so the others are stopped too
            logger.exception("could not stop %s", proc.name)
