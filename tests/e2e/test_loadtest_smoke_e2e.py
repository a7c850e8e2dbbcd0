"""`locust -f loadtests/generate.py` against the production processes: a few seconds, headless,
zero failures, and both the submit latency and the end-to-end time in the report."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from stack.testing.procfile import ProcfileStack

pytestmark = pytest.mark.e2e


def test_locust_runs_clean_against_the_stack(
    stack_processes: ProcfileStack, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    prefix = tmp_path / "smoke"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            "loadtests/generate.py",
            "--headless",
            "-u",
            "10",
            "-r",
            "10",
            "-t",
            "4s",
            "--host",
            stack_processes.api_url,
            "--csv",
            str(prefix),
            "--only-summary",
            "--job-params",
            '{"seconds": 0.1, "steps": 2}',
        ],
        cwd=pytestconfig.rootpath,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"locust failed ({done.returncode}):\n{done.stderr[-3000:]}"
    with open(f"{prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    aggregated = rows.pop("Aggregated")
    assert int(aggregated["Request Count"]) > 0
    assert int(aggregated["Failure Count"]) == 0, Path(f"{prefix}_failures.csv").read_text()
    assert any(name.startswith("POST /api/jobs/") for name in rows), list(rows)
    assert any("end-to-end" in name for name in rows), list(rows)
