"""Start the stack's own processes (api, worker) on free ports for a measurement, and stop them.

Each process runs `python -m stack run <role>` exactly as production does, in its own process
group (uvicorn and Celery fork children; stopping the group stops them all) and with a parent
death signal, so a crashed or interrupted measurement leaves nothing running. Every wait has a
timeout whose message says what it waited for and ends with the process's log.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stack.config import Settings, derive_namespace, key_prefix

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Settings of the parent that would leak into a child and point it elsewhere.
_INHERITED_PREFIXES = ("STACK_", "CELERY_", "REDIS_URL", "DATABASE_URL", "SERVICE_TYPE", "WEB_CONCURRENCY")


class StackProcessError(RuntimeError):
    """A stack process did not start, or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll `predicate`; `alive` raises at once if what we wait for can no longer happen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            raise StackProcessError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _parent_death_signal() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.util.find_library("c")
    if libc is None:
        return None
    prctl = ctypes.CDLL(libc, use_errno=True).prctl

    def set_signal() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG

    return set_signal


# The Redis namespace of the stacks started here (the default kinds, hence STACK_NAMESPACE=app):
# their workers answer pings, and their events travel, under it.
STACK_PREFIX = key_prefix(derive_namespace(str(Settings.model_fields["kinds"].default)))


@dataclass
class StackEnv:
    """The environment of one stack (api + workers): where it stores, queues and logs."""

    redis_url: str
    database_url: str
    data_dir: Path
    celery_enabled: bool = True
    web_concurrency: int = 1
    worker_concurrency: int = 2
    worker_pool: str = "prefork"
    log_level: str = "warning"
    extra: dict[str, str] = field(default_factory=dict)

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "DATABASE_URL": self.database_url,
                "CELERY_ENABLED": "true" if self.celery_enabled else "false",
                "WEB_CONCURRENCY": str(self.web_concurrency),
                "STACK_WORKER_CONCURRENCY": str(self.worker_concurrency),
                "STACK_WORKER_POOL": self.worker_pool,
                "STACK_DATA_DIR": str(self.data_dir),
                "STACK_LOG_LEVEL": self.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra)
        env.update(overrides)
        return env


class StackProcess:
    """One role's process tree, output in `log_path`."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.node: str | None = None  # a worker's Celery node name, once it answered a ping
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        log.debug("started %s (pid %s): %s", self.name, self._proc.pid, " ".join(self.argv))

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self._proc.poll() if self._proc else None
            raise StackProcessError(f"{self.name} exited with code {code} while starting{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- {self.log_path} (last lines) ---\n" + "\n".join(text)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group (uvicorn and Celery shut their children down); SIGKILL the
        group after `timeout` s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %s) ignored SIGTERM for %g s; killing its group", self.name, pgid, timeout)
        # Children may outlive the leader by a moment (or forever, if it was killed).
        deadline = time.monotonic() + 5
        while _group_exists(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stack_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "stack", "run", role]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_api(
    stack: StackEnv,
    *,
    port: int,
    log_dir: Path,
    name: str = "api",
    argv: list[str] | None = None,
    timeout: float = 90,
) -> StackProcess:
    """`stack run api` (migrates first) or `argv` on `port`; ready when GET /ready answers 200."""
    environ = stack.environ(PORT=str(port))
    proc = StackProcess(name, argv or _stack_argv("api"), environ, log_dir / f"{name}.log")
    proc.start()
    url = f"http://127.0.0.1:{port}/ready"
    try:
        wait_until(
            lambda: http_ok(url),
            timeout=timeout,
            what=f"{name} to answer 200 at {url}",
            alive=proc.check_alive,
        )
        if stack.web_concurrency > 1:
            # /ready answers as soon as one uvicorn worker is up; give the others time to bind
            # too, or the first seconds of load measure a server with fewer workers.
            _wait_for_children(proc, stack.web_concurrency, timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def migrate(stack: StackEnv, *, log_dir: Path, timeout: float = 120) -> None:
    """`stack run migrate`: the schema, for measurements that start no API (which would migrate)."""
    log_path = log_dir / "migrate.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        try:
            result = subprocess.run(
                _stack_argv("migrate"),
                env=stack.environ(),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackProcessError(
                f"timed out after {timeout:g} s waiting for `stack run migrate`"
            ) from None
    if result.returncode != 0:
        raise StackProcessError(f"`stack run migrate` exited with code {result.returncode}; see {log_path}")


def _wait_for_children(proc: StackProcess, count: int, *, timeout: float) -> None:
    import psutil

    pid = proc.pid
    if pid is None:
        return

    def workers() -> int:
        try:
            children = psutil.Process(pid).children()
        except psutil.Error:
            return 0
        # Count the serving processes only, not helpers like multiprocessing's resource tracker.
        return sum(1 for c in children if _is_spawned_worker(c))

    wait_until(
        lambda: workers() >= count,
        timeout=timeout,
        what=f"{proc.name} to start {count} workers",
        alive=proc.check_alive,
    )
    # Spawned together, the last worker finishes importing the app about when the first one
    # answered; this settles the rest.
    time.sleep(1.5)


def _is_spawned_worker(child: object) -> bool:
    try:
        command = child.cmdline()  # type: ignore[attr-defined]
    except Exception:  # the child exited or is not ours to read: not a worker we can count
        return False
    # uvicorn --workers spawns through multiprocessing; stack.api.workers runs `uvicorn --fd`.
    return "spawn_main" in " ".join(command) or ("uvicorn" in command and "--fd" in command)


def worker_nodes(
    broker_url: str, prefix: str = "", *, timeout: float = 1.0, key_prefix: str = STACK_PREFIX
) -> list[str]:
    """Node names (`name@host`) of the workers that answer a broadcast ping, filtered by prefix.
    `key_prefix`: the workers' Redis namespace (STACK_NAMESPACE, by default the kinds' package)."""
    from celery import Celery

    app = Celery("loadtests-ping", broker=broker_url, set_as_current=False)
    if key_prefix:
        app.conf.broker_transport_options = {"global_keyprefix": key_prefix}
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_timeout = timeout
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception:  # broker not up yet, or a transient connection error: nobody answered
        return []
    finally:
        app.close()
    return sorted(node for reply in replies for node in reply if node.startswith(prefix))


def start_worker(
    stack: StackEnv,
    *,
    log_dir: Path,
    name: str = "worker",
    argv: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 90,
) -> StackProcess:
    """`stack run worker` (or `argv`), ready when it answers a Celery ping as node `name@...`."""
    environ = stack.environ(STACK_WORKER_NAME=f"{name}@%h")
    environ.update(env or {})
    proc = StackProcess(name, argv or _stack_argv("worker"), environ, log_dir / f"{name}.log")
    proc.start()
    nodes: list[str] = []

    def answered() -> bool:
        nodes[:] = worker_nodes(stack.redis_url, f"{name}@")
        return bool(nodes)

    try:
        wait_until(
            answered,
            timeout=timeout,
            what=f"worker {name} to answer a Celery ping on {stack.redis_url}",
            interval=0.3,
            alive=proc.check_alive,
        )
        proc.node = nodes[0]
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def running(*procs_factories: Callable[[], StackProcess]) -> Iterator[list[StackProcess]]:
    """Start processes in order; stop all of them (reverse order) however the block ends."""
    started: list[StackProcess] = []
    try:
        for factory in procs_factories:
            started.append(factory())
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()
