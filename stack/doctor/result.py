"""What one doctor check says: a status, one line of detail, and the fix when it is not ok."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""
    # Machine-readable facts behind the line (depths, ages, node names), for `--json`.
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


def ok(name: str, detail: str, **data: Any) -> CheckResult:
    return CheckResult(name, Status.OK, detail, data=data)


def warn(name: str, detail: str, fix: str = "", **data: Any) -> CheckResult:
    return CheckResult(name, Status.WARN, detail, fix, data=data)


def fail(name: str, detail: str, fix: str = "", **data: Any) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail, fix, data=data)


def all_passed(results: list[CheckResult]) -> bool:
    """Warnings pass: they name something worth knowing, not something broken."""
    return not any(r.failed for r in results)


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
