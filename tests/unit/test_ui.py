"""The /ui page: its files are served (and shipped in the package), `/` sends browsers to it, the
params route sits behind the API's authentication — and, in a real headless Chromium against an
in-process API (inline mode, SQLite; skipped without chromium), the page's own logic: the SSE
parser, the queues panel on a stub of `GET /api/queues`, the 401 state, the generated form."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.resources
import os
import re
import socket
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from benchmarks.ui_latency import find_chromium, page_errors, start_chromium
from stack.api import ui
from stack.api.app import create_app
from stack.jobs.migrate import upgrade
from stack.runtime import build_runtime
from stack.testing.services.base import wait_for as poll
from tests.unit.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ui-test-token-0123456789abcdef"


def app_for(tmp_path: Path, **overrides: object) -> FastAPI:
    settings = make_settings(tmp_path, **overrides)
    upgrade(build_runtime(settings).engine)
    return create_app(settings)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(app_for(tmp_path, celery_enabled=False)) as client:
        yield client


# --- files --------------------------------------------------------------------------------------------
def test_the_page_is_served_with_a_strict_content_security_policy(api: TestClient) -> None:
    response = api.get("/ui")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="ui/static/app.js">' in response.text


def test_every_file_the_page_loads_is_served_with_its_type(api: TestClient) -> None:
    html = api.get("/ui").text
    referenced = set(re.findall(r'(?:src|href)="ui/static/([^"]+)"', html))
    for name in ui.FILES:
        if name.endswith(".js"):  # ES module imports, followed by the browser
            referenced |= set(re.findall(r'from "\./([^"]+)"', ui.FILES[name].read_text()))
    assert {"app.js", "style.css", "sse.js", "api.js"} <= referenced
    assert referenced <= set(ui.FILES), f"referenced but missing: {referenced - set(ui.FILES)}"
    types = {".js": "text/javascript", ".css": "text/css"}
    for name in referenced:
        response = api.get(f"/ui/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == f"{types[Path(name).suffix]}; charset=utf-8"


@pytest.mark.parametrize("name", ["nope.js", "..%2Fui.py", "..%2F..%2Fapp.py", "%2Fetc%2Fpasswd"])
def test_only_the_uis_own_files_are_served(api: TestClient, name: str) -> None:
    assert api.get(f"/ui/static/{name}").status_code == 404


def test_the_page_loads_nothing_from_elsewhere() -> None:
    # Offline and behind firewalls: no CDN, no web font, no absolute URL of another host.
    for path in ui.FILES.values():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import", text), f"{path.name} refers to another host"


def test_the_static_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["stack"]
    package_dir = ROOT / "stack"
    for path in ui.STATIC_DIR.iterdir():
        relative = path.relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} is not package data"
    installed = importlib.resources.files("stack") / "api" / "ui" / "static"
    assert {p.name for p in installed.iterdir()} == set(ui.FILES)


# --- `/` ----------------------------------------------------------------------------------------------
def test_a_browser_asking_for_the_root_is_sent_to_the_page(api: TestClient) -> None:
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # Chromium's
    response = api.get("/", headers={"accept": accept}, follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui"
    assert api.get("/", headers={"accept": accept}).headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_json_clients_keep_the_index(api: TestClient, accept: str | None) -> None:
    headers = {"accept": accept} if accept else {}
    response = api.get("/", headers=headers, follow_redirects=False)
    assert response.status_code == 200
    assert response.json()["kinds"]["generate_image"] == "content"


def test_the_redirect_keeps_a_proxys_prefix(tmp_path: Path) -> None:
    with TestClient(app_for(tmp_path, celery_enabled=False), root_path="/jobs") as client:
        response = client.get("/", headers={"accept": "text/html"}, follow_redirects=False)
    assert response.headers["location"] == "/jobs/ui"


# --- the params route -----------------------------------------------------------------------------
def test_a_jobs_params_are_shown_with_long_strings_cut(api: TestClient) -> None:
    text = "Chapter 1\n" + "word " * 1000
    job = api.post("/api/jobs/generate_content", json={"text": text, "chapter_words": 50}).json()
    body = api.get(f"/ui/api/jobs/{job['task_id']}/params").json()
    assert body["params"]["chapter_words"] == 50
    shown = body["params"]["text"]
    assert shown.startswith("Chapter 1") and shown.endswith(f"({len(text):,} characters)")
    assert len(shown) < ui.SHOWN_CHARS + 40
    assert api.get("/ui/api/jobs/nope/params").status_code == 404


def test_the_page_is_public_but_its_data_needs_the_token(tmp_path: Path) -> None:
    with TestClient(app_for(tmp_path, celery_enabled=False, api_tokens=[TOKEN])) as client:
        assert client.get("/ui").status_code == 200
        assert client.get("/ui/static/app.js").status_code == 200
        job = client.post(
            "/api/jobs/demo", json={"seconds": 0}, headers={"Authorization": f"Bearer {TOKEN}"}
        ).json()
        anonymous = client.get(f"/ui/api/jobs/{job['task_id']}/params")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        authorised = client.get(
            f"/ui/api/jobs/{job['task_id']}/params", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert authorised.status_code == 200


def test_shorten_reaches_into_lists_and_dicts() -> None:
    long = "x" * 500
    assert ui.shorten({"a": [long, 1], "b": {"c": long}, "d": None}) == {
        "a": [f"{'x' * 300}… (500 characters)", 1],
        "b": {"c": f"{'x' * 300}… (500 characters)"},
        "d": None,
    }


# --- in a browser -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a real socket (a browser needs one), in a thread of this process."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if find_chromium() is None:
        reason = "no chromium/chromedriver: apt-get install -y chromium chromium-driver"
        if os.environ.get("STACK_E2E_REQUIRED") == "1":
            pytest.fail(f"{reason} (STACK_E2E_REQUIRED=1)")
        pytest.skip(reason)
    driver = start_chromium()
    yield driver
    driver.quit()


def wait_for(check: Callable[[], Any], *, timeout: float = 10.0, what: str) -> Any:
    return poll(check, timeout=timeout, what=what)


def text_of(driver: Any, selector: str) -> str:
    return str(
        driver.execute_script("return document.querySelector(arguments[0])?.innerText || ''", selector)
    )


PARSER_CASES_JS = """
const done = arguments[arguments.length - 1];
import(new URL('ui/static/sse.js', document.baseURI)).then(({SseParser}) => {
  const run = (chunks) => {
    const events = [];
    const parser = new SseParser((e) => events.push(e));
    for (const chunk of chunks) parser.push(chunk);
    return {events, retry: parser.retry};
  };
  done({
    plain: run(['retry: 2000\\n\\nid: 1-5\\nevent: job\\ndata: {"a":1}\\n\\n']),
    split: run(['id: 7\\r', '\\nevent: j', 'ob\\r\\ndata: {"b"', ':2}\\r\\n', '\\r\\n']),
    comment_and_lines: run([': still waiting\\n\\n', 'data: x\\ndata: y\\n\\n', 'data:z\\n']),
  });
}).catch((e) => done({error: String(e)}));
"""


def test_the_pages_sse_parser_handles_split_chunks_comments_and_ids(browser: Any, tmp_path: Path) -> None:
    with serving(app_for(tmp_path, celery_enabled=False)) as base:
        browser.get(f"{base}/ui")
        result = browser.execute_async_script(PARSER_CASES_JS)
    assert "error" not in result, result
    assert result["plain"] == {"events": [{"event": "job", "data": '{"a":1}', "id": "1-5"}], "retry": 2000}
    assert result["split"]["events"] == [{"event": "job", "data": '{"b":2}', "id": "7"}]
    # A comment is no event; data lines join with \n; an event not yet ended by a blank line waits.
    assert result["comment_and_lines"]["events"] == [{"event": "message", "data": "x\ny", "id": ""}]


MERGE_JS = """
const done = arguments[arguments.length - 1];
import(new URL('ui/static/jobs.js', document.baseURI)).then(({merge}) => {
  const running = {task_id: 't', status: 'progress', progress: 40, message: 'b', attempts: 1};
  done({
    stale: merge(running, {task_id: 't', status: 'progress', progress: 30, message: 'a', attempts: 1}),
    newer: merge(running, {task_id: 't', status: 'progress', progress: 50, message: 'c'}),
    retried: merge(running, {task_id: 't', status: 'started', progress: 0, message: '', attempts: 2}),
    finished: merge(running, {task_id: 't', status: 'success', progress: 100, message: 'done', attempts: 1}),
    late: merge({...running, status: 'success', progress: 100},
                {task_id: 't', status: 'progress', progress: 90, message: 'x', attempts: 1}),
  });
});
"""


def test_a_bar_never_goes_back_within_an_attempt(browser: Any, tmp_path: Path) -> None:
    with serving(app_for(tmp_path, celery_enabled=False)) as base:
        browser.get(f"{base}/ui")
        merged = browser.execute_async_script(MERGE_JS)
    assert (merged["stale"]["progress"], merged["stale"]["message"]) == (40, "b")
    assert merged["newer"]["progress"] == 50
    assert (merged["retried"]["progress"], merged["retried"]["attempts"]) == (0, 2)
    assert merged["finished"]["status"] == "success"
    assert (merged["late"]["status"], merged["late"]["progress"]) == ("success", 100)


QUEUES_STUB = {
    "queues": [
        {
            "name": "content",
            "kinds": ["generate_content", "generate_image"],
            "depth": 3,
            "pending": 3,
            "running": 0,
            "oldest_pending_seconds": 75.0,
            "workers": [],
        },
        {
            "name": "default",
            "kinds": ["analyze_image", "demo"],
            "depth": 0,
            "pending": 0,
            "running": 1,
            "oldest_pending_seconds": None,
            "workers": ["default@host"],
        },
        {
            "name": "logs",
            "kinds": ["write_log"],
            "depth": None,
            "pending": 0,
            "running": 0,
            "oldest_pending_seconds": None,
            "workers": [],
        },
    ],
    "workers": [
        {
            "name": "default@host",
            "queues": ["default"],
            "running": ["j1"],
            "last_heartbeat_seconds": 1.5,
            "alive": True,
        },
        {
            "name": "old@host",
            "queues": ["logs"],
            "running": [],
            "last_heartbeat_seconds": 95.0,
            "alive": False,
        },
    ],
    "broker_ok": False,
}


def test_the_queues_panel_marks_a_queue_with_work_and_no_worker(browser: Any, tmp_path: Path) -> None:
    app = app_for(tmp_path, celery_enabled=False)
    # The shape GET /api/queues answers; first in line, so it stands in for the real route.
    app.router.routes.insert(0, APIRoute("/api/queues", lambda: QUEUES_STUB, methods=["GET"]))
    with serving(app) as base:
        browser.get(f"{base}/ui")
        wait_for(lambda: text_of(browser, '#queues tr[data-queue="logs"]'), what="the queues panel")
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#queues tbody tr')].map(tr => "
            "[tr.dataset.queue, tr.classList.contains('alarm'), tr.innerText])"
        )
        broker = text_of(browser, "#broker-state")
        workers = browser.execute_script("return document.querySelector('#workers tbody').textContent")
        errors = page_errors(browser)
    alarm = {name: red for name, red, _ in rows}
    assert alarm == {"content": True, "default": False, "logs": False}  # logs: no worker, but no work
    content = next(text for name, _, text in rows if name == "content")
    assert "no worker consumes this queue" in content and "1 min 15 s" in content and "3" in content
    default = next(text for name, _, text in rows if name == "default")
    assert "1: default@host" in default
    assert broker == "broker unreachable"
    assert "old@host" in workers and "(dead)" in workers
    assert not errors


def test_the_page_asks_for_a_token_and_then_shows_the_jobs(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    app = app_for(tmp_path, celery_enabled=False, api_tokens=[TOKEN])
    with serving(app) as base, TestClient(app) as client:
        client.post(
            "/api/jobs/demo", json={"seconds": 0, "steps": 2}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        browser.get(f"{base}/ui")
        banner = wait_for(lambda: text_of(browser, "#auth-banner"), what="the 401 banner")
        assert banner.startswith("401: enter a token")
        browser.find_element(By.ID, "token").send_keys("not-the-token-at-all")
        browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        wait_for(lambda: "refused this token" in text_of(browser, "#auth-banner"), what="a refused token")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        wait_for(lambda: text_of(browser, "#jobs tbody tr"), what="the job list")
        assert browser.find_element(By.ID, "auth-banner").is_displayed() is False
        assert browser.execute_script("return sessionStorage.getItem('stack.token')") == TOKEN
        browser.execute_script("sessionStorage.clear()")


def test_the_form_follows_the_kinds_schema_and_submits_json(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with serving(app_for(tmp_path, celery_enabled=False)) as base:
        browser.get(f"{base}/ui")
        wait_for(lambda: browser.find_elements(By.ID, "field-width"), what="the generate_image form")
        width = browser.find_element(By.ID, "field-width")
        assert (width.get_attribute("type"), width.get_attribute("min"), width.get_attribute("max")) == (
            "number",
            "16",
            "2048",
        )
        style = Select(browser.find_element(By.ID, "field-style"))
        assert [o.text for o in style.options] == ["mandelbrot", "julia", "gradient"]
        assert browser.find_element(By.ID, "field-tiles").get_attribute("value") == "8"  # the default

        Select(browser.find_element(By.ID, "submit-kind")).select_by_value("demo")
        steps = wait_for(lambda: browser.find_elements(By.ID, "field-steps"), what="the demo form")[0]
        steps.clear()
        steps.send_keys("5000")  # over the maximum: the API's 422 lands on the field
        browser.find_element(By.ID, "submit-button").click()
        error = wait_for(lambda: text_of(browser, '.field[data-name="steps"] .error'), what="the 422")
        assert "1000" in error
        steps.clear()
        steps.send_keys("4")
        seconds = browser.find_element(By.ID, "field-seconds")
        seconds.clear()
        seconds.send_keys("0")
        browser.find_element(By.ID, "submit-button").click()
        status = wait_for(lambda: text_of(browser, "#submit-status").startswith("success"), what="the job")
        assert status
        row = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-status=success]"), what="row"
        )
        bar = row[0].find_element(By.CSS_SELECTOR, "[role=progressbar]")
        assert bar.get_attribute("aria-valuenow") == "100"
        row[0].click()
        detail = wait_for(lambda: text_of(browser, "#detail-body"), what="the detail")
        assert '"steps": 4' in detail and '"attempt": 1' in detail
        assert not page_errors(browser)
