"""/ui in a real headless Chromium against the real processes: a bar advancing while the test
watches, a waiting job's hint on its row, the queues panel marking a queue nobody consumes, a job
submitted through the generated form reaching 100%, cancel, a job's picture, the latency from a
progress event to the bar, and the README's screenshot.

The stack asks for a token (STACK_API_TOKENS), so the page works as it must in production, and
its one worker consumes only `default`: `generate_image` (queue `content`) and `write_log`
(`logs`) wait, and say why after STACK_HINT_AFTER = 1 s. A `content` worker joins later, for
the picture. `STACK_UI_SCREENSHOT=docs/ui.png` keeps the screenshot.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`):
skipped without them, a failure when STACK_E2E_REQUIRED=1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.ui_latency import (
    INSTALL_HINT,
    clock_offset_ms,
    find_chromium,
    measure_page,
    page_errors,
    start_chromium,
    wait_streams_live,
)
from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack
from stack.testing.services.base import wait_for as poll
from tests.e2e.conftest import E2E_ENV, write_procfile

pytestmark = pytest.mark.e2e

TOKEN = "ui-e2e-token-4f1c9a7d2b8e6035"
PROCFILE = """\
web: stack run api
worker: STACK_WORKER_QUEUES=default STACK_WORKER_NAME=default@%h stack run worker
"""
CONTENT_WORKER = "worker_content: STACK_WORKER_QUEUES=content STACK_WORKER_NAME=content@%h stack run worker\n"


@pytest.fixture(scope="module")
def stack_procfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_procfile(tmp_path_factory, PROCFILE)


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {**E2E_ENV, "STACK_HINT_AFTER": "1", "STACK_API_TOKENS": TOKEN}


@pytest.fixture(scope="module")
def chromium() -> None:
    if find_chromium() is None:
        reason = f"no chromium/chromedriver on this machine: {INSTALL_HINT}"
        if os.environ.get("STACK_E2E_REQUIRED") == "1":
            pytest.fail(f"{reason} (STACK_E2E_REQUIRED=1)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(chromium: None, stack_processes: ProcfileStack) -> Iterator[Any]:
    # After the stack (checked for first, so a machine without chromium starts nothing) and closed
    # before it: the page's open event streams would hold the API's graceful shutdown.
    driver = start_chromium(width=1400, height=1150)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: Any, stack_processes: ProcfileStack) -> Iterator[Any]:
    """/ui with the token entered, as a user would after the 401 banner."""
    browser.get(f"{stack_processes.api_url}/ui")
    browser.execute_script("sessionStorage.setItem('stack.token', arguments[0])", TOKEN)
    browser.refresh()
    wait_for(lambda: browser.find_elements("id", "field-width"), what="the page to load its kinds")
    yield browser
    errors = page_errors(browser)
    assert not errors, f"the page logged errors: {errors}"


def wait_for(check: Callable[[], Any], *, timeout: float = 20.0, what: str) -> Any:
    return poll(check, timeout=timeout, what=what)


ROW_JS = """
const row = document.querySelector(`tr[data-job-id="${arguments[0]}"]`);
if (!row) return null;
const bar = row.querySelector('[role=progressbar]');
const hint = row.querySelector('.hint');
return {status: row.dataset.status, progress: Number(bar.getAttribute('aria-valuenow')),
        stream: row.dataset.stream || '', hint: hint.hidden ? '' : hint.textContent, text: row.innerText};
