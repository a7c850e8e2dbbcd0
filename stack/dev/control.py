"""`stack ps` and `stack restart <name>`: act on the running dev stack from another terminal.

honcho has no control channel (honcho issues #175, #253: one process cannot be restarted, and
one that exits stops them all); Overmind's answer is a socket per stack. Ours is one small JSON
file per supervised Procfile line, `STACK_DATA_DIR/run/<name>.json`, written by its supervisor
(`stack run <role> --reload` / `--name`): its pid, the role's pid, state, start time, restarts.
`stack restart` sends that supervisor SIGHUP, which restarts its child and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from stack.errors import StackError

RESTART_TIMEOUT = 60.0


class ControlError(StackError):
    pass


@dataclass(frozen=True)
class ProcessState:
    name: str
    role: str
    supervisor_pid: int
    pid: int | None  # the role's own process; None while it is not running
    state: str  # waiting | running | crashed | stopped
    started_at: float  # wall clock of the role's last start
    restarts: int
    detail: str = ""

    def supervisor_alive(self) -> bool:
        try:
            process = psutil.Process(self.supervisor_pid)
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def uptime(self, now: float | None = None) -> float:
        return max(0.0, (now or time.time()) - self.started_at) if self.state == "running" else 0.0


def run_dir(data_dir: Path) -> Path:
    return data_dir / "run"


class Registration:
    """The supervisor's side: keeps its file current, removes it on exit."""

    def __init__(self, data_dir: Path, *, name: str, role: str) -> None:
        self.path = run_dir(data_dir) / f"{name}.json"
        self.state = ProcessState(name, role, os.getpid(), None, "waiting", time.time(), 0)

    def update(self, **changes: object) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(asdict(self.state)))
        os.replace(partial, self.path)  # readers never see half a file

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def running(data_dir: Path) -> list[ProcessState]:
    """Live supervisors' states; a file whose supervisor died (kill -9) is removed."""
    states = []
    for path in sorted(run_dir(data_dir).glob("*.json")):
        try:
            state = ProcessState(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if state.supervisor_alive():
            states.append(state)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return states


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render(states: list[ProcessState]) -> str:
    rows = [("NAME", "PID", "STATE", "UPTIME", "RESTARTS", "ROLE")]
    now = time.time()
    for s in states:
        uptime = _uptime(s.uptime(now)) if s.state == "running" else "-"
        state = f"{s.state} ({s.detail})" if s.detail else s.state
        rows.append((s.name, str(s.pid or "-"), state, uptime, str(s.restarts), s.role))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def find(data_dir: Path, name: str) -> ProcessState:
    states = {s.name: s for s in running(data_dir)}
    if name in states:
        return states[name]
    if not states:
        raise ControlError(
            f"no supervised process is running from {run_dir(data_dir).resolve()}: start the stack "
            "with `make dev` (or `honcho start`) in this folder"
        )
    raise ControlError(f"no process named {name!r} in the running stack; it has {', '.join(states)}")


def restart(
    data_dir: Path, name: str, *, timeout: float = RESTART_TIMEOUT
) -> tuple[ProcessState, ProcessState]:
    """SIGHUP the supervisor of `name`; (before, after) once the role runs again with a new pid."""
    before = find(data_dir, name)
    os.kill(before.supervisor_pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = find(data_dir, name)
        if now.restarts > before.restarts and now.state == "running" and now.pid != before.pid:
            return before, now
        if now.restarts > before.restarts and now.state == "crashed":
            raise ControlError(f"{name} restarted but exited again: {now.detail}; see its output")
        time.sleep(0.1)
    raise ControlError(
        f"{name} did not come back within {timeout:.0f} s of `stack restart` (state "
        f"{find(data_dir, name).state}); see its output in the honcho terminal"
    )
