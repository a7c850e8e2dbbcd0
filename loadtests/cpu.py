"""CPU seconds used by process trees during a measurement."""

from __future__ import annotations

from collections.abc import Mapping


def tree_cpu_seconds(pid: int | None) -> dict[int, float]:
    """CPU seconds (user + system) so far of `pid` and its live descendants, by pid."""
    import psutil

    if pid is None:
        return {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    seconds: dict[int, float] = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # exited between listing and reading: its share is lost
            continue
        seconds[proc.pid] = times.user + times.system
    return seconds


class CpuMeter:
    """CPU seconds each named process tree used between `start()` and `stop()`.

    Tells whether a measurement measured the server or the machine's other tenants (the load
    generator, the database), which matters on a small machine where they all share the cores.
    """

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, dict[int, float]] = {}
        self._children_before = 0.0
        self.used: dict[str, float] = {}

    def start(self) -> None:
        import resource

        self._before = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children_before = usage.ru_utime + usage.ru_stime

    def stop(self, *, waited_child: str | None = None) -> dict[str, float]:
        """`waited_child`: the name under which to count the children this process waited for in
        between (a load generator run with subprocess.run)."""
        import resource

        for name, pid in self.pids.items():
            after = tree_cpu_seconds(pid)
            before = self._before.get(name, {})
            self.used[name] = sum(max(0.0, s - before.get(p, 0.0)) for p, s in after.items())
        if waited_child is not None:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.used[waited_child] = usage.ru_utime + usage.ru_stime - self._children_before
        return self.used
