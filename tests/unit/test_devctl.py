"""`stack ps` / `stack restart`: the run files a supervisor keeps, read from another terminal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.cli import main
from stack.config import get_settings
from stack.dev.control import ControlError, Registration, find, render, restart, running


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("STACK_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()  # `stack ps` reads the data dir through the cached settings
    yield tmp_path
    get_settings.cache_clear()


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_ps_lists_live_supervisors_and_forgets_killed_ones(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = Registration(data_dir, name="web", role="api")
    web.update(state="running", pid=4321, started_at=time.time() - 125, restarts=2)
    killed = Registration(data_dir, name="worker", role="worker")
    killed.update(supervisor_pid=dead_pid(), state="running", pid=99)  # its supervisor got kill -9

    assert [s.name for s in running(data_dir)] == ["web"]
    assert not killed.path.exists(), "the file of a dead supervisor stays behind"
    assert main(["ps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "PID", "STATE", "UPTIME", "RESTARTS", "ROLE"]
    assert lines[1].split() == ["web", "4321", "running", "2m05s", "2", "api"]

    assert main(["ps", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["pid"], row["restarts"]) == ("web", 4321, 2)


def test_a_crashed_process_shows_why(data_dir: Path) -> None:
    worker = Registration(data_dir, name="worker", role="worker")
    worker.update(state="crashed", pid=None, detail="exit 1; waiting for a change")
    table = render(running(data_dir))
    assert "worker  -    crashed (exit 1; waiting for a change)  -" in table


def test_no_stack_and_unknown_names_say_what_to_do(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ControlError, match="make dev"):
        find(data_dir, "worker")
    assert main(["restart", "worker"]) == 1
    assert "start the stack with `make dev`" in capsys.readouterr().err
    Registration(data_dir, name="web", role="api").update(state="running")
    with pytest.raises(ControlError, match="no process named 'wroker' in the running stack; it has web"):
        find(data_dir, "wroker")


@pytest.fixture
def supervisor_here(data_dir: Path) -> Iterator[Registration]:
    """This test process plays the supervisor: SIGHUP restarts its 'child' (a new pid)."""
    registration = Registration(data_dir, name="worker", role="worker")
    registration.update(state="running", pid=1000)

    def on_hup(_signum: int, _frame: object) -> None:
        registration.update(
            state="running", pid=registration.state.pid + 1, restarts=registration.state.restarts + 1
        )

    previous = signal.signal(signal.SIGHUP, on_hup)
    yield registration
    signal.signal(signal.SIGHUP, previous)


def test_restart_signals_the_supervisor_and_waits_for_the_new_pid(
    supervisor_here: Registration, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["restart", "worker"]) == 0
    assert capsys.readouterr().out.strip() == "worker: restarted (pid 1000 -> 1001)"
    assert supervisor_here.state.restarts == 1


def test_restart_reports_a_process_that_crashed_again(supervisor_here: Registration, data_dir: Path) -> None:
    def crash(_signum: int, _frame: object) -> None:
        supervisor_here.update(state="crashed", pid=None, restarts=1, detail="exit 1; waiting for a change")

    signal.signal(signal.SIGHUP, crash)
    with pytest.raises(ControlError, match="restarted but exited again: exit 1; waiting for a change"):
        restart(data_dir, "worker", timeout=5)
