"""How late /ui's progress bars move: from a progress event published to the bar changing in Chromium.

    python -m benchmarks.ui_latency                     # 3 jobs x 99 updates, one every 20 ms
    python -m benchmarks.ui_latency --jobs 4 --gap 0.01 --json out.json

Starts its own Redis and PostgreSQL (never the machine's), one API process (`stack run api`, no
worker: the jobs stay pending, so nothing but this benchmark publishes) and a headless Chromium
(Debian's `chromium` and `chromium-driver`, driven by Selenium) on /ui. The page follows each job
on its event stream; a MutationObserver records when each bar's `aria-valuenow` changes
(`performance.timeOrigin + performance.now()`). This process PUBLISHes on `stack:jobs:<id>`
exactly what a worker's `job.progress()` publishes, noting `time.time()` just before. Both are the
machine's wall clock; the report shows how far apart the two clocks read (measured through
WebDriver, the round trip bounding the error). The delay covers Redis, the API's shared
subscription, the HTTP stream, the page's SSE parser and its DOM update; not the paint (one frame).

The helpers (start Chromium, observe bars, publish and match) serve the browser tests too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/ui_latency.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("benchmarks.ui_latency")

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
INSTALL_HINT = "apt-get install -y chromium chromium-driver"

# Records every change of a bar's aria-valuenow: [job id, value, wall-clock ms]. Installed once per
# page; rows added later are covered (the observer watches the whole table).
OBSERVE_BARS_JS = """
if (!window.__bars) {
  window.__bars = [];
  const record = (bar) => {
    const row = bar.closest('tr[data-job-id]');
    if (row) window.__bars.push([row.dataset.jobId, Number(bar.getAttribute('aria-valuenow')),
                                 performance.timeOrigin + performance.now()]);
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) if (m.type === 'attributes') record(m.target);
  }).observe(document.getElementById('jobs'), {subtree: true, attributes: true,
                                               attributeFilter: ['aria-valuenow']});
}
"""


# --- the browser --------------------------------------------------------------------------------------
def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths: STACK_CHROMIUM / STACK_CHROMEDRIVER, else Debian's; None if absent."""
    browser = os.environ.get("STACK_CHROMIUM") or next((p for p in CHROMIUM if Path(p).exists()), None)
    driver = (
        os.environ.get("STACK_CHROMEDRIVER")
        or next((p for p in CHROMEDRIVER if Path(p).exists()), None)
        or shutil.which("chromedriver")
    )
    return (browser, driver) if browser and driver else None


def start_chromium(*, width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium under Selenium, from the machine's own binaries (never a download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError(f"no chromium and chromedriver found: {INSTALL_HINT}")
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI and containers: Chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",  # a container's /dev/shm is often 64 MB
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-timer-throttling",  # timers of a page nobody looks at still run
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def page_errors(driver: Any) -> list[str]:
    """The page's console errors (not its 4xx answers, which the page shows on purpose)."""
    try:
        entries = driver.get_log("browser")
    except Exception:  # a driver without log support
        return []
    return [
        e["message"]
        for e in entries
        if e.get("level") == "SEVERE" and "Failed to load resource" not in e.get("message", "")
    ]


def clock_offset_ms(driver: Any, *, samples: int = 7) -> tuple[float, float]:
    """(page clock minus this process's clock, +/- half the round trip of the best sample), in ms."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        before = time.time()
        page = float(driver.execute_script("return performance.timeOrigin + performance.now()"))
        after = time.time()
        half = (after - before) * 500
        offset = page - (before + after) * 500
        if best is None or half < best[1]:
            best = (offset, half)
    assert best is not None
    return best


def observe_bars(driver: Any) -> None:
    driver.execute_script(OBSERVE_BARS_JS)


def bar_changes(driver: Any) -> list[tuple[str, int, float]]:
    rows = driver.execute_script("return window.__bars || []")
    return [(str(r[0]), int(r[1]), float(r[2])) for r in rows]


def wait_streams_live(driver: Any, job_ids: Iterable[str], *, timeout: float = 30.0) -> None:
    """Until every job's row follows its event stream (the page marks it data-stream=live)."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = driver.execute_script(
            'return arguments[0].map(id => document.querySelector(`tr[data-job-id="${id}"]`)'
            "?.dataset.stream || '')",
            ids,
        )
        if all(s == "live" for s in states):
            return
        time.sleep(0.1)
    raise TimeoutError(f"the page did not open a live stream for every job within {timeout:g} s: {states}")


# --- publishing and matching ------------------------------------------------------------------------
@dataclass
class LatencyRun:
    delays_ms: list[float] = field(default_factory=list)
    published: int = 0
    missed: int = 0  # a published value the bar never showed

    def pct(self, q: float) -> float:
        return percentile(self.delays_ms, q)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def publish_progress(
    redis_client: Any, job_ids: list[str], *, updates: int, gap: float
) -> list[tuple[str, int, float]]:
    """Round r publishes progress r to every job, `gap` s apart; returns (job, value, sent at ms)."""
    from loadtests.stackproc import STACK_PREFIX
    from stack.jobs.events import channel_for

    sent = []
    due = time.monotonic()
    for value in range(1, updates + 1):
        for job_id in job_ids:
            due += gap
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            # The worker's own event (stack.jobs.progress): status, progress, message.
            event = json.dumps(
                {"status": "progress", "progress": value, "message": f"step {value}/{updates}"}
            )
            at = time.time() * 1000
            redis_client.publish(channel_for(job_id, prefix=STACK_PREFIX), event)
            sent.append((job_id, value, at))
    return sent


