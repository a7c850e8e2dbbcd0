"""Which Procfile line would serve a queue: the fix for "no worker consumes queue X" quotes it.

Doctor runs in the project folder on a laptop (Procfiles around) and in a container in production
(none): with no Procfile the fix is the bare command, which works in both.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from honcho.environ import parse_procfile

log = logging.getLogger(__name__)

_QUEUES = re.compile(r"(?:^|\s)STACK_WORKER_QUEUES=(['\"]?)([^\s'\"]*)\1")
_PATTERNS = ("Procfile", "Procfile.*", "procfiles/*Procfile*", "*.Procfile")


@dataclass(frozen=True)
class WorkerLine:
    path: str  # relative to the project folder
    name: str
    command: str
    queues: tuple[str, ...] | None  # None: the worker serves every queue

    def serves(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues

    def quoted(self) -> str:
        return f"{self.path}: {self.name}: {self.command}"


def start_command(queue: str) -> str:
    return f"STACK_WORKER_QUEUES={queue} stack run worker"


def worker_lines(root: Path) -> list[WorkerLine]:
    """The worker lines of every Procfile under `root`, in a stable order."""
    paths = sorted({p for pattern in _PATTERNS for p in root.glob(pattern) if p.is_file()})
    lines = []
    for path in paths:
        try:
            processes = parse_procfile(path.read_text()).processes
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # a stray file named *Procfile*
            log.debug("skipping %s: %s", path, exc)
            continue
        for name, command in processes.items():
            if "stack run worker" in command:
                lines.append(WorkerLine(str(path.relative_to(root)), name, command, _queues_of(command)))
    return lines


def _queues_of(command: str) -> tuple[str, ...] | None:
    match = _QUEUES.search(command)
    if not match:
        return None
    queues = tuple(q.strip() for q in match.group(2).split(",") if q.strip())
    return None if not queues or "all" in queues else queues


def line_for(queue: str, lines: list[WorkerLine]) -> WorkerLine | None:
    """A line dedicated to the queue if there is one, else one that serves every queue."""
    dedicated = [line for line in lines if line.queues is not None and queue in line.queues]
    catch_all = [line for line in lines if line.queues is None]
    candidates = dedicated or catch_all
    return candidates[0] if candidates else None


def fix_for_queue(queue: str, lines: list[WorkerLine]) -> str:
    fix = f"start one: {start_command(queue)}"
    line = line_for(queue, lines)
    return f"{fix}  (or the Procfile line {line.quoted()})" if line else fix
