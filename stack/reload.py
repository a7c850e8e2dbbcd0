"""`stack run <role> --reload` (and `--name`): the supervisor of one dev Procfile line.

It restarts the role when code changes, when `stack restart <name>` asks (SIGHUP), and after a
crash — but a role that crashes soon after it started (a syntax error, a bad import) is not
retried in a loop that prints its traceback again and again: it waits for the next change. Its
state is kept where `stack ps` reads it (stack/dev/control.py).

The API is handed over, not restarted: the new one binds the same port (SO_REUSEPORT) while the
old one still answers, and the old one stops once the new one is ready (ApiLauncher).

The child stays in our process group on purpose: honcho stops a process by signalling its group,
so Ctrl-C reaches the role, its pool processes and this supervisor alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from watchfiles import PythonFilter, watch

from stack.dev.children import spawn, stop_tree
from stack.dev.control import Registration
from stack.dev.readiness import listening_sockets

log = logging.getLogger(__name__)

# How long a role signalled with its process group gets to stop before we signal it again.
GROUP_SIGNAL_GRACE = 1.5


@dataclass(frozen=True)
class CrashPolicy:
    # A role that exits sooner than this after its start crashed on its own code (or config):
    # starting it again would print the same traceback, so it waits for a change.
    crash_window: float = 10.0
    backoff_start: float = 0.5
    backoff_max: float = 10.0
    healthy_after: float = 30.0  # a run this long resets the backoff


class Child(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Launcher(Protocol):
    def start(self) -> Child: ...

    def stop(self, child: Child) -> None: ...

    def handover(self, old: Child) -> Child | None:
        """A running replacement for `old` (which is being stopped), or None if the new one
        failed to start, in which case `old` keeps running untouched."""
        ...


class ProcessLauncher:
    """Restart = stop the old process, then start the new one (a worker, beat, flower, redis)."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None

    def start(self) -> Child:
        log.info("starting: %s", " ".join(self.argv))
        return spawn(self.argv, env=self.env)

    def stop(self, child: Child) -> None:
        stop_tree(child)  # type: ignore[arg-type]

    def handover(self, old: Child) -> Child | None:
        self.stop(old)
        return self.start()


class ApiLauncher(ProcessLauncher):
    """The new API binds the port beside the old one and takes over once it serves."""

    READY_TIMEOUT = 60.0
    # Plain requests finish in milliseconds; an open event stream never does: after this, it is
    # closed and the browser reconnects (to the new API) with Last-Event-ID.
    DRAIN = 2.0

    def __init__(self, argv: Sequence[str], *, reload_argv: Sequence[str], port: int, workers: int) -> None:
        super().__init__(argv)
        self.reload_argv = list(reload_argv)
        self.port, self.workers = port, workers

    def start(self) -> Child:
        child = super().start()
        # The first start ran the checks and migrations of `stack run api`; a reload goes straight
        # to the servers, a second sooner (the new app still fails loudly if its code is broken).
        self.argv = self.reload_argv
        return child

    def handover(self, old: Child) -> Child | None:
        if old.poll() is not None:
            return self.start()
        new = self.start()
        deadline = time.monotonic() + self.READY_TIMEOUT
        while listening_sockets(new.pid, self.port) < self.workers:
            if new.poll() is not None:
                log.error(
                    "the new api exited with code %s before it served; the running one keeps "
                    "serving the previous code",
                    new.returncode,
                )
                return None
            if time.monotonic() > deadline:
                log.error(
                    "the new api did not listen within %.0f s; keeping the running one", self.READY_TIMEOUT
                )
                stop_tree(new)  # type: ignore[arg-type]
                return None
            time.sleep(0.05)
        log.info("the new api (pid %d) serves; stopping the old one (pid %d)", new.pid, old.pid)
        # In the background: the new API serves meanwhile, and the next change need not wait.
        # Open event streams keep it past the drain: killing it then is the plan, not news.
        stop_old = {"steps": ((signal.SIGTERM, self.DRAIN),), "kill_level": logging.INFO}
        threading.Thread(target=stop_tree, args=(old,), kwargs=stop_old, daemon=True).start()
        return new

    def stop(self, child: Child) -> None:
        stop_tree(child, steps=((signal.SIGTERM, self.DRAIN),))  # type: ignore[arg-type]


