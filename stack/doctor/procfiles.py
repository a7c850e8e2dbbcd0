"""Which Procfile line would serve a queue: the fix for "no worker consumes queue X" quotes it.

Doctor runs in the project folder on a laptop (Procfiles around) and in a container in production
(none): with no Procfile the fix is the bare command, which works in both. Of several Procfiles,
the one the stack runs from is quoted: the one a running honcho was given (`-f`), else `Procfile`
(what `make dev` and `honcho start` run), and only then the variants under procfiles/.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from honcho.environ import parse_procfile

log = logging.getLogger(__name__)

_QUEUES = re.compile(r"(?:^|\s)STACK_WORKER_QUEUES=(['\"]?)([^\s'\"]*)\1")
_PATTERNS = ("Procfile", "Procfile.*", "procfiles/*Procfile*", "*.Procfile")
DEFAULT_PROCFILE = "Procfile"  # what `honcho start` reads when given no -f


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


def running_procfile(root: Path) -> Path | None:
    """The Procfile of a honcho running in `root` (its -f / --procfile), if one runs there."""
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            argv, cwd = process.info["cmdline"] or [], process.info["cwd"]
        except (psutil.Error, KeyError):
            continue
        if not cwd or not any(Path(arg).name == "honcho" for arg in argv[:2]) or "start" not in argv:
            continue
        if Path(cwd).resolve() != root.resolve():
            continue
        return root / (procfile_argument(argv) or DEFAULT_PROCFILE)
    return None


def procfile_argument(argv: Sequence[str]) -> str | None:
    """honcho's `-f PATH`, `-fPATH`, `--procfile PATH` or `--procfile=PATH`."""
    for index, arg in enumerate(argv):
        if arg in ("-f", "--procfile") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--procfile="):
            return arg.split("=", 1)[1]
        if arg.startswith("-f") and len(arg) > 2:
            return arg[2:]
    return None


def worker_lines(root: Path, *, running: Path | None = None) -> list[WorkerLine]:
    """The worker lines of every Procfile under `root`: those of `running` (the Procfile the stack
    runs from) first, then `Procfile`'s, then the others in a stable order."""
    root = root.resolve()
    found = {p.resolve() for pattern in _PATTERNS for p in root.glob(pattern) if p.is_file()}
    first = [p.resolve() for p in (running, root / DEFAULT_PROCFILE) if p is not None and p.is_file()]
    paths = sorted(found | set(first), key=lambda p: (p not in first, first.index(p) if p in first else 0, p))
    lines = []
    for path in paths:
        try:
            processes = parse_procfile(path.read_text()).processes
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # a stray file named *Procfile*
            log.debug("skipping %s: %s", path, exc)
            continue
        for name, command in processes.items():
            if "stack run worker" in command:
                shown = path.relative_to(root) if path.is_relative_to(root) else path
                lines.append(WorkerLine(str(shown), name, command, _queues_of(command)))
    return lines


def _queues_of(command: str) -> tuple[str, ...] | None:
    match = _QUEUES.search(command)
    if not match:
        return None
    queues = tuple(q.strip() for q in match.group(2).split(",") if q.strip())
    return None if not queues or "all" in queues else queues


def line_for(queue: str, lines: list[WorkerLine]) -> WorkerLine | None:
    """From the first Procfile (in `worker_lines` order) that can serve the queue: its line
    dedicated to the queue if it has one, else its line serving every queue."""
    serving = [line for line in lines if line.serves(queue)]
    if not serving:
        return None
    same_file = [line for line in serving if line.path == serving[0].path]
    dedicated = [line for line in same_file if line.queues is not None]
    return (dedicated or same_file)[0]


def fix_for_queue(queue: str, lines: list[WorkerLine]) -> str:
    fix = f"start one: {start_command(queue)}"
    line = line_for(queue, lines)
    return f"{fix}  (or the Procfile line {line.quoted()})" if line else fix
