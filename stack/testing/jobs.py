"""Drive jobs over the public HTTP API and assert on what a user would see: the status and the
progress trajectory. A job that does not finish in time fails the test with the state it was
stuck in and what the processes logged."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"success", "failure", "revoked"})


@dataclass(frozen=True)
class Observation:
    at: float  # seconds since submit
    status: str
    progress: int
    message: str


@dataclass
class Trajectory:
    task_id: str
    kind: str
    observations: list[Observation] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    @property
    def progress_values(self) -> list[int]:
        return [o.progress for o in self.observations]

    @property
    def statuses(self) -> list[str]:
        return list(dict.fromkeys(o.status for o in self.observations))

    def describe(self) -> str:
        steps = ", ".join(f"{o.status}:{o.progress}%" for o in self.observations[-30:])
        return f"job {self.task_id} ({self.kind}) went through: {steps}"


class JobTimeout(AssertionError):
    pass


class JobClient:
    """A small HTTP client of the jobs API; `diagnostics` adds process logs to failures;
    `token` is sent as a bearer token (an API with STACK_API_TOKENS)."""

    def __init__(
        self, base_url: str, *, diagnostics: Callable[[], str] = lambda: "", token: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, timeout=10.0, headers=headers)
        self.diagnostics = diagnostics

    def close(self) -> None:
        self.http.close()

    def submit(self, kind: str, params: dict[str, Any] | None = None, *, expect: int = 202) -> dict[str, Any]:
        response = self.http.post(f"/api/jobs/{kind}", json=params or {})
        if response.status_code != expect:
            raise AssertionError(
                f"POST /api/jobs/{kind} answered {response.status_code}, expected {expect}: {response.text}"
            )
        body: dict[str, Any] = response.json()
        return body

    def get(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/jobs/{task_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def cancel(self, task_id: str) -> httpx.Response:
        return self.http.post(f"/api/jobs/{task_id}/cancel")

    def follow(
        self,
        submitted: dict[str, Any],
        *,
        timeout: float = 30.0,
        interval: float = 0.05,
        until: Callable[[dict[str, Any]], bool] = lambda job: job["status"] in TERMINAL,
    ) -> Trajectory:
        """Poll the job until `until` (default: a terminal status), recording every change."""
        started = time.monotonic()
        trajectory = Trajectory(task_id=submitted["task_id"], kind=submitted["kind"])
        self._record(trajectory, submitted, started)
        job = submitted
        while not until(job):
            if time.monotonic() - started > timeout:
                raise JobTimeout(
                    f"timed out after {timeout:.0f} s waiting for job {job['task_id']} ({job['kind']}, "
                    f"queue {job['queue']}): stuck in {job['status']!r} at {job['progress']}% "
                    f"with message {job['message']!r}, worker {job.get('worker')!r}, "
                    f"attempts {job.get('attempts')}{_hint(job)}.\n"
                    f"{trajectory.describe()}\n{self.diagnostics()}"
                )
            time.sleep(interval)
            job = self.get(trajectory.task_id)
            self._record(trajectory, job, started)
        trajectory.final = job
        return trajectory

    def run(self, kind: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0) -> Trajectory:
        return self.follow(self.submit(kind, params), timeout=timeout)

    @staticmethod
    def _record(trajectory: Trajectory, job: dict[str, Any], started: float) -> None:
        seen = trajectory.observations
        if seen and (seen[-1].status, seen[-1].progress, seen[-1].message) == (
            job["status"],
            job["progress"],
            job["message"],
        ):
            return
        seen.append(Observation(time.monotonic() - started, job["status"], job["progress"], job["message"]))


def _hint(job: dict[str, Any]) -> str:
    # The API's own diagnosis of a waiting job (no worker on its queue, broker down, ...).
    return f"; the API says: {job['hint']}" if job.get("hint") else ""


def assert_progressed(trajectory: Trajectory, *, intermediate: int = 2) -> None:
    """Starts at 0, ends at 100 with success, never goes backwards, shows intermediate values."""
    values = trajectory.progress_values
    where = trajectory.describe()
    assert trajectory.final.get("status") == "success", (
        f"job ended {trajectory.final.get('status')!r}, error {trajectory.final.get('error')!r}; {where}"
    )
    assert values[0] == 0, f"progress did not start at 0; {where}"
    assert values[-1] == 100, f"progress did not end at 100; {where}"
    backwards = [(a, b) for a, b in itertools.pairwise(values) if b < a]
    assert not backwards, f"progress went backwards {backwards}; {where}"
    between = sorted({v for v in values if 0 < v < 100})
    assert len(between) >= intermediate, (
        f"expected at least {intermediate} intermediate progress values, saw {between}; {where}"
    )
