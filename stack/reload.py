"""`stack run <role> --reload`: restart the role when code changes, and after a crash with backoff.

watchfiles' own `run_process` restarts on change only; a development worker that crashed on a
syntax error must come back once the error is fixed, and one that crashes in a loop must not spin.

The child stays in our process group on purpose: honcho stops a process by signalling its group,
so Ctrl-C reaches the role, its pool processes and this supervisor alike.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from watchfiles import PythonFilter, watch

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 30.0  # a run this long resets the crash backoff
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 3.0) -> None:
    """SIGTERM (graceful), then SIGQUIT (Celery's cold shutdown, which stops its pool), then KILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


class Supervisor:
    def __init__(self, argv: Sequence[str], *, watch_dir: Path) -> None:
        self.argv = list(argv)
        self.watch_dir = watch_dir
        self._stop = threading.Event()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        backoff = BACKOFF_START
        process: subprocess.Popen[bytes] | None = None
        changes = watch(
            self.watch_dir,
            watch_filter=PythonFilter(),
            stop_event=self._stop,
            yield_on_timeout=True,
            rust_timeout=300,
        )
        while not self._stop.is_set():
            log.info("starting: %s", " ".join(self.argv))
            process = subprocess.Popen(self.argv)
            started = time.monotonic()
            reason = self._wait_for_change_or_exit(process, changes)
            if reason == "stop":
                break
            if reason == "change":
                stop_process(process)
                backoff = BACKOFF_START
                continue
            if time.monotonic() - started > HEALTHY_AFTER:
                backoff = BACKOFF_START
            log.warning(
                "exited with code %s; restarting in %.1f s (or on the next change)",
                process.returncode,
                backoff,
            )
            self._wait_for_change(changes, timeout=backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)
        if process is not None:
            stop_process(process)
        return 0

    def _wait_for_change_or_exit(self, process: subprocess.Popen[bytes], changes: object) -> str:
        for batch in changes:  # type: ignore[attr-defined]
            if self._stop.is_set():
                return "stop"
            if batch:
                paths = sorted({os.path.relpath(path, self.watch_dir) for _, path in batch})
                log.info("change detected in %s; restarting", ", ".join(paths[:5]))
                return "change"
            if process.poll() is not None:
                return "exit"
        return "stop"

    def _wait_for_change(self, changes: object, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for batch in changes:  # type: ignore[attr-defined]
            if batch or self._stop.is_set() or time.monotonic() >= deadline:
                return