"""


def row(driver: Any, task_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = driver.execute_script(ROW_JS, task_id)
    return found


def test_the_page_asks_for_a_token_then_lists_the_jobs(
    browser: Any, stack_processes: ProcfileStack, stack_api: JobClient
) -> None:
    job = stack_api.submit("demo", {"seconds": 0, "steps": 1})
    browser.get(f"{stack_processes.api_url}/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    banner = wait_for(lambda: browser.find_element("id", "auth-banner").text, what="the 401 banner")
    assert banner.startswith("401: enter a token")
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#token-form button[type=submit]").click()
    wait_for(lambda: row(browser, job["task_id"]), what="the job's row")
    assert not browser.find_element("id", "auth-banner").is_displayed()


def test_a_running_jobs_bar_advances_while_the_test_watches(page: Any, stack_api: JobClient) -> None:
    job = stack_api.submit("demo", {"seconds": 6, "steps": 30})
    seen: list[int] = []
    streamed = False
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        state = row(page, job["task_id"])
        if state is not None:
            streamed |= state["stream"] == "live"
            if not seen or seen[-1] != state["progress"]:
                seen.append(state["progress"])
            if state["status"] == "success":
                break
        time.sleep(0.05)
    assert state is not None and state["status"] == "success", f"bar values {seen}, last {state}"
    assert seen == sorted(seen), f"the bar went back: {seen}"
    assert seen[-1] == 100
    assert len([v for v in seen if 0 < v < 100]) >= 5, f"too few steps seen: {seen}"
    assert streamed, "the row never followed the job's event stream"


def test_a_job_on_a_queue_with_no_worker_shows_its_hint_on_its_row(page: Any, stack_api: JobClient) -> None:
    job = stack_api.submit("generate_image", {"width": 64, "height": 64})
    hint = wait_for(lambda: (row(page, job["task_id"]) or {}).get("hint"), timeout=30, what="the hint")
    assert "no worker consumes queue 'content'" in hint, hint
    assert "STACK_WORKER_QUEUES=content" in hint or "stack run worker" in hint, hint
    # The queues panel (GET /api/queues) says the same: `content` has work and no worker, in red.
    content = wait_for(
        lambda: page.execute_script(
            "const tr = document.querySelector('#queues tr[data-queue=content]');"
            "return tr && tr.classList.contains('alarm') ? tr.innerText : null"
        ),
        timeout=15,
        what="the content queue to stand out",
    )
    assert "no worker consumes this queue" in content
    default = page.execute_script("return document.querySelector('#queues tr[data-queue=default]').className")
    assert "alarm" not in default
    assert page.find_element("id", "queues-note").is_displayed() is False


def test_a_job_submitted_through_the_form_reaches_100(page: Any, stack_api: JobClient) -> None:
    from selenium.webdriver.support.ui import Select

    Select(page.find_element("id", "submit-kind")).select_by_value("demo")
    fields = {"field-seconds": "2", "field-steps": "10", "field-message": "from the form"}
    wait_for(lambda: page.find_elements("id", "field-steps"), what="the demo form")
    for field_id, value in fields.items():
        element = page.find_element("id", field_id)
        element.clear()
        element.send_keys(value)
    page.find_element("id", "submit-button").click()
    task_id = wait_for(
        lambda: page.find_element("id", "submit-status").get_attribute("data-task-id"), what="the 202"
    )
    final = wait_for(
        lambda: (r := row(page, task_id)) and r["status"] == "success" and r,
        timeout=30,
        what="the form's job to finish",
    )
    assert final["progress"] == 100
    job = stack_api.get(task_id)
    assert (job["status"], job["result"]["steps"]) == ("success", 10)
    sent = stack_api.http.get(f"/ui/api/jobs/{task_id}/params").json()["params"]
    assert sent == {
        "seconds": 2,
        "steps": 10,
        "message": "from the form",
        "transient_failures": 0,
        "fail_at": None,
    }


def test_the_cancel_button_revokes_a_waiting_job(page: Any, stack_api: JobClient) -> None:
    job = stack_api.submit("generate_image", {"width": 32, "height": 32})  # no content worker yet
    wait_for(lambda: row(page, job["task_id"]), what="the job's row")
    page.find_element("css selector", f'tr[data-job-id="{job["task_id"]}"] button.cancel').click()
    wait_for(lambda: (row(page, job["task_id"]) or {}).get("status") == "revoked", what="revoked")
    assert stack_api.get(job["task_id"])["status"] == "revoked"
    assert not page.find_element(
        "css selector", f'tr[data-job-id="{job["task_id"]}"] button.cancel'
    ).is_displayed()


def test_a_generate_image_jobs_detail_shows_its_picture(
    page: Any, stack_api: JobClient, stack_start: Callable[..., ProcfileStack], tmp_path: Path
) -> None:
    procfile = tmp_path / "Procfile.content"
    procfile.write_text(CONTENT_WORKER)
    stack_start(procfile)  # a `content` worker joins, on the same Redis and database
    job = stack_api.submit("generate_image", {"width": 96, "height": 64, "style": "julia"})
    wait_for(
        lambda: (row(page, job["task_id"]) or {}).get("status") == "success", timeout=60, what="the picture"
    )
    page.find_element("css selector", f'tr[data-job-id="{job["task_id"]}"] td.kind').click()
    size = wait_for(
        lambda: page.execute_script(
            "const img = document.querySelector('#detail-body img.picture');"
            "return img && img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null"
        ),
        what="the picture to load",
    )
    assert size == [96, 64]
    detail = page.find_element("id", "detail-body").text
    assert '"style": "julia"' in detail and '"width": 96' in detail  # params and result


def test_screenshot_of_jobs_in_every_state(
    page: Any, stack_api: JobClient, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    done = stack_api.submit("demo", {"seconds": 0.5, "steps": 5, "message": "resizing"})
    failed = stack_api.submit("demo", {"seconds": 0.4, "steps": 4, "fail_at": 3})
    cancelled = stack_api.submit("write_log", {"event": "quota.changed"})
    stack_api.cancel(cancelled["task_id"])
    picture = stack_api.submit("generate_image", {"width": 480, "height": 320, "iterations": 200})
    waiting = stack_api.submit("write_log", {"event": "user.login", "actor": "ada"})
    running = stack_api.submit("demo", {"seconds": 30, "steps": 100, "message": "rendering tile"})
    for job in (done, failed, picture):
        stack_api.follow(job, timeout=60)
    wait_for(lambda: (row(page, waiting["task_id"]) or {}).get("hint"), timeout=30, what="the hint")
    wait_for(lambda: (row(page, running["task_id"]) or {}).get("progress", 0) >= 20, timeout=30, what="run")
    page.find_element("css selector", f'tr[data-job-id="{picture["task_id"]}"] td.kind').click()
    wait_for(
        lambda: page.execute_script(
            "return document.querySelector('#detail-body img.picture')?.naturalWidth"
        ),
        what="the picture",
    )
    page.set_window_size(1500, 1560)  # tall enough for the picture at the foot of the detail
    page.execute_script("window.scrollTo(0, 0)")
    states = {row(page, j["task_id"])["status"] for j in (done, failed, cancelled, waiting, running)}  # type: ignore[index]
    assert states >= {"success", "failure", "revoked", "pending", "progress"}, states
    target = Path(os.environ.get("STACK_UI_SCREENSHOT") or tmp_path / "ui.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    assert page.save_screenshot(str(target))
    record_property("screenshot", str(target))
    stack_api.cancel(running["task_id"])
    page.set_window_size(1400, 1150)


def test_a_progress_event_moves_the_bar_within_100_ms(
    page: Any,
    stack_api: JobClient,
    stack_processes: ProcfileStack,
    record_property: pytest.RecordProperty,
) -> None:
    # write_log jobs wait (no `logs` worker): only this test publishes on their channels.
    jobs = [stack_api.submit("write_log", {"event": f"latency {i}"})["task_id"] for i in range(3)]
    wait_for(lambda: all(row(page, j) for j in jobs), what="the rows")
    wait_streams_live(page, jobs)
    offset, error = clock_offset_ms(page)
    client = redis.Redis.from_url(stack_processes.env["REDIS_URL"])
    try:
        result = measure_page(page, client, jobs, updates=40, gap=0.02)
    finally:
        client.close()
        for job in jobs:
            stack_api.cancel(job)
    p50, p99 = result.pct(50), result.pct(99)
    record_property("ui_progress_p50_ms", round(p50, 1))
    record_property("ui_progress_p99_ms", round(p99, 1))
    print(
        f"\n/ui: {result.published} progress events, PUBLISH -> aria-valuenow: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {max(result.delays_ms):.1f} ms (clocks {offset:+.1f} ± {error:.1f} ms apart)"
    )
    assert result.missed == 0, f"{result.missed} of {result.published} updates never reached a bar"
    assert result.published >= 100
    assert p99 < 100, f"p99 {p99:.1f} ms"
