"""The pure parts of loadtests/ and benchmarks/: option parsing, pacing, CSV reading, ratios,
claims and report rendering. No servers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.httpload import LoadResult, percentile
from loadtests import locustcsv, options
from loadtests.locustcsv import EndpointStats, Failure
from loadtests.report import (
    Check,
    Comparison,
    DbUse,
    LoadShape,
    ModeResult,
    claims,
    fmt,
    inline_latency_at,
    inline_rps_at,
    latency_ratio,
    ratio,
    render_markdown,
    targets,
    throughput_ratio,
)


# --- options ----------------------------------------------------------------------------------
def test_defaults_when_nothing_is_set() -> None:
    got = options.from_env({})
    assert got == options.LoadOptions()
    assert got.params == {"seconds": 1, "steps": 10}


def test_environment_variables_are_read() -> None:
    got = options.from_env(
        {
            "LOADTEST_KIND": "write_log",
            "LOADTEST_PARAMS": '{"event": "x"}',
            "LOADTEST_JOB_TIMEOUT": "5",
            "LOADTEST_POLL_INTERVAL": "0.1",
            "LOADTEST_SUBMIT_RATE": "2.5",
            "LOADTEST_TRACK": "Background",
            "LOADTEST_MAX_TRACKED": "3",
        }
    )
    assert got == options.LoadOptions(
        kind="write_log",
        params={"event": "x"},
        job_timeout=5.0,
        poll_interval=0.1,
        submit_rate=2.5,
        track="background",
        max_tracked=3,
    )


def test_locust_dests_match_the_flags() -> None:
    got = options.from_mapping({"job_kind": "demo", "submit_rate": "4", "track": "none", "unrelated": 1})
    assert (got.kind, got.submit_rate, got.track) == ("demo", 4.0, "none")


def test_as_args_round_trips_through_the_parser() -> None:
    original = options.LoadOptions(
        kind="demo", params={"seconds": 2, "steps": 5}, job_timeout=90, submit_rate=8, track="background"
    )
    args = original.as_args()
    mapping = {
        flag.lstrip("-").replace("-", "_"): value for flag, value in zip(args[::2], args[1::2], strict=True)
    }
    assert options.from_mapping(mapping) == original


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"job_params": "[1, 2]"}, "must be a JSON object"),
        ({"job_params": "{nope"}, "not valid JSON"),
        ({"job_timeout": "0"}, "--job-timeout / LOADTEST_JOB_TIMEOUT must be > 0"),
        ({"poll_interval": "soon"}, "must be a number"),
        ({"submit_rate": "-1"}, "must be >= 0"),
        ({"submit_rate": "nan"}, "must be >= 0"),
        ({"track": "sometimes"}, "must be one of wait, background, none"),
        ({"max_tracked": "0"}, "must be >= 1"),
        ({"max_tracked": "1.5"}, "whole number"),
        ({"job_kind": "a/b"}, "must be a job kind name"),
    ],
)
def test_bad_values_name_the_flag_and_the_variable(values: dict[str, str], message: str) -> None:
    with pytest.raises(options.OptionError, match=message.replace("[", r"\[")):
        options.from_mapping(values)


def test_empty_params_mean_an_empty_object() -> None:
    assert options.parse_params("  ") == {}


# --- pacing -----------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_spaces_submits_start_to_start() -> None:
    clock = FakeClock()
    pacer = options.Pacer(4, clock=clock)  # every 0.25 s
    clock.now += 0.05  # the submit took 50 ms
    assert pacer.wait() == pytest.approx(0.20)
    clock.now += 0.20 + 0.10
    assert pacer.wait() == pytest.approx(0.15)


def test_pacer_does_not_burst_after_a_slow_submit() -> None:
    clock = FakeClock()
    pacer = options.Pacer(4, clock=clock)
    clock.now += 2.0  # a 2 s inline submit
    assert pacer.wait() == 0.0
    clock.now += 0.01
    assert pacer.wait() == pytest.approx(0.24)  # back on a 0.25 s schedule, no catch-up burst


def test_pacer_without_rate_never_waits() -> None:
    assert options.Pacer(0).wait() == 0.0


# --- locust CSVs --------------------------------------------------------------------------------
STATS_CSV = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,\
95%,98%,99%,99.9%,99.99%,100%
POST,POST /api/jobs/demo,1200,2,4,5.5,1,90,230,40.1,0.07,4,5,5,6,8,12,20,30,80,90,90
JOB,demo end-to-end,0,0,0,0.0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
,Aggregated,1500,2,4,6.0,1,90,200,50.0,0.07,4,5,6,6,9,14,25,40,80,90,90
"""


