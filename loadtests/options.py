"""What a load scenario submits and how it follows its jobs, from locust arguments or the environment.

Kept free of locust imports so the parsing is unit-testable and the comparison can build the same
command lines it later reads back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TRACK_MODES = ("wait", "background", "none")
TERMINAL_STATUSES = frozenset({"success", "failure", "revoked"})


class OptionError(ValueError):
    """A load option has a value we cannot use; the message names the flag and the env var."""


@dataclass(frozen=True)
class Argument:
    flag: str
    env: str
    default: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


ARGUMENTS = (
    Argument("--job-kind", "LOADTEST_KIND", "demo", "job kind to submit (POST /api/jobs/<kind>)"),
    Argument(
        "--job-params",
        "LOADTEST_PARAMS",
        '{"seconds": 1, "steps": 10}',
        "JSON object sent as the job's params",
    ),
    Argument(
        "--job-timeout",
        "LOADTEST_JOB_TIMEOUT",
        "120",
        "seconds to wait for a job to reach a terminal state before counting it as failed",
    ),
    Argument("--poll-interval", "LOADTEST_POLL_INTERVAL", "0.5", "seconds between two status reads of a job"),
    Argument(
        "--submit-rate",
        "LOADTEST_SUBMIT_RATE",
        "0",
        "submits per second per user (0: next submit as soon as the previous one is done)",
    ),
    Argument(
        "--track",
        "LOADTEST_TRACK",
        "wait",
        "wait: poll each job to the end before the next submit; background: poll up to "
        "--max-tracked jobs per user while submitting on; none: submit only",
    ),
    Argument(
        "--max-tracked",
        "LOADTEST_MAX_TRACKED",
        "1",
        "jobs one user follows at a time in --track background (the rest are submitted, not followed)",
    ),
)


@dataclass(frozen=True)
class LoadOptions:
    kind: str = "demo"
    params: dict[str, Any] = field(default_factory=lambda: {"seconds": 1, "steps": 10})
    job_timeout: float = 120.0
    poll_interval: float = 0.5
    submit_rate: float = 0.0
    track: str = "wait"
    max_tracked: int = 1

    def as_args(self) -> list[str]:
        """The locust command-line arguments that reproduce these options."""
        values = {
            "--job-kind": self.kind,
            "--job-params": json.dumps(self.params, separators=(",", ":")),
            "--job-timeout": f"{self.job_timeout:g}",
            "--poll-interval": f"{self.poll_interval:g}",
            "--submit-rate": f"{self.submit_rate:g}",
            "--track": self.track,
            "--max-tracked": str(self.max_tracked),
        }
        return [part for flag, value in values.items() for part in (flag, value)]


def _arg(dest: str) -> Argument:
    return next(a for a in ARGUMENTS if a.dest == dest)


def _number(dest: str, raw: str, *, minimum: float, strict: bool) -> float:
    arg = _arg(dest)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise OptionError(f"{arg.flag} / {arg.env} must be a number, got {raw!r}") from None
    if math.isnan(value) or value < minimum or (strict and value == minimum) or math.isinf(value):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise OptionError(f"{arg.flag} / {arg.env} must be {bound}, got {raw!r}")
    return value


def parse_params(raw: str) -> dict[str, Any]:
    arg = _arg("job_params")
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise OptionError(f"{arg.flag} / {arg.env} is not valid JSON ({exc}): {raw!r}") from None
    if not isinstance(value, dict):
        raise OptionError(f"{arg.flag} / {arg.env} must be a JSON object, got {type(value).__name__}")
    return value


def from_mapping(values: Mapping[str, Any]) -> LoadOptions:
    """Options from `dest -> raw string` (locust's parsed options or the environment); missing
    keys take the defaults."""

    def raw(dest: str) -> str:
        value = values.get(dest)
        return _arg(dest).default if value is None else str(value)

    kind = raw("job_kind").strip()
    if not kind or "/" in kind:
        raise OptionError(f"--job-kind / LOADTEST_KIND must be a job kind name, got {kind!r}")
    track = raw("track").strip().lower()
    if track not in TRACK_MODES:
        raise OptionError(f"--track / LOADTEST_TRACK must be one of {', '.join(TRACK_MODES)}, got {track!r}")
    max_tracked = _number("max_tracked", raw("max_tracked"), minimum=1, strict=False)
    if max_tracked != int(max_tracked):
        raise OptionError(f"--max-tracked / LOADTEST_MAX_TRACKED must be a whole number, got {max_tracked:g}")
    return LoadOptions(
        kind=kind,
        params=parse_params(raw("job_params")),
        job_timeout=_number("job_timeout", raw("job_timeout"), minimum=0, strict=True),
        poll_interval=_number("poll_interval", raw("poll_interval"), minimum=0, strict=True),
        submit_rate=_number("submit_rate", raw("submit_rate"), minimum=0, strict=False),
        track=track,
        max_tracked=int(max_tracked),
    )


def from_env(environ: Mapping[str, str]) -> LoadOptions:
    return from_mapping({a.dest: environ.get(a.env) for a in ARGUMENTS})


class Pacer:
    """Spaces one user's submits at `rate` per second, measured from start to start.

    Call `wait()` after each submit (locust's `wait_time`). A submit that ran late does not cause a
    burst of catch-up submits: falling behind by more than one interval resets the schedule, so
    the offered rate never exceeds `rate`.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = clock()

    def wait(self) -> float:
        if not self.interval:
            return 0.0
        now = self._clock()
        self._next += self.interval
        if self._next < now - self.interval:
            self._next = now
        return max(0.0, self._next - now)
