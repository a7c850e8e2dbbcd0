"""The API's contract, fuzzed: schemathesis runs every check against the real API process
(authenticated, as a client would be), with a bounded number of examples per operation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from stack.testing.procfile import ProcfileStack
from tests.e2e.conftest import write_procfile

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "contract-test-token-0123456789"
EXAMPLES = 12


@pytest.fixture(scope="module")
def stack_procfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The contract is the API's: no job needs to run.
    return write_procfile(tmp_path_factory, "web: stack run api\n")


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    # Streams on jobs nobody runs end after a second instead of five minutes.
    return {"STACK_API_TOKENS": TOKEN, "STACK_SSE_MAX_SECONDS": "1"}


def test_schemathesis_finds_no_server_error_and_no_schema_violation(stack_processes: ProcfileStack) -> None:
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert executable, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    run = subprocess.run(
        [
            executable,
            "run",
            f"{stack_processes.api_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            "2",
            "--seed",
            "20261201",
            "--no-color",
        ],
        cwd=ROOT,  # schemathesis.toml: every check, and which statuses schema-valid data may still get
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"{summary}\n{run.stderr[-2000:]}\n{stack_processes.logs()}"
    # Sanity: it really exercised the API, authenticated.
    jobs = httpx.get(f"{stack_processes.api_url}/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert jobs.status_code == 200 and jobs.json()["count"] > 0, "schemathesis created no job"