def test_read_stats(tmp_path: Path) -> None:
    path = tmp_path / "run_stats.csv"
    path.write_text(STATS_CSV)
    rows = locustcsv.read_stats(path)
    submit = rows["POST /api/jobs/demo"]
    assert (submit.count, submit.failures, submit.ok) == (1200, 2, 1198)
    assert (submit.p50, submit.p95, submit.p99, submit.rps) == (4, 12, 30, 40.1)
    assert math.isnan(rows["demo end-to-end"].p50)
    assert rows[locustcsv.AGGREGATED].count == 1500


def test_read_failures_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "run_failures.csv"
    path.write_text(
        "Method,Name,Error,Occurrences\nJOB,demo end-to-end,\"JobFailed('job ended failure')\",3\n"
    )
    assert locustcsv.read_failures(path) == [
        Failure("JOB", "demo end-to-end", "JobFailed('job ended failure')", 3)
    ]
    assert locustcsv.read_failures(tmp_path / "absent.csv") == []
    assert locustcsv.read_history(tmp_path / "absent.csv") == []


def test_read_history_keeps_one_entry_relative_to_the_start(tmp_path: Path) -> None:
    path = tmp_path / "run_stats_history.csv"
    path.write_text(
        "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%\n"
        "1000,5,,Aggregated,10.0,0,4\n"
        "1000,5,POST,POST /api/jobs/demo,9.0,0,4\n"
        "1002,10,,Aggregated,20.0,0,N/A\n"
    )
    points = locustcsv.read_history(path)
    assert [(p.seconds, p.users, p.rps) for p in points] == [(0, 5, 10.0), (2, 10, 20.0)]
    assert math.isnan(points[1].p50)


# --- report -------------------------------------------------------------------------------------
def stats(
    name: str, *, p50: float, p95: float, p99: float, rps: float, average: float, failures: int = 0
) -> EndpointStats:
    return EndpointStats("POST", name, 1000, failures, p50, p95, p99, average, p99 * 2, rps)


def comparison(
    *, async_p50: float = 5.0, async_rps: float = 120.0, inline_p50: float = 2000.0, inline_rps: float = 10.0
) -> Comparison:
    shape = LoadShape(
        users=20,
        spawn_rate=10,
        duration=40,
        work_seconds=2.0,
        steps=10,
        submit_rate=6,
        web_concurrency=2,
        worker_concurrency=16,
        worker_pool="threads",
    )
    async_ = ModeResult(
        mode="async",
        submit=stats("POST /api/jobs/demo", p50=async_p50, p95=20, p99=40, rps=async_rps, average=8),
        total=stats("Aggregated", p50=5, p95=20, p99=40, rps=150, average=8),
        duration=40,
        completed_jobs=320,
        api_db=DbUse(peak_in_use=3, peak_open=12, capacity=30),
        worker_db=DbUse(peak_in_use=4, peak_open=10, capacity=15),
        backlog=4000,
        cpu_seconds={"api": 30.0, "workers": 10.0, "locust": 8.0, "postgres": 12.0},
        wall_seconds=40.0,
    )
    inline = ModeResult(
        mode="inline",
        submit=stats("POST /api/jobs/demo", p50=inline_p50, p95=2100, p99=2200, rps=inline_rps, average=2010),
        total=stats("Aggregated", p50=2000, p95=2100, p99=2200, rps=inline_rps, average=2010),
        duration=40,
        completed_jobs=400,
        api_db=DbUse(peak_in_use=27, peak_open=30, capacity=30),
        failures=[Failure("POST", "POST /api/jobs/demo", "HTTP 503", 2)],
        cpu_seconds={"api": 4.0, "locust": 1.0, "postgres": 1.0},
        wall_seconds=40.0,
    )
    return Comparison(shape=shape, async_=async_, inline=inline, machine="2 cores, 3% busy before the start")


def test_ratio_and_fmt_handle_zero_and_nan() -> None:
    assert ratio(1, 0) != ratio(1, 0)  # NaN
    assert math.isnan(ratio(math.nan, 2))
    assert fmt(math.nan) == "n/a"
    assert fmt(2000.0, "ms") == "2,000 ms"
    assert fmt(12.34) == "12.3"
    assert fmt(0.0042) == "0.0042"


