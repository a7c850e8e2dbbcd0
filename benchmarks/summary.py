"""N runs summed up: per figure, the median of the runs and its spread, ours and bare, and the
ours/bare ratio of each run (both measured in the same run, so a slow phase of the machine moves
both). Pure: figures in, numbers and text out."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from benchmarks.figures import BenchFigures, scalars
from loadtests.report import fmt, ratio


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: list[float]) -> float:
    """(max - min) / median, as a fraction: how far apart the runs landed. NaN for no runs."""
    mid = median(values)
    if not values or mid == 0 or math.isnan(mid):
        return math.nan
    return (max(values) - min(values)) / mid


@dataclass
class Series:
    """One figure over the runs."""

    key: str
    label: str
    unit: str
    ours: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)  # empty: the figure has no bare counterpart

    @property
    def ratios(self) -> list[float]:
        """ours/bare of each run."""
        return [ratio(o, b) for o, b in zip(self.ours, self.bare, strict=False)]

    @property
    def median_ratio(self) -> float:
        return median(self.ratios)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "unit": self.unit,
            "ours_median": median(self.ours),
            "ours_spread_pct": 100 * spread(self.ours),
            "ours_runs": self.ours,
        }
        if self.bare:
            out |= {
                "bare_median": median(self.bare),
                "bare_spread_pct": 100 * spread(self.bare),
                "bare_runs": self.bare,
                "ratio_median": self.median_ratio,
                "ratio_runs": self.ratios,
            }
        return out


def summarize(runs: list[BenchFigures]) -> dict[str, Series]:
    """The runs' figures by key, in the order of the first run that has each."""
    series: dict[str, Series] = {}
    for run in runs:
        for s in scalars(run):
            entry = series.setdefault(s.key, Series(s.key, s.label, s.unit))
            entry.ours.append(s.ours)
            if s.bare is not None:
                entry.bare.append(s.bare)
    return series


def _pct(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.1f} %"


def _values(values: list[float]) -> str:
    return " ".join(fmt(v) for v in values)


def render(series: dict[str, Series], *, runs: int) -> str:
    """The table: medians, spreads, the median ours/bare ratio, and every run's values."""
    header = ("", "ours", "spread", "bare", "spread", "ours/bare", "runs: ours | bare")
    rows: list[tuple[str, ...]] = []
    for s in series.values():
        name = f"{s.label} ({s.unit})" if s.unit else s.label
        per_run = _values(s.ours) + (f" | {_values(s.bare)}" if s.bare else "")
        if s.bare:
            rows.append(
                (
                    name,
                    fmt(median(s.ours)),
                    _pct(spread(s.ours)),
                    fmt(median(s.bare)),
                    _pct(spread(s.bare)),
                    fmt(s.median_ratio),
                    per_run,
                )
            )
        else:
            rows.append((name, fmt(median(s.ours)), _pct(spread(s.ours)), "", "", "", per_run))
    title = (
        f"Median of {runs} run{'s' if runs != 1 else ''}; spread = (max - min) / median; "
        "ours/bare = median of each run's ratio"
    )
    return "\n".join(table(title, header, rows))


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    head = line(header)
    return [title, head, "-" * len(head), *(line(r) for r in rows)]
