"""The comparison as a PNG: submit latency and throughput of both modes, and requests/s over time."""

from __future__ import annotations

from pathlib import Path

from loadtests.locustcsv import HistoryPoint
from loadtests.report import Comparison

COLOURS = {"async": "#2a7ab0", "inline": "#d9822b"}


def write_chart(c: Comparison, path: Path, *, history: dict[str, list[HistoryPoint]] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    modes = [("async", c.async_), ("inline", c.inline)]
    panels = 3 if history else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2))

    ax = axes[0]
    labels = ["p50", "p95", "p99"]
    width = 0.38
    for offset, (name, result) in enumerate(modes):
        values = [result.submit.p50, result.submit.p95, result.submit.p99]
        xs = [i + (offset - 0.5) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name, color=COLOURS[name])
        ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("submit latency (ms, log scale)")
    ax.set_title("POST /api/jobs/demo latency")
    ax.legend()

    ax = axes[1]
    labels = ["submits/s", "all req/s", "completed jobs/s"]
    for offset, (name, result) in enumerate(modes):
        values = [result.submit.rps, result.total.rps, result.completed_per_s]
        xs = [i + (offset - 0.5) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name, color=COLOURS[name])
        ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("per second")
    ax.set_title("Throughput")
    ax.legend()

    if history:
        ax = axes[2]
        for name, points in history.items():
            ax.plot([p.seconds for p in points], [p.rps for p in points], label=name, color=COLOURS.get(name))
        ax.set_xlabel("seconds")
        ax.set_ylabel("requests/s (all)")
        ax.set_title("Requests/s over the run")
        ax.legend()

    s = c.shape
    fig.suptitle(
        f"{c.title}: {s.users} users, W = {s.work_seconds:g} s, {s.duration:g} s per mode", fontsize=11
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"