def test_check_verdicts() -> None:
    assert Check("x", 3.0, "<=", 3.0).passed
    assert not Check("x", 3.1, "<=", 3.0).passed
    assert Check("x", 10.0, ">=", 10.0, "x").describe() == "x: 10 x (target >= 10 x) pass"
    assert not Check("x", math.nan, ">=", 1.0).passed
    with pytest.raises(ValueError, match="op must be"):
        Check("x", 1.0, "<", 2.0)


def test_ratios_and_targets_at_the_measured_work() -> None:
    c = comparison()
    assert latency_ratio(c) == pytest.approx(400)
    assert throughput_ratio(c) == pytest.approx(12)
    assert [t.passed for t in targets(c)] == [True, True]
    slow = comparison(async_p50=20.0, async_rps=90.0)
    assert [t.passed for t in targets(slow)] == [False, False]


def test_inline_figures_carry_over_to_the_seeds_work() -> None:
    c = comparison()
    assert inline_latency_at(c.inline, work=2.0, target_work=25.0) == pytest.approx(25000)
    # Little's law: 10 req/s x 2.01 s = 20.1 in flight, over a 25.01 s request.
    assert c.inline.concurrency == pytest.approx(20.1)
    assert inline_rps_at(c.inline, work=2.0, target_work=25.0) == pytest.approx(20.1 / 25.01)


def test_claims_are_judged_on_measured_figures() -> None:
    latency, throughput, db = claims(comparison())
    assert latency.holds  # 25 s / 5 ms = 5000x, async p50 <= 100 ms
    assert latency.measured == "25 s -> 5 ms (5,000x)"
    assert throughput.holds
    assert db.holds  # 90% -> 10%
    assert db.measured == "90% -> 10%"

    slow_latency, _, _ = claims(comparison(async_p50=150.0))
    assert not slow_latency.holds
    assert [ch.passed for ch in slow_latency.checks] == [False, False]  # 150 ms, and 25 s / 150 ms < 250x


def test_db_claim_fails_when_inline_does_not_exhaust_the_pool() -> None:
    c = comparison()
    relaxed = ModeResult(**{**c.inline.__dict__, "api_db": DbUse(peak_in_use=3, peak_open=10, capacity=30)})
    _, _, db = claims(Comparison(shape=c.shape, async_=c.async_, inline=relaxed))
    assert not db.holds


def test_markdown_report_has_every_section_and_figure() -> None:
    text = render_markdown(comparison(), files=["async_stats.csv", "comparison.png"])
    for expected in (
        "# Async vs inline",
        "20 users (spawn 10/s), 40 s, 6 submits/s per user",
        "| submit latency p50 (ms) | 5 | 2,000 | 0.0025 | 400x lower |",
        "| submits/s | 120 | 10 | 12 | 12x higher |",
        "| completed jobs/s | 8 | 10 | 0.80 | 1.25x lower (worse) |",
        "## Targets (issue #4)",
        "submit latency p50, inline/async at W = 2 s: 400 x (target >= 200 x) pass",
        "| API latency | 25 s -> 0.1 s (250x) |",
        "| DB connection use | 80-100% -> 20-30% of the pool | 90% -> 10% | yes |",
        "- inline: 2 x `POST POST /api/jobs/demo`: HTTP 503",
        "- async: none",
        "4000 async jobs were still queued",
        "peak 4 in use, 10 open, of 15",
        "- `comparison.png`",
        "Machine: 2 cores, 3% busy before the start.",
        "| workers | 10 | - |",
        "| **total** | 60 | 6 |",
        "| cores busy on average | 1.50 | 0.15 |",
    ):
        assert expected in text, expected


def test_markdown_marks_claims_that_do_not_hold() -> None:
    text = render_markdown(comparison(async_p50=150.0))
    assert "| API latency | 25 s -> 0.1 s (250x) | 25 s -> 150 ms (167x) | **no** |" in text


# --- benchmark helpers --------------------------------------------------------------------------
def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_load_result_rate_and_errors() -> None:
    result = LoadResult(latencies=[0.001] * 50, elapsed=0.5)
    result.error("HTTP 500")
    result.error("HTTP 500")
    assert result.rate == 100
    assert result.error_count == 2
    assert LoadResult().rate == 0.0


def test_machine_state_warns_when_others_use_the_cpu() -> None:
    from loadtests.machine import MachineState

    quiet = MachineState(cores=2, busy=0.03, load_average=0.2)
    busy = MachineState(cores=2, busy=0.55, load_average=3.1)
    assert (
        quiet.quiet and quiet.describe() == "2 cores, 3% busy before the start (1-minute load average 0.20)"
    )
    assert not busy.quiet and "figures are pessimistic" in busy.describe()
