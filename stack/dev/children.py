"""Child processes that never outlive their parent, and a stop that leaves no descendant behind.

A supervisor killed with SIGKILL runs no cleanup code, so its children are told by the kernel
(`PR_SET_PDEATHSIG`, Linux) instead: a `kill -9` of the pid honcho printed must not leave a
worker behind that keeps consuming jobs. Elsewhere a stop still walks the whole tree (psutil).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

import psutil

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls it

    def set_pdeathsig() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return set_pdeathsig


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    on_parent_death: signal.Signals = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start `argv`; the kernel sends it `on_parent_death` if we die first.

    The signal is tied to the *thread* that forks, so call this from the main thread only. The
    child stays in our process group: honcho stops a process by signalling its group.
    """
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        pass_fds=tuple(pass_fds),
        preexec_fn=_die_with_parent(on_parent_death),  # only calls prctl: safe after fork
    )


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every descendant (collected first: once the parent is gone, its
    children are re-parented and can no longer be found from it)."""
    family = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()
    process.wait()
    psutil.wait_procs(family, timeout=5)


# Celery's graceful (warm) shutdown first, then its cold shutdown, which stops its pool.
GENTLE: tuple[tuple[signal.Signals, float], ...] = ((signal.SIGTERM, 3.0), (signal.SIGQUIT, 2.0))


def stop_tree(
    process: subprocess.Popen[bytes],
    *,
    steps: Sequence[tuple[signal.Signals, float]] = GENTLE,
    kill_level: int = logging.WARNING,
) -> None:
    """Each (signal, seconds to wait) in turn while the process runs, then SIGKILL the tree.
    `kill_level`: how loudly to say so (an old API holding event streams is expected to need it)."""
    for sig, wait in steps:
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        log.log(kill_level, "pid %d did not stop in time; killing it and its children", process.pid)
        kill_tree(process)
