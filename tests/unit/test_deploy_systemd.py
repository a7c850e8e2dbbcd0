"""deploy/systemd: the units are what `honcho export systemd` makes of Procfile.prod, today.

Regenerating them with deploy/systemd/export.sh must give the committed files byte for byte, so
they never drift from Procfile.prod; `systemd-analyze verify` (where installed) checks them as
systemd would load them.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import honcho
import pytest
from honcho.environ import parse_procfile

from stack.config import Settings
from stack.testing.procfile import shell_exec

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
EXPORT = SYSTEMD_DIR / "export.sh"
HONCHO_TEMPLATES = Path(honcho.__file__).parent / "export" / "templates" / "systemd"
UNIT_SUFFIXES = (".service", ".target")


def units_in(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.suffix in UNIT_SUFFIXES}


def read_unit(name: str) -> configparser.ConfigParser:
    # systemd allows repeated keys (Environment=); the last one is enough for what is read here.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((SYSTEMD_DIR / name).read_text())
    return unit


def test_the_units_are_what_honcho_exports_from_procfile_prod(tmp_path: Path) -> None:
    """A Procfile.prod line added, changed or removed without `deploy/systemd/export.sh` fails here."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", str(EXPORT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"export.sh failed:\n{done.stderr}"
    assert units_in(SYSTEMD_DIR) == units_in(tmp_path), "run deploy/systemd/export.sh and commit the units"


def test_one_service_per_procfile_prod_process() -> None:
    processes = parse_procfile((ROOT / "Procfile.prod").read_text()).processes
    services = {name for name in units_in(SYSTEMD_DIR) if name.endswith(".service")}
    assert services == {f"stack-{name}-1.service" for name in processes}


def test_every_procfile_prod_line_can_be_execed() -> None:
    """templates/process.service runs `exec <line>` so that the role is the unit's main process:
    a line with shell operators or a NAME=value prefix would break it."""
    for name, command in parse_procfile((ROOT / "Procfile.prod").read_text()).processes.items():
        assert shell_exec(command) != command, f"{name}: shell operators in {command!r}"
        assert not re.match(r"\w+=", command), f"{name}: `exec NAME=value cmd` is not a command"


def test_the_templates_change_only_process_service() -> None:
    """The targets are honcho's own, copied because --template-dir replaces all of its templates."""
    for name in ("master.target", "process_master.target"):
        assert (SYSTEMD_DIR / "templates" / name).read_text() == (HONCHO_TEMPLATES / name).read_text()


def test_services_stop_the_role_gracefully_within_the_job_time_limit() -> None:
    limit = Settings(_env_file=None).task_time_limit  # type: ignore[call-arg]
    for name in units_in(SYSTEMD_DIR):
        if name.endswith(".service"):
            service = read_unit(name)["Service"]
            assert service["ExecStart"].startswith("/bin/sh -lc 'exec "), name
            assert service["KillMode"] == "mixed", name  # SIGTERM to the role only; SIGKILL to all at the end
            # A worker's warm shutdown waits for its running jobs: up to their time limit.
            assert int(service["TimeoutStopSec"]) >= limit + 10, name
            assert service["EnvironmentFile"] == "/etc/stack/stack.env", name


def test_every_unit_named_exists() -> None:
    """systemd-analyze does not check this: a PartOf= or Wants= of ours naming a missing unit."""
    names = set(units_in(SYSTEMD_DIR))
    for name in names:
        unit = read_unit(name)["Unit"]
        for key in ("Wants", "PartOf"):
            referred = {u for u in unit.get(key, "").split() if u.startswith("stack")}
            assert referred <= names, f"{name}: {key}= names {sorted(referred - names)}"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install --no-install-recommends systemd)",
)
def test_systemd_analyze_verify_accepts_the_units() -> None:
    units = [str(SYSTEMD_DIR / name) for name in units_in(SYSTEMD_DIR)]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True, timeout=60
    )
    # verify reports a misspelt key or a bad value on stderr and still exits 0: both must be clean.
    assert (done.returncode, done.stderr) == (0, ""), f"systemd-analyze verify:\n{done.stderr}"
