"""The async-vs-inline report: ratios, targets, the seeds' claims, Markdown. Pure: numbers in, text out.

The seeds (the write-ups this project started from) claim, for jobs of W = 25 s of work:
API latency 25 s -> 0.1 s (250x), throughput from 5-10 concurrent requests to 100+ req/s
(10-20x), and database connection use from 80-100% of the pool to 20-30%. We measure at a
smaller W and carry the measured figures over to W = 25 s, never assuming them:

- async submit latency does not depend on W (the API only writes a row and publishes), so it
  carries over as measured; inline latency is the measured one with W swapped: p50 - W + 25 s;
- inline throughput follows Little's law: the measured concurrency (req/s x mean latency) over
  the W = 25 s latency; async submit throughput carries over as measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loadtests.locustcsv import EndpointStats, Failure

SEEDS_WORK_SECONDS = 25.0
LATENCY_RATIO_TARGET = 200.0  # issue #4, at the measured W
THROUGHPUT_RATIO_TARGET = 10.0


def ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip() if unit else text


def times(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{fmt(value)}x"


@dataclass(frozen=True)
class Check:
    """A measured figure against a bound: `measured op bound`."""

    label: str
    measured: float
    op: str
    bound: float
    unit: str = ""

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"op must be <= or >=, got {self.op!r}")

    @property
    def passed(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured <= self.bound if self.op == "<=" else self.measured >= self.bound

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "MISS"

    def describe(self) -> str:
        return (
            f"{self.label}: {fmt(self.measured, self.unit)} "
            f"(target {self.op} {fmt(self.bound, self.unit)}) {self.verdict}"
        )


@dataclass(frozen=True)
class DbUse:
    """Peak connections of one role against the pool capacity of its processes."""

    peak_in_use: int
    peak_open: int
    capacity: int

    @property
    def in_use_pct(self) -> float:
        return 100.0 * ratio(self.peak_in_use, self.capacity)

    @property
    def open_pct(self) -> float:
        return 100.0 * ratio(self.peak_open, self.capacity)


@dataclass(frozen=True)
class ModeResult:
    mode: str  # "async" or "inline"
    submit: EndpointStats
    total: EndpointStats
    duration: float  # seconds of load
    completed_jobs: int  # jobs that succeeded during the load (from the database)
    api_db: DbUse
    end_to_end: EndpointStats | None = None
    worker_db: DbUse | None = None
    backlog: int = 0  # jobs not finished when the load stopped
    failures: list[Failure] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # by process tree, during the load
    wall_seconds: float = math.nan  # of the locust run, ramp-up and stop included

    @property
    def completed_per_s(self) -> float:
        return ratio(self.completed_jobs, self.duration)

    @property
    def concurrency(self) -> float:
        """Requests in flight on average (Little's law): submit req/s x mean submit latency."""
        return self.submit.rps * self.submit.average / 1000.0


@dataclass(frozen=True)
class LoadShape:
    users: int
    spawn_rate: float
    duration: float
    work_seconds: float
    steps: int
    submit_rate: float  # per user; 0 = closed loop
    web_concurrency: int
    worker_concurrency: int
    worker_pool: str

    @property
    def worker_ceiling(self) -> float:
        """Jobs/s the async workers can finish at most: slots over the work per job."""
        return ratio(self.worker_concurrency, self.work_seconds)


@dataclass(frozen=True)
class Comparison:
    shape: LoadShape
    async_: ModeResult
    inline: ModeResult
    title: str = "Async vs inline"
    machine: str = ""  # how busy the machine was before the run (loadtests.machine)


# --- figures carried over to the seeds' W -----------------------------------------------------
def inline_latency_at(result: ModeResult, *, work: float, target_work: float) -> float:
    """Inline p50 submit latency (ms) with the job's work changed from `work` to `target_work` s."""
    return result.submit.p50 + (target_work - work) * 1000.0


def inline_rps_at(result: ModeResult, *, work: float, target_work: float) -> float:
    latency_s = result.submit.average / 1000.0 + (target_work - work)
    return ratio(result.concurrency, latency_s)


@dataclass(frozen=True)
class Claim:
    name: str
    claimed: str
    measured: str
    holds: bool
    checks: tuple[Check, ...]


def latency_ratio(c: Comparison) -> float:
    return ratio(c.inline.submit.p50, c.async_.submit.p50)


def throughput_ratio(c: Comparison) -> float:
    return ratio(c.async_.submit.rps, c.inline.submit.rps)


def targets(c: Comparison) -> list[Check]:
    w = fmt(c.shape.work_seconds)
    return [
        Check(
            f"submit latency p50, inline/async at W = {w} s",
            latency_ratio(c),
            ">=",
            LATENCY_RATIO_TARGET,
            "x",
        ),
        Check(
            f"submit throughput, async/inline at W = {w} s",
            throughput_ratio(c),
            ">=",
            THROUGHPUT_RATIO_TARGET,
            "x",
        ),
    ]


def claims(c: Comparison) -> list[Claim]:
    w, seeds = c.shape.work_seconds, SEEDS_WORK_SECONDS
    inline_latency = inline_latency_at(c.inline, work=w, target_work=seeds)
    latency_gain = ratio(inline_latency, c.async_.submit.p50)
    latency_checks = (
        Check("async submit p50", c.async_.submit.p50, "<=", 100.0, "ms"),
        Check(f"inline/async p50 at W = {fmt(seeds)} s", latency_gain, ">=", 250.0, "x"),
    )
    inline_rps = inline_rps_at(c.inline, work=w, target_work=seeds)
    rps_gain = ratio(c.async_.submit.rps, inline_rps)
    throughput_checks = (
        Check("async submits/s", c.async_.submit.rps, ">=", 100.0, "req/s"),
        Check(f"async/inline req/s at W = {fmt(seeds)} s", rps_gain, ">=", 10.0, "x"),
    )
    db_checks = (
        Check("inline peak API connections in use", c.inline.api_db.in_use_pct, ">=", 80.0, "%"),
        Check("async peak API connections in use", c.async_.api_db.in_use_pct, "<=", 30.0, "%"),
    )
    return [
        Claim(
            "API latency",
            "25 s -> 0.1 s (250x)",
            f"{fmt(inline_latency / 1000, 's')} -> {fmt(c.async_.submit.p50, 'ms')} ({times(latency_gain)})",
            all(ch.passed for ch in latency_checks),
            latency_checks,
        ),
        Claim(
            "Throughput",
            "5-10 concurrent -> 100+ req/s (10-20x)",
            f"{fmt(c.inline.concurrency)} concurrent = {fmt(inline_rps)} req/s -> "
            f"{fmt(c.async_.submit.rps)} req/s ({times(rps_gain)})",
            all(ch.passed for ch in throughput_checks),
            throughput_checks,
        ),
        Claim(
            "DB connection use",
            "80-100% -> 20-30% of the pool",
            f"{fmt(c.inline.api_db.in_use_pct)}% -> {fmt(c.async_.api_db.in_use_pct)}%",
            all(ch.passed for ch in db_checks),
            db_checks,
        ),
    ]


# --- Markdown -----------------------------------------------------------------------------------
def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _gain(async_value: float, inline_value: float, *, lower_is_better: bool) -> str:
    r = ratio(async_value, inline_value)
    if math.isnan(r) or r == 0:
        return "n/a"
    if lower_is_better:
        return f"{times(1 / r)} lower" if r < 1 else f"{times(r)} higher (worse)"
    return f"{times(r)} higher" if r >= 1 else f"{times(1 / r)} lower (worse)"


def _metric_rows(c: Comparison) -> list[str]:
    a, i = c.async_, c.inline
    rows: list[tuple[str, float, float, bool | None]] = [
        ("submit latency p50 (ms)", a.submit.p50, i.submit.p50, True),
        ("submit latency p95 (ms)", a.submit.p95, i.submit.p95, True),
        ("submit latency p99 (ms)", a.submit.p99, i.submit.p99, True),
        ("submits/s", a.submit.rps, i.submit.rps, False),
        ("all requests/s (incl. status reads)", a.total.rps, i.total.rps, False),
        ("completed jobs/s", a.completed_per_s, i.completed_per_s, False),
        ("failures (all entries)", float(a.total.failures), float(i.total.failures), True),
        ("peak API DB connections in use", float(a.api_db.peak_in_use), float(i.api_db.peak_in_use), True),
        ("  ... % of the API pools", a.api_db.in_use_pct, i.api_db.in_use_pct, True),
        ("peak API DB connections open", float(a.api_db.peak_open), float(i.api_db.peak_open), True),
    ]
    if a.end_to_end is not None and i.end_to_end is not None:
        rows.append(("end-to-end p50 (ms)", a.end_to_end.p50, i.end_to_end.p50, True))
    lines = [
        _row("metric", "async", "inline", "async/inline", "async is"),
        _row("---", "---:", "---:", "---:", "---"),
    ]
    for label, av, iv, lower in rows:
        gain = "" if lower is None else _gain(av, iv, lower_is_better=lower)
        lines.append(_row(label, fmt(av), fmt(iv), fmt(ratio(av, iv)), gain))
    return lines


def _failure_lines(result: ModeResult, limit: int = 5) -> list[str]:
    if not result.failures:
        return [f"- {result.mode}: none"]
    top = sorted(result.failures, key=lambda f: -f.occurrences)[:limit]
    return [f"- {result.mode}: {f.occurrences} x `{f.method} {f.name}`: {f.error[:160]}" for f in top]


def _cpu_lines(c: Comparison) -> list[str]:
    names = list(dict.fromkeys([*c.async_.cpu_seconds, *c.inline.cpu_seconds]))
    if not names:
        return []
    lines = [
        "## Where the CPU went during the load",
        "",
        _row("process tree", "async (CPU s)", "inline (CPU s)"),
        _row("---", "---:", "---:"),
    ]
    for name in names:
        cells = [fmt(r.cpu_seconds[name]) if name in r.cpu_seconds else "-" for r in (c.async_, c.inline)]
        lines.append(_row(name, *cells))
    totals = [sum(r.cpu_seconds.values()) for r in (c.async_, c.inline)]
    lines.append(_row("**total**", *(fmt(v) for v in totals)))
    cores = [ratio(total, r.wall_seconds) for total, r in zip(totals, (c.async_, c.inline), strict=True)]
    lines.append(_row("cores busy on average", *(fmt(v) for v in cores)))
    return [*lines, ""]


def render_markdown(c: Comparison, *, files: list[str] | None = None) -> str:
    s = c.shape
    pacing = f"{fmt(s.submit_rate)} submits/s per user" if s.submit_rate else "back to back"
    lines = [
        f"# {c.title}",
        "",
        f"Same load on both modes: {s.users} users (spawn {fmt(s.spawn_rate)}/s), {fmt(s.duration)} s, "
        f"{pacing}; `demo` jobs of W = {fmt(s.work_seconds)} s in {s.steps} progress steps; "
        f"{s.web_concurrency} API workers; async workers: {s.worker_pool} pool x {s.worker_concurrency}.",
        *(["", f"Machine: {c.machine}."] if c.machine else []),
        "",
        "## Results",
        "",
        *_metric_rows(c),
        "",
        "## Targets (issue #4)",
        "",
        *[f"- {check.describe()}" for check in targets(c)],
        "",
        f"## The seeds' claims, carried over to their W = {fmt(SEEDS_WORK_SECONDS)} s",
        "",
        _row("claim", "claimed", "measured", "holds"),
        _row("---", "---", "---", "---"),
    ]
    for claim in claims(c):
        lines.append(_row(claim.name, claim.claimed, claim.measured, "yes" if claim.holds else "**no**"))
    lines += ["", "Checks behind each verdict:", ""]
    for claim in claims(c):
        lines += [f"- {claim.name}: " + "; ".join(ch.describe() for ch in claim.checks)]
    lines += [
        "",
        *_cpu_lines(c),
        "## Failures",
        "",
        *_failure_lines(c.async_),
        *_failure_lines(c.inline),
        "",
        "## Reading these figures",
        "",
        f"- Async submits answer once the row is written and the message published; the work runs "
        f"on the workers, which finish at most {fmt(s.worker_ceiling)} jobs/s here "
        f"({s.worker_concurrency} slots / {fmt(s.work_seconds)} s). "
        f"{c.async_.backlog} async jobs were still queued or running when the "
        "load stopped: async moves the wait off the request, it does not make the work faster.",
        f"- Inline requests hold an API thread for the whole job, so inline throughput is about the "
        f"concurrency over W ({fmt(c.inline.concurrency)} in flight / {fmt(s.work_seconds)} s).",
        "- Connections in use are sampled from `pg_stat_activity` every 100 ms (API and workers log in "
        "as different roles); bursts shorter than that can be missed, so they are a lower bound. The "
        "stack's inline mode does not hold a connection while the handler runs, only for each write.",
        "- Async submit latency and throughput carry over to W = 25 s unchanged; the inline figures are "
        "carried over from the measured ones (see the module docstring of `loadtests/report.py`).",
    ]
    if c.async_.worker_db is not None:
        wdb = c.async_.worker_db
        lines.append(
            f"- Async workers' connections: peak {wdb.peak_in_use} in use, {wdb.peak_open} open, "
            f"of {wdb.capacity} in their pools."
        )
    if files:
        lines += ["", "## Files", "", *[f"- `{name}`" for name in files]]
    return "\n".join(lines) + "\n"
