"""What one benchmark run measured, and the scalar figures (ours, bare) the runs are summed up by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.drain import DrainFigures
from benchmarks.enqueue import EnqueueFigures
from benchmarks.progress import ProgressFigures
from benchmarks.roundtrip import RoundtripFigures
from loadtests.report import fmt


@dataclass
class BenchFigures:
    """One run's parts; each pair is (ours, bare)."""

    web_concurrency: int
    worker_concurrency: int
    enqueue: tuple[EnqueueFigures, EnqueueFigures] | None = None
    drain: tuple[DrainFigures, DrainFigures] | None = None
    progress: ProgressFigures | None = None
    roundtrip: tuple[RoundtripFigures, RoundtripFigures] | None = None

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
                out[f"enqueue_{f.name}"]["peak"]["cpu_us_per_submit"] = f.peak_cpu
        if self.drain:
            for d in self.drain:
                out[f"drain_{d.name}"] = {
                    "jobs": d.jobs,
                    "seconds": d.seconds,
                    "rate": d.rate,
                    "failed": d.failed,
                    "cpu_us_per_job": d.cpu,
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
        if self.roundtrip:
            for r in self.roundtrip:
                out[f"roundtrip_{r.name}"] = {
                    "jobs": len(r.latencies),
                    "p50_ms": r.percentile(50) * 1e3,
                    "p90_ms": r.percentile(90) * 1e3,
                    "p99_ms": r.percentile(99) * 1e3,
                    "polls_per_job": r.polls_per_job,
                }
        return out


@dataclass(frozen=True)
class Scalar:
    """One figure of one run: ours, and bare's where there is a bare counterpart."""

    key: str
    label: str
    unit: str
    ours: float
    bare: float | None = None


def scalars(f: BenchFigures) -> list[Scalar]:
    """The figures a run is summarised by, in the order they are printed."""
    out: list[Scalar] = []
    if f.enqueue:
        ours, bare = f.enqueue
        offered = fmt(ours.at_rate.offered_rate or 0)
        for key, label, o, b in (
            ("sequential", "submit one at a time", ours.sequential, bare.sequential),
            ("at_rate", f"submit, {offered}/s offered", ours.at_rate, bare.at_rate),
            ("peak", f"submit peak, {f.web_concurrency} API workers", ours.peak, bare.peak),
        ):
            if key == "peak":  # the closed loop's point is its rate; its latencies follow from it
                out.append(Scalar("peak_rate", f"{label}: rate", "req/s", o.rate, b.rate))
                if ours.peak_cpu and bare.peak_cpu:
                    out.append(
                        Scalar(
                            "peak_cpu_us",
                            f"{label}: CPU per submit, all processes",
                            "us",
                            ours.peak_cpu["total"],
                            bare.peak_cpu["total"],
                        )
                    )
                    # Rate times CPU per submit: how much of the machine the peak kept busy. Balanced
                    # workers keep it as busy in every run, however fast the VM runs that minute;
                    # a worker idle beside a saturated one shows here as cores left unused.
                    out.append(
                        Scalar(
                            "peak_cores",
                            f"{label}: cores busy (rate x CPU per submit)",
                            "",
                            o.rate * ours.peak_cpu["total"] / 1e6,
                            b.rate * bare.peak_cpu["total"] / 1e6,
                        )
                    )
            for q in (50, 99):
                out.append(
                    Scalar(
                        f"{key}_p{q}_ms", f"{label}: p{q}", "ms", o.percentile(q) * 1e3, b.percentile(q) * 1e3
                    )
                )
        errors = [sum(r.error_count for r in (e.sequential, e.at_rate, e.peak)) for e in (ours, bare)]
        out.append(Scalar("submit_errors", "submit errors, all loads", "", errors[0], errors[1]))
    if f.drain:
        ours_d, bare_d = f.drain
        out.append(
            Scalar("drain_rate", f"drain {ours_d.jobs} jobs of no work", "jobs/s", ours_d.rate, bare_d.rate)
        )
        if ours_d.cpu and bare_d.cpu:
            out.append(
                Scalar(
                    "drain_cpu_us",
                    "drain: CPU per job, all processes",
                    "us",
                    ours_d.cpu["total"],
                    bare_d.cpu["total"],
                )
            )
    if f.roundtrip:
        ours_r, bare_r = f.roundtrip
        for q in (50, 90, 99):
            out.append(
                Scalar(
                    f"roundtrip_p{q}_ms",
                    f"0→100 of a job of no work: p{q}",
                    "ms",
                    ours_r.percentile(q) * 1e3,
                    bare_r.percentile(q) * 1e3,
                )
            )
    if f.progress:
        p = f.progress
        out.append(Scalar("progress_write_p50_ms", "progress() that writes: p50", "ms", p.write_p50 * 1e3))
        out.append(
            Scalar(
                "progress_throttled_p50_us",
                "progress() the throttle swallows: p50",
                "us",
                p.throttled_p50 * 1e6,
            )
        )
    return out
