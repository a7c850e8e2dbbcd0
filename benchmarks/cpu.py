"""CPU seconds spent by every process of a measurement, per operation.

On a shared VM a rate can swing by half between two runs of the same code, so a rate alone
cannot say whether a change made a submit or a job cheaper. CPU time per operation moves less,
is summed over every process involved (this process, which generates the load; the API or worker
processes; PostgreSQL; Redis) and says where the time went.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterable

import psutil

GROUPS = ("stack", "postgres", "redis", "load")


def _group(process: psutil.Process) -> str:
    name = process.name()
    if "postgres" in name:
        return "postgres"
    if "redis" in name:
        return "redis"
    return "stack"  # the API or worker processes under measurement


def cpu_by_group(exclude: Collection[int] = ()) -> Counter[str]:
    """CPU seconds (user + system) so far of this process ("load") and each of its descendants
    but those in `exclude`, by group. Only processes alive now count: start the meter after the
    processes it watches."""
    me = psutil.Process(os.getpid())
    times = me.cpu_times()
    seconds: Counter[str] = Counter({"load": times.user + times.system})
    for child in me.children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            times = child.cpu_times()
            seconds[_group(child)] += times.user + times.system
        except psutil.Error:  # it exited meanwhile
            continue
    return seconds


def process_trees(pids: Iterable[int | None]) -> set[int]:
    """These processes and their descendants (a server's workers, a worker's pool); those gone
    are left out."""
    tree: set[int] = set()
    for pid in pids:
        if pid is None:
            continue
        try:
            root = psutil.Process(pid)
            tree |= {root.pid, *(child.pid for child in root.children(recursive=True))}
        except psutil.Error:
            continue
    return tree


def per_operation(seconds: Counter[str], count: int) -> dict[str, float]:
    """µs per operation by group, and their `total`; empty when nothing was counted."""
    if count <= 0:
        return {}
    per = {group: seconds[group] / count * 1e6 for group in GROUPS}
    per["total"] = sum(per.values())
    return per


class CpuMeter:
    """`with CpuMeter() as meter: ...`, then `meter.per_operation(n)`: µs of CPU per operation.
    The processes in `exclude` (say, an idle worker beside the one measured) are left out."""

    def __init__(self, exclude: Collection[int] = ()) -> None:
        self.exclude = exclude
        self._before: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def __enter__(self) -> CpuMeter:
        self._before = cpu_by_group(self.exclude)
        return self

    def __exit__(self, *exc: object) -> None:
        after = cpu_by_group(self.exclude)
        self.seconds = Counter({group: max(0.0, after[group] - self._before[group]) for group in GROUPS})

    def per_operation(self, count: int) -> dict[str, float]:
        return per_operation(self.seconds, count)


def describe(per_operation: dict[str, float]) -> str:
    if not per_operation:
        return "CPU not measured"
    parts = " + ".join(f"{group} {per_operation[group]:.0f}" for group in GROUPS)
    return f"CPU µs: {parts} = {per_operation['total']:.0f}"
