"""Doctor results as text (one line per check, the fix after `->`) or as JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stack.doctor.result import CheckResult, all_passed


def render_text(results: Sequence[CheckResult], *, seconds: float | None = None) -> str:
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for result in results:
        line = f"{result.status.value:<5} {result.name:<{width}} {result.detail}"
        if result.fix:
            line += f" -> {result.fix}"
        lines.append(line)
    failed = sum(r.failed for r in results)
    summary = "all checks passed" if all_passed(list(results)) else f"{failed} check(s) failed"
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines.append(f"{summary}{took}")
    return "\n".join(lines)


def as_dict(results: Sequence[CheckResult], *, seconds: float | None = None) -> dict[str, Any]:
    return {
        "ok": all_passed(list(results)),
        "seconds": None if seconds is None else round(seconds, 3),
        "checks": [
            {
                "name": r.name,
                "status": r.status.value,
                "detail": r.detail,
                "fix": r.fix or None,
                "data": r.data,
            }
            for r in results
        ],
    }


def render_json(results: Sequence[CheckResult], *, seconds: float | None = None) -> str:
    return json.dumps(as_dict(results, seconds=seconds), indent=2, default=str)
