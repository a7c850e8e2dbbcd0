"""--reload: restart on a code change, restart after a crash, stop everything on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
if os.path.exists(sys.argv[2]):
    sys.exit(3)  # crash on purpose
time.sleep(60)
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_lines(path: Path, count: int, what: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_lines(path)) >= count:
            return _lines(path)
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; starts so far: {_lines(path)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_restarts_on_change_and_on_crash_and_stops_cleanly(tmp_path: Path) -> None:
    watched = tmp_path / "src"
    watched.mkdir()
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    starts, crash_flag = tmp_path / "starts.txt", tmp_path / "crash"
    argv = [sys.executable, str(child), str(starts), str(crash_flag)]
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; from stack.reload import Supervisor; from pathlib import Path; "
            f"sys.exit(Supervisor({argv!r}, watch_dir=Path({str(watched)!r})).run())",
        ],
    )
    try:
        first = _wait_lines(starts, 1, "the first start")
        time.sleep(0.5)  # let the watcher settle before the change
        (watched / "handlers.py").write_text("x = 1\n")
        second = _wait_lines(starts, 2, "a restart after a .py file changed")
        assert second[1] != first[0]
        assert not _alive(int(first[0])), "the old process must be stopped before the new one runs"

        crash_flag.touch()
        (watched / "handlers.py").write_text("x = 2\n")  # restart into a crashing child
        _wait_lines(starts, 4, "a restart after the child crashed (with backoff)")

        crash_flag.unlink()
        last_pid = int(_wait_lines(starts, 5, "the child to come back once the crash is fixed")[-1])
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=10) == 0
        deadline = time.monotonic() + 5
        while _alive(last_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(last_pid), "the child outlived its supervisor"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
