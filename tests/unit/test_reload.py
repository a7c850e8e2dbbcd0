"""--reload: when the supervisor starts its role again, and when it waits.

The policy tests drive `Supervisor` with a fake launcher and a fake clock; the last test runs it
for real on a child process and a watched folder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.dev.control import Registration
from stack.reload import CrashPolicy, Supervisor


class FakeChild:
    _pids = iter(range(1000, 10**6))

    def __init__(self) -> None:
        self.pid = next(self._pids)
        self.returncode: int | None = None
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._exited.wait(timeout)
        assert self.returncode is not None
        return self.returncode

    def exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()


class FakeLauncher:
    def __init__(self) -> None:
        self.children: list[FakeChild] = []
        self.handover_fails = False
        self.handing_over = threading.Event()
        self.hold = threading.Event()  # cleared: a handover waits, as a slow new API does
        self.hold.set()

    def start(self) -> FakeChild:
        self.children.append(FakeChild())
        return self.children[-1]

    def stop(self, child: FakeChild) -> None:  # type: ignore[override]
        child.exit(-signal.SIGTERM)

    def handover(self, old: FakeChild) -> FakeChild | None:  # type: ignore[override]
        self.handing_over.set()
        self.hold.wait(5)
        if self.handover_fails:
            return None
        self.stop(old)
        return self.start()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def wait_until(predicate, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Running:
    """A supervisor in a thread; `watched`: with a real watcher on an empty folder (the tests send
    the change events themselves)."""

    def __init__(self, tmp_path: Path, policy: CrashPolicy, *, watched: bool = True) -> None:
        self.launcher = FakeLauncher()
        self.clock = Clock()
        self.registration = Registration(tmp_path, name="worker", role="worker")
        (tmp_path / "src").mkdir()
        self.supervisor = Supervisor(
            self.launcher,
            name="worker",
            watch_dir=tmp_path / "src" if watched else None,
            registration=self.registration,
            policy=policy,
            clock=self.clock,
        )
        self.thread = threading.Thread(target=self.supervisor.run, daemon=True)

    def starts(self) -> int:
        return len(self.launcher.children)

    def state(self) -> dict[str, object]:
        return json.loads(self.registration.path.read_text())

    def send(self, kind: str, payload: object = "handlers.py") -> None:
        self.supervisor.events.put((kind, payload))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    run = Running(tmp_path, CrashPolicy(crash_window=10, backoff_start=5, backoff_max=20, healthy_after=30))
    run.thread.start()
    wait_until(lambda: run.starts() == 1, "the first start")
    yield run
    run.send("stop")
    run.thread.join(5)
    assert not run.thread.is_alive(), "the supervisor did not stop"


def test_a_crash_soon_after_a_start_waits_for_the_next_change(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stack.reload")
    running.clock.now += 1.5
    running.launcher.children[0].exit(1)  # a syntax error: its one traceback is printed now
    wait_until(lambda: running.state()["state"] == "crashed", "the crash to be recorded")
    running.clock.now += 3600  # however long we wait, the same code is not run again
    time.sleep(0.5)
    assert running.starts() == 1, "a broken save must print its traceback once, not once per retry"
    assert running.state()["detail"] == "exit 1; waiting for a change"
    assert sum("waiting for the next change" in r.message for r in caplog.records) == 1

    running.send("change")
    wait_until(lambda: running.starts() == 2, "a start on the next change")
    wait_until(lambda: running.state()["state"] == "running", "the new child to be recorded")
    assert running.state()["pid"] == running.launcher.children[1].pid
    assert running.state()["restarts"] == 1


def test_a_change_during_the_backoff_starts_at_once_and_resets_it(running: Running) -> None:
    running.clock.now += 15  # ran long enough to be more than a broken start
    running.launcher.children[0].exit(1)
    wait_until(lambda: running.state()["state"] == "crashed", "the crash to be recorded")
    assert running.state()["detail"] == "exit 1; restarting in 5 s"
    time.sleep(0.5)
    assert running.starts() == 1, "restarted before its backoff was over"

    running.send("change")
    wait_until(lambda: running.starts() == 2, "a start right after the change, not after the backoff")
    wait_until(lambda: running.state()["state"] == "running", "the new child to be recorded")
    running.clock.now += 15
    running.launcher.children[1].exit(1)
    wait_until(lambda: running.state()["state"] == "crashed", "the second crash")
    assert running.state()["detail"] == "exit 1; restarting in 5 s", "the change did not reset the backoff"


def test_repeated_late_crashes_back_off_longer_each_time(running: Running) -> None:
    for attempt, delay in enumerate((5, 10, 20, 20), start=1):
        running.clock.now += 15
        running.launcher.children[-1].exit(1)
        wait_until(
            lambda d=delay: running.state()["detail"] == f"exit 1; restarting in {d} s", f"backoff {delay}"
        )
        running.clock.now += delay
        wait_until(lambda a=attempt: running.starts() == a + 1, f"restart {attempt} once its backoff is over")
        wait_until(lambda: running.state()["state"] == "running", "the new child to be recorded")


def test_stack_restart_restarts_a_running_child(running: Running) -> None:
    first = running.launcher.children[0]
    running.send("restart", "stack restart")
    wait_until(lambda: running.starts() == 2, "the restart")
    assert first.returncode == -signal.SIGTERM, "the old child was not stopped"


def test_saves_during_a_restart_make_one_more_restart_not_one_each(running: Running) -> None:
    running.launcher.hold.clear()
    running.send("change")
    assert running.launcher.handing_over.wait(5), "the first change did not restart"
    for _ in range(3):
        running.send("change")  # saved again while the new process was starting
    running.launcher.hold.set()
    wait_until(lambda: running.starts() == 3, "one restart for the three queued saves")
    time.sleep(0.5)
    assert running.starts() == 3


def test_a_failed_handover_keeps_the_old_child_serving(running: Running) -> None:
    running.launcher.handover_fails = True
    first = running.launcher.children[0]
    running.send("change")
    wait_until(lambda: running.state()["restarts"] == 1, "the failed handover to be recorded")
    assert first.poll() is None and running.state()["pid"] == first.pid
    assert running.state()["detail"] == "new code failed to start; serving the previous code"


def test_a_role_without_a_watcher_backs_off_instead_of_waiting_for_a_change(tmp_path: Path) -> None:
    run = Running(tmp_path, CrashPolicy(crash_window=10, backoff_start=5), watched=False)
    run.thread.start()
    try:
        wait_until(lambda: run.starts() == 1, "the first start")
        run.clock.now += 1
        run.launcher.children[0].exit(1)  # beat, say, before the api migrated the database
        wait_until(lambda: run.state()["detail"] == "exit 1; restarting in 5 s", "a backoff, not a wait")
        run.clock.now += 5
        wait_until(lambda: run.starts() == 2, "the restart once the backoff is over")
    finally:
        run.send("stop")
        run.thread.join(5)


def test_stop_stops_the_child_and_unregisters(tmp_path: Path) -> None:
    run = Running(tmp_path, CrashPolicy())
    run.thread.start()
    wait_until(lambda: run.starts() == 1, "the first start")
    wait_until(lambda: run.registration.path.exists(), "the registration")
    run.send("stop")
    run.thread.join(5)
    assert run.launcher.children[0].returncode == -signal.SIGTERM
    assert not run.registration.path.exists(), "stack ps would list a stopped process"


# --- for real: a child process, a watched folder, SIGTERM ---------------------------------------

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
    wait_until(lambda: len(_lines(path)) >= count, f"{what}; starts so far: {_lines(path)}", timeout)
    return _lines(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_restarts_on_change_waits_after_a_crash_and_stops_cleanly(tmp_path: Path) -> None:
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
            "import sys; from pathlib import Path; from stack.reload import ProcessLauncher, Supervisor; "
            f"s = Supervisor(ProcessLauncher({argv!r}), name='child', watch_dir=Path({str(watched)!r})); "
            "s.install_signal_handlers(); sys.exit(s.run())",
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
        _wait_lines(starts, 3, "the restart into the crashing child")
        time.sleep(1.5)
        assert len(_lines(starts)) == 3, "a child that crashes at start must wait for a change"

        crash_flag.unlink()
        (watched / "handlers.py").write_text("x = 3\n")  # the fix
        last_pid = int(_wait_lines(starts, 4, "the child to come back on the fix")[-1])
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=10) == 0
        wait_until(lambda: not _alive(last_pid), "the child to stop with its supervisor")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def test_a_child_dies_with_its_killed_supervisor(tmp_path: Path) -> None:
    """kill -9 of the pid honcho printed: the kernel stops the role (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    starts = tmp_path / "starts.txt"
    argv = [sys.executable, "-c", CHILD, str(starts), str(tmp_path / "never")]
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from stack.reload import ProcessLauncher, Supervisor; "
            f"sys.exit(Supervisor(ProcessLauncher({argv!r}), name='child').run())",
        ],
    )
    try:
        pid = int(_wait_lines(starts, 1, "the child to start")[0])
        supervisor.kill()
        supervisor.wait(5)
        wait_until(lambda: not _alive(pid), "the orphaned child to be stopped by the kernel")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
