"""The benchmark figures, the targets of issue #4 and the printed table. Pure: numbers in, text out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.drain import DrainFigures
from benchmarks.enqueue import EnqueueFigures
from benchmarks.progress import ProgressFigures
from loadtests.report import Check, fmt, ratio

SEQUENTIAL_P50_MS = 3.0
AT_RATE_P50_MS = 10.0
AT_RATE_P99_MS = 50.0
TARGET_RATE = 200.0
PEAK_RATE = 500.0
ENQUEUE_SHARE = 0.60  # of the bare endpoint's peak
DRAIN_SHARE = 0.50  # of bare Celery's no-op rate


@dataclass
class BenchFigures:
    web_concurrency: int
    worker_concurrency: int
    enqueue: tuple[EnqueueFigures, EnqueueFigures] | None = None  # (ours, bare)
    drain: tuple[DrainFigures, DrainFigures] | None = None  # (ours, bare)
    progress: ProgressFigures | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"web_concurrency": self.web_concurrency}
        if self.enqueue:
            for f in self.enqueue:
                out[f"enqueue_{f.name}"] = {
                    label: {
                        "count": r.count,
                        "errors": r.errors,
                        "rate": r.rate,
                        "offered_rate": r.offered_rate,
                        "p50_ms": r.percentile(50) * 1e3,
                        "p99_ms": r.percentile(99) * 1e3,
                    }
                    for label, r in (("sequential", f.sequential), ("at_rate", f.at_rate), ("peak", f.peak))
                }
        if self.drain:
            for d in self.drain:
                out[f"drain_{d.name}"] = {
                    "jobs": d.jobs,
                    "seconds": d.seconds,
                    "rate": d.rate,
                    "failed": d.failed,
                }
        if self.progress:
            p = self.progress
            out["progress"] = {
                "write_p50_ms": p.write_p50 * 1e3,
                "write_p99_ms": p.write_p99 * 1e3,
                "throttled_p50_us": p.throttled_p50 * 1e6,
                "writes_with_default_throttle": p.writes_with_default_throttle,
                "calls": p.calls,
            }
        return out


def targets(f: BenchFigures) -> list[Check]:
    checks: list[Check] = []
    if f.enqueue:
        ours, bare = f.enqueue
        offered = ours.at_rate.offered_rate or float("nan")
        checks += [
            Check(
                "enqueue p50, one request at a time",
                ours.sequential.percentile(50) * 1e3,
                "<=",
                SEQUENTIAL_P50_MS,
                "ms",
            ),
            Check(
                f"enqueue p50 at {fmt(offered)}/s offered",
                ours.at_rate.percentile(50) * 1e3,
                "<=",
                AT_RATE_P50_MS,
                "ms",
            ),
            Check(
                f"enqueue p99 at {fmt(offered)}/s offered",
                ours.at_rate.percentile(99) * 1e3,
                "<=",
                AT_RATE_P99_MS,
                "ms",
            ),
            Check(f"enqueue peak, {f.web_concurrency} API workers", ours.peak.rate, ">=", PEAK_RATE, "req/s"),
            Check(
                "enqueue peak, ours / bare apply_async",
                100 * ratio(ours.peak.rate, bare.peak.rate),
                ">=",
                100 * ENQUEUE_SHARE,
                "%",
            ),
        ]
    if f.drain:
        ours_drain, bare_drain = f.drain
        checks.append(
            Check(
                "drain, ours / bare Celery no-op",
                100 * ratio(ours_drain.rate, bare_drain.rate),
                ">=",
                100 * DRAIN_SHARE,
                "%",
            )
        )
    return checks


def _table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [title, line, "-" * len(line)]
    for row in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return out


def _ms(seconds: float) -> str:
    return fmt(seconds * 1e3)


def render(f: BenchFigures) -> str:
    lines: list[str] = []
    if f.enqueue:
        ours, bare = f.enqueue
        rows: list[tuple[str, ...]] = []
        for label, o, b in (
            ("one at a time", ours.sequential, bare.sequential),
            (f"offered {fmt(ours.at_rate.offered_rate or 0)}/s", ours.at_rate, bare.at_rate),
            ("peak (closed loop)", ours.peak, bare.peak),
        ):
            rows += [
                (f"{label}: req/s", fmt(o.rate), fmt(b.rate), fmt(ratio(o.rate, b.rate))),
                (
                    f"{label}: p50 ms",
                    _ms(o.percentile(50)),
                    _ms(b.percentile(50)),
                    fmt(ratio(o.percentile(50), b.percentile(50))),
                ),
                (
                    f"{label}: p99 ms",
                    _ms(o.percentile(99)),
                    _ms(b.percentile(99)),
                    fmt(ratio(o.percentile(99), b.percentile(99))),
                ),
                (f"{label}: errors", str(o.error_count), str(b.error_count), ""),
            ]
        lines += _table(
            f"Enqueue: POST /api/jobs/demo vs bare apply_async endpoint ({f.web_concurrency} API workers)",
            ("", "ours", "bare", "ours/bare"),
            rows,
        )
        lines.append("")
    if f.drain:
        ours_d, bare_d = f.drain
        lines += _table(
            f"Drain: {ours_d.jobs} demo jobs (0 s of work) vs {bare_d.jobs} Celery no-ops "
            f"({f.worker_concurrency} worker slots)",
            ("", "ours", "bare", "ours/bare"),
            [
                ("jobs/s", fmt(ours_d.rate), fmt(bare_d.rate), fmt(ratio(ours_d.rate, bare_d.rate))),
                (
                    "seconds",
                    fmt(ours_d.seconds),
                    fmt(bare_d.seconds),
                    fmt(ratio(ours_d.seconds, bare_d.seconds)),
                ),
                ("failed", str(ours_d.failed), str(bare_d.failed), ""),
            ],
        )
        lines.append("")
    if f.progress:
        p = f.progress
        lines += _table(
            f"progress(): {p.calls} calls inside a claimed job",
            ("", "value"),
            [
                ("a call that writes (throttle off): p50 ms", _ms(p.write_p50)),
                ("a call that writes (throttle off): p99 ms", _ms(p.write_p99)),
                ("a call the default throttle swallows: p50 us", fmt(p.throttled_p50 * 1e6)),
                (
                    f"writes of {p.calls} calls in a tight loop, default throttle",
                    str(p.writes_with_default_throttle),
                ),
            ],
        )
        lines.append("")
    checks = targets(f)
    if checks:
        lines.append("Targets (issue #4)")
        lines += [f"  {c.verdict:4}  {c.describe()}" for c in checks]
    return "\n".join(lines)
