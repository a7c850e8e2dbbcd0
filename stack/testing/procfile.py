"""The app's real processes, started from a Procfile the way honcho starts them.

Each line becomes a process group of its own (`sh -c <line>`, as honcho does), so a test can stop,
SIGKILL or restart one role — a worker and its pool children together — while the rest keep
running. Output goes to one log file per process; errors quote their tails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from honcho.environ import parse_procfile

from stack.testing.services.base import ServiceError
from stack.testing.services.processes import free_port, read_tail, spawn

log = logging.getLogger(__name__)


def shell_exec(command: str) -> str:
    """`exec env <line>` for a simple Procfile line, so the role *is* our child process.

    Without it `sh` stays in between: a SIGTERM kills the shell at once while the worker is
    still shutting down, and "stopped" would not mean stopped. `env` keeps the `NAME=value`
    prefixes Procfiles use; lines with shell operators run as they are, as honcho runs them.
    """
    if any(char in command for char in ";&|<>()`") or re.search(r"(^|\s)exec\s", command):
        return command  # (a line that says `exec` itself, as the dev Procfile's, needs nothing)
    return f"exec env {command}"


class AppProcess:
    def __init__(self, name: str, command: str, *, cwd: Path, env: Mapping[str, str], log_path: Path):
        self.name = name
        self.command = command
        self.cwd = cwd
        self.env = dict(env)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        """None while running or never started; the code once it exited on its own."""
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        if self.alive():
            raise ServiceError(f"process {self.name!r} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as out:
            out.write(f"--- starting {self.name}: {self.command}\n".encode())
        self._proc = spawn(
            ["/bin/sh", "-c", shell_exec(self.command)], cwd=self.cwd, env=self.env, log_path=self.log_path
        )

    def signal_group(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM to the role's process, as `docker stop` sends it (Celery: warm shutdown, which
        lets the running job finish); SIGKILL to the whole group after `timeout`."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the group, as an OOM killer or a lost node would: no shutdown code runs."""
        if self._proc is None:
            return
        self.signal_group(signal.SIGKILL)
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %s) survived SIGKILL", self.name, self._proc.pid)
        self._proc = None

    def log_tail(self, lines: int = 25) -> str:
        return read_tail(self.log_path, lines)


class ProcfileStack:
    """All processes of one Procfile, with the env the services and the test give them."""

    def __init__(
        self,
        procfile: Path,
        *,
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path | None = None,
    ) -> None:
        self.procfile = procfile
        self.cwd = cwd or procfile.parent
        self.port = int(env.get("PORT") or free_port())
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.broker_url = env.get("CELERY_BROKER_URL") or env.get("REDIS_URL") or ""
        # Settings of the developer's shell must not leak into the processes under test.
        # (Imported here: the plugin loads on every pytest run and must stay light.)
        from stack.config import Settings, ecosystem_env_names, key_prefix, namespace_of

        scrubbed = set(ecosystem_env_names())
        environment = {
            k: v for k, v in os.environ.items() if k not in scrubbed and not k.startswith("STACK_")
        }
        # The `stack` command of the interpreter running the tests, whatever PATH says.
        environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
        environment.update(env)
        environment["PORT"] = str(self.port)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        environment.setdefault("STACK_PROCFILE", str(procfile.resolve()))  # what doctor's fixes quote
        self.env = environment
        # The namespace the processes will derive: their workers answer pings under it only.
        kinds = environment.get("STACK_KINDS") or str(Settings.model_fields["kinds"].default)
        self.redis_prefix = key_prefix(
            namespace_of(namespace=environment.get("STACK_NAMESPACE"), kinds=kinds)
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        lines = parse_procfile(procfile.read_text()).processes
        if not lines:
            raise ServiceError(f"{procfile} declares no process")
        self.processes = {
            name: AppProcess(name, command, cwd=self.cwd, env=environment, log_path=log_dir / f"{name}.log")
            for name, command in lines.items()
        }

    @property
    def worker_names(self) -> list[str]:
        return [name for name in self.processes if "worker" in name]

    def __getitem__(self, name: str) -> AppProcess:
        try:
            return self.processes[name]
        except KeyError:
            raise KeyError(
                f"{self.procfile.name} has no process {name!r}; it has {list(self.processes)}"
            ) from None

    def start(self, *names: str) -> None:
        for name in names or self.processes:
            self[name].start()

    def teardown(self) -> None:
        for process in self.processes.values():
            process.signal_group(signal.SIGTERM)
        for process in self.processes.values():
            process.stop(timeout=8)

    # --- readiness ---------------------------------------------------------------------------------
    def api_ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def workers_answering(self, timeout: float = 1.0) -> list[str]:
        """Node names of the workers that answer a Celery ping on our broker."""
        if not self.broker_url:
            return []
        from celery import Celery

        app = Celery("stack-e2e-probe", broker=self.broker_url, set_as_current=False)
        if self.redis_prefix:
            app.conf.broker_transport_options = {"global_keyprefix": self.redis_prefix}
        try:
            replies = app.control.ping(timeout=timeout) or []
        except Exception:  # broker down: nobody answers
            return []
        finally:
            app.close()
        return sorted(name for reply in replies for name in reply)

    def wait_ready(self, *, timeout: float = 60.0, workers: int | None = None) -> None:
        """Until /ready answers 200 and `workers` (default: every worker line) answer a ping."""
        expected = len(self.worker_names) if workers is None else workers
        deadline = time.monotonic() + timeout
        api_ok, answering = False, []
        has_api = any(name in self.processes for name in ("web", "api"))
        while time.monotonic() < deadline:
            self._check_nothing_died()
            api_ok = not has_api or self.api_ready()
            answering = self.workers_answering() if expected else []
            if api_ok and len(answering) >= expected:
                return
            time.sleep(0.2)
        raise ServiceError(
            f"timed out after {timeout:.0f} s waiting for the stack of {self.procfile.name}: "
            f"api /ready {'ok' if api_ok else 'not answering 200'}, workers answering ping "
            f"{answering} of {expected} expected\n{self.logs()}"
        )

    def _check_nothing_died(self) -> None:
        for process in self.processes.values():
            if process.exit_code() is not None:
                raise ServiceError(
                    f"process {process.name!r} exited with code {process.exit_code()} "
                    f"during start-up\n{self.logs()}"
                )

    def logs(self, lines: int = 25) -> str:
        return "\n".join(
            f"--- {name} (last {lines} lines of {p.log_path}):\n{p.log_tail(lines)}"
            for name, p in self.processes.items()
        )