class Supervisor:
    def __init__(
        self,
        launcher: Launcher,
        *,
        name: str,
        watch_dir: Path | None = None,
        registration: Registration | None = None,
        policy: CrashPolicy = CrashPolicy(),
        clock: Callable[[], float] = time.monotonic,
        before_first_start: Callable[[], None] | None = None,
    ) -> None:
        self.launcher = launcher
        self.name = name
        self.watch_dir = watch_dir
        self.registration = registration
        self.policy = policy
        self.clock = clock
        self.before_first_start = before_first_start
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._stop = threading.Event()
        self._signalled = False  # stopped by SIGTERM/SIGINT, not by the loop itself
        self._backoff = policy.backoff_start
        self._started_at = 0.0
        self._restarts = 0
        self._before_start = False

    # --- the outside world: signals, file changes, child exits, all as events ------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGHUP, lambda _s, _f: self.events.put(("restart", "stack restart")))

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self._signalled = True
        self._stop.set()
        self.events.put(("stop", None))
        if self._before_start:  # still waiting for the broker: nothing to stop, leave now
            raise KeyboardInterrupt

    def _watch(self, directory: Path) -> None:
        logging.getLogger("watchfiles.main").setLevel(logging.WARNING)  # our "restarting" line says it
        for batch in watch(directory, watch_filter=PythonFilter(), stop_event=self._stop):
            paths = sorted({os.path.relpath(path, directory) for _, path in batch})
            self.events.put(("change", ", ".join(paths[:5])))

    def _watch_exit(self, child: Child) -> None:
        def wait() -> None:
            child.wait()
            self.events.put(("exit", child))

        threading.Thread(target=wait, daemon=True).start()

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        if self.watch_dir is not None:
            threading.Thread(target=self._watch, args=(self.watch_dir,), daemon=True).start()
        self._record(state="waiting", detail="for the broker" if self.before_first_start else "starting")
        child: Child | None = None
        try:
            if self.before_first_start is not None:
                self._before_start = True
                self.before_first_start()
                self._before_start = False
            child = self._launch(self.launcher.start)
            retry_at: float | None = None
            while not self._stop.is_set():
                try:
                    kind, payload = self.events.get(timeout=0.2)
                except queue.Empty:
                    if retry_at is not None and self.clock() >= retry_at:
                        retry_at, child = None, self._launch(self.launcher.start, restart=True)
                    continue
                if kind == "stop":
                    break
                if kind in ("change", "restart"):
                    retry_at = None
                    self._backoff = self.policy.backoff_start  # a change deserves a fresh start
                    log.info(
                        "%s: restarting (%s)",
                        self.name,
                        f"change in {payload}" if kind == "change" else payload,
                    )
                    self._drain_changes()
                    child = self._restart(child)
                elif kind == "exit" and payload is child and child is not None:
                    retry_at = self._after_exit(child)
        finally:
            self._stop.set()
            if child is not None and self._signalled:
                self._let_group_signal_work(child)
            if child is not None and child.poll() is None:
                self.launcher.stop(child)
            if self.registration is not None:
                self.registration.remove()
        return 0

    @staticmethod
    def _let_group_signal_work(child: Child) -> None:
        """The child shares our process group, so the signal honcho (or a terminal's Ctrl-C) sent
        the group reached it too: give it a moment to stop on that one. A second SIGTERM makes
        Celery print its shutdown twice and Flower exit with a traceback."""
        # Still running after it (or signalled alone, by pid): stopped as usual.
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=GROUP_SIGNAL_GRACE)

    def _drain_changes(self) -> None:
        """Saves that queued up while the last restart ran all go into this one restart."""
        kept = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event[0] not in ("change", "restart"):
                kept.append(event)
        for event in kept:
            self.events.put(event)

    def _launch(self, start: Callable[[], Child], *, restart: bool = False) -> Child:
        child = start()
        self._restarts += restart
        self._started_at = self.clock()
        self._watch_exit(child)
        self._record(state="running", pid=child.pid, started_at=time.time(), detail="")
        return child

    def _restart(self, child: Child) -> Child:
        if child.poll() is not None:  # crashed and waiting: just start it
            return self._launch(self.launcher.start, restart=True)
        new = self.launcher.handover(child)
        if new is None:
            self._restarts += 1
            self._record(detail="new code failed to start; serving the previous code")
            log.warning("%s: waiting for the next change", self.name)
            return child
        return self._launch(lambda: new, restart=True)

    def _after_exit(self, child: Child) -> float | None:
        """When to start again: None to wait for a change (or `stack restart`)."""
        ran = self.clock() - self._started_at
        code = child.returncode
        # Without a watcher no change will come: such a role (beat, flower) always backs off.
        if ran < self.policy.crash_window and self.watch_dir is not None:
            log.error(
                "%s exited with code %s %.1f s after it started; waiting for the next change "
                "(or `stack restart %s`)",
                self.name,
                code,
                ran,
                self.name,
            )
            self._record(state="crashed", pid=None, detail=f"exit {code}; waiting for a change")
            return None
        if ran >= self.policy.healthy_after:
            self._backoff = self.policy.backoff_start
        delay, self._backoff = self._backoff, min(self.policy.backoff_max, self._backoff * 2)
        retry_at = self.clock() + delay
        log.warning(
            "%s exited with code %s after %.0f s; restarting in %.1f s (or on the next change)",
            self.name,
            code,
            ran,
            delay,
        )
        self._record(state="crashed", pid=None, detail=f"exit {code}; restarting in {delay:g} s")
        return retry_at

    def _record(self, **changes: object) -> None:
        if self.registration is not None:
            self.registration.update(restarts=self._restarts, **changes)
