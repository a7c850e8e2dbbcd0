"""Read locust's `--csv` output: per-endpoint statistics and the failures with their reasons."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class EndpointStats:
    """One row of `<prefix>_stats.csv`; times in milliseconds, NaN when nothing was measured."""

    type: str
    name: str
    count: int
    failures: int
    p50: float
    p95: float
    p99: float
    average: float
    max: float
    rps: float

    @property
    def ok(self) -> int:
        return self.count - self.failures


@dataclass(frozen=True)
class Failure:
    method: str
    name: str
    error: str
    occurrences: int


def _number(value: str | None) -> float:
    if value is None or value.strip() in ("", "N/A"):
        return math.nan
    return float(value)


def read_stats(path: Path) -> dict[str, EndpointStats]:
    """Rows of a `_stats.csv` by name (`Aggregated` for the total line)."""
    rows: dict[str, EndpointStats] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"]
            rows[name] = EndpointStats(
                type=row.get("Type") or "",
                name=name,
                count=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                p50=_number(row.get("50%")),
                p95=_number(row.get("95%")),
                p99=_number(row.get("99%")),
                average=_number(row.get("Average Response Time")),
                max=_number(row.get("Max Response Time")),
                rps=_number(row.get("Requests/s")),
            )
    return rows


def read_failures(path: Path) -> list[Failure]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [
            Failure(
                method=row.get("Method") or "",
                name=row.get("Name") or "",
                error=row.get("Error") or "",
                occurrences=int(row.get("Occurrences") or 0),
            )
            for row in csv.DictReader(fh)
        ]


@dataclass(frozen=True)
class HistoryPoint:
    seconds: float  # since the first row
    users: int
    rps: float
    p50: float


def read_history(path: Path, name: str = AGGREGATED) -> list[HistoryPoint]:
    """The per-second rows of `_stats_history.csv` (from --csv-full-history) for one entry."""
    if not path.exists():
        return []
    points: list[HistoryPoint] = []
    first: float | None = None
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") != name:
                continue
            stamp = float(row["Timestamp"])
            first = stamp if first is None else first
            points.append(
                HistoryPoint(
                    seconds=stamp - first,
                    users=int(row.get("User Count") or 0),
                    rps=_number(row.get("Requests/s")),
                    p50=_number(row.get("50%")),
                )
            )
    return points