def match(sent: list[tuple[str, int, float]], changes: list[tuple[str, int, float]]) -> LatencyRun:
    """Each publish's delay: until its job's bar first showed that value."""
    first_seen: dict[tuple[str, int], float] = {}
    for job_id, value, at in changes:
        first_seen.setdefault((job_id, value), at)
    run = LatencyRun(published=len(sent))
    for job_id, value, at in sent:
        seen = first_seen.get((job_id, value))
        if seen is None:
            run.missed += 1
        else:
            run.delays_ms.append(seen - at)
    return run


def measure_page(
    driver: Any, redis_client: Any, job_ids: list[str], *, updates: int = 99, gap: float = 0.02
) -> LatencyRun:
    """On a page already showing `job_ids` with live streams: publish, then match bar changes."""
    observe_bars(driver)
    driver.execute_script("window.__bars.length = 0")
    sent = publish_progress(redis_client, job_ids, updates=updates, gap=gap)
    time.sleep(1.0)  # stragglers
    return match(sent, bar_changes(driver))


# --- the benchmark ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ui_latency", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--jobs", type=int, default=3, help="jobs on the page, published to in turn [3] (at most 4)"
    )
    p.add_argument("--updates", type=int, default=99, help="progress updates per job, 1..N [99]")
    p.add_argument("--gap", type=float, default=0.02, help="seconds between two publishes [0.02]")
    p.add_argument("--out", type=Path, default=Path("loadtests/out/ui_latency"), help="logs of the processes")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    ns = p.parse_args(argv)
    if not 1 <= ns.jobs <= 4:
        raise SystemExit("--jobs must be 1..4: the page streams at most 4 jobs at once")
    if not 1 <= ns.updates <= 100 or ns.gap <= 0:
        raise SystemExit("--updates must be 1..100 and --gap positive")
    return ns


def run(ns: argparse.Namespace) -> tuple[LatencyRun, tuple[float, float]]:
    import httpx
    import redis

    from loadtests import servers, stackproc

    with servers.local_servers() as srv:
        redis_url = srv.redis_db()
        env = stackproc.StackEnv(
            redis_url=redis_url,
            database_url=servers.as_role(srv.new_database("bench_ui"), servers.API_ROLE),
            data_dir=ns.out / "data",
            web_concurrency=1,
            extra={"STACK_AUTH": "none", "STACK_SSE_MAX_SECONDS": "3600"},  # 127.0.0.1 only
        )
        port = stackproc.free_port()
        base = f"http://127.0.0.1:{port}"
        with stackproc.running(lambda: stackproc.start_api(env, port=port, log_dir=ns.out)):
            with httpx.Client(base_url=base, timeout=10) as http:
                job_ids = [
                    http.post("/api/jobs/demo", json={"seconds": 0, "steps": 1}).json()["task_id"]
                    for _ in range(ns.jobs)
                ]
            driver = start_chromium()
            try:
                driver.get(f"{base}/ui")
                wait_streams_live(driver, job_ids)
                offset = clock_offset_ms(driver)
                result = measure_page(
                    driver, redis.Redis.from_url(redis_url), job_ids, updates=ns.updates, gap=ns.gap
                )
                errors = page_errors(driver)
                if errors:
                    log.warning("the page logged errors: %s", errors)
            finally:
                driver.quit()
    return result, offset


def render(result: LatencyRun, offset: tuple[float, float], ns: argparse.Namespace) -> str:
    d = result.delays_ms
    verdict = "pass" if d and result.pct(99) < 100 and not result.missed else "MISS"
    return "\n".join(
        [
            f"/ui progress bars: {result.published} progress events ({ns.jobs} jobs x {ns.updates}, "
            f"one every {ns.gap * 1000:g} ms), PUBLISH -> aria-valuenow changed in headless Chromium",
            f"  shown: {len(d)}   never shown: {result.missed}",
            f"  delay ms: p50 {result.pct(50):.1f}   p90 {result.pct(90):.1f}   p99 {result.pct(99):.1f}   "
            f"max {max(d, default=float('nan')):.1f}   min {min(d, default=float('nan')):.1f}",
            f"  page clock - python clock: {offset[0]:+.2f} ms "
            f"(+/- {offset[1]:.2f} ms, WebDriver round trip)",
            f"  {verdict}  p99 under 100 ms",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result, offset = run(ns)
    except Exception as exc:  # servers, processes, browser: one line, as the other benchmarks do
        print(f"benchmarks.ui_latency: error: {exc}", file=sys.stderr)
        return 1
    print(render(result, offset, ns))
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {
            "events": result.published,
            "shown": len(result.delays_ms),
            "missed": result.missed,
            "p50_ms": result.pct(50),
            "p99_ms": result.pct(99),
            "max_ms": max(result.delays_ms, default=None),
            "clock_offset_ms": offset[0],
        }
        ns.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
