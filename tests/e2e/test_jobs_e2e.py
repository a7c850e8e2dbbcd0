"""Every job kind through the production processes (Procfile.prod): real HTTP, real Redis,
real PostgreSQL, real worker processes."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from stack.testing.jobs import JobClient, assert_progressed
from stack.testing.procfile import ProcfileStack

pytestmark = pytest.mark.e2e


def test_demo_goes_0_to_100(stack_api: JobClient) -> None:
    trajectory = stack_api.run("demo", {"seconds": 1.0, "steps": 10})
    assert_progressed(trajectory, intermediate=3)
    final = trajectory.final
    assert final["attempts"] == 1 and final["worker"].startswith("worker@")
    assert final["result"] == {"steps": 10, "seconds": 1.0, "attempt": 1}
    assert final["started_at"] <= final["finished_at"]


def test_a_burst_of_concurrent_submits_runs_every_job_once(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    # Concurrent submits are written and published in groups (stack.jobs.grouping): each caller
    # must still get its own job, and each job exactly one message.
    with ThreadPoolExecutor(8) as pool:
        submitted = list(
            pool.map(lambda n: stack_api.submit("demo", {"seconds": 0, "steps": n}), range(1, 41))
        )
    assert sorted(job["task_id"] for job in submitted) == sorted({job["task_id"] for job in submitted})
    finals = [stack_api.follow(job, timeout=60).final for job in submitted]
    assert [final["result"]["steps"] for final in finals] == list(range(1, 41))
    assert all(final["attempts"] == 1 for final in finals), [f["attempts"] for f in finals]
    log = stack_processes["worker"].log_path.read_text()
    received = {job["task_id"]: log.count(f"jobs.demo[{job['task_id']}] received") for job in submitted}
    assert set(received.values()) == {1}, received


def test_generate_image_renders_a_downloadable_png(
    stack_api: JobClient, stack_processes: ProcfileStack
) -> None:
    # Big and detailed enough (about a second) for polling to watch it advance.
    params = {"width": 1024, "height": 640, "tiles": 8, "iterations": 3000}
    trajectory = stack_api.run("generate_image", params)
    assert_progressed(trajectory)
    result = trajectory.final["result"]
    download = httpx.get(stack_processes.api_url + result["url"], timeout=10)
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(download.content))
    assert image.format == "PNG" and image.size == (1024, 640)


def test_analyze_image_figures_match_the_input(stack_api: JobClient) -> None:
    picture = Image.new("RGB", (40, 10), (255, 0, 0))
    picture.paste((0, 0, 255), (30, 0, 40, 10))  # a quarter blue
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    trajectory = stack_api.run("analyze_image", {"image_data": base64.b64encode(buffer.getvalue()).decode()})
    assert_progressed(trajectory, intermediate=0)  # milliseconds of work: too fast to watch
    result = trajectory.final["result"]
    assert (result["width"], result["height"], result["format"]) == (40, 10, "PNG")
    shares = {c["hex"]: c["share"] for c in result["dominant_colours"]}
    assert shares == {"#ff0000": pytest.approx(0.75), "#0000ff": pytest.approx(0.25)}


def test_generate_content_finds_chapters_and_characters(stack_api: JobClient) -> None:
    text = "\n\n".join(
        f"Chapter {n}\n\nAlice met Bob in the garden. Alice smiled at Bob. The rain went on."
        for n in range(1, 5)
    )
    trajectory = stack_api.run("generate_content", {"text": text, "title": "Garden"})
    assert_progressed(trajectory, intermediate=0)
    result = trajectory.final["result"]
    assert len(result["chapters"]) == 4
    names = [c["name"] for c in result["characters"]]
    assert names[:2] == ["Alice", "Bob"]


def test_write_log_appends_an_audit_record(stack_api: JobClient, stack_processes: ProcfileStack) -> None:
    trajectory = stack_api.run("write_log", {"event": "login", "actor": "e2e"})
    assert_progressed(trajectory, intermediate=0)
    assert trajectory.final["queue"] == "logs"
    assert trajectory.final["result"]["line"]["event"] == "login"


def test_failing_job_ends_failure_with_the_error(stack_api: JobClient) -> None:
    trajectory = stack_api.run("demo", {"seconds": 0.2, "steps": 4, "fail_at": 3})
    final = trajectory.final
    assert final["status"] == "failure"
    assert "failed at step 3" in final["error"]
    assert final["progress"] == 50  # steps 1 and 2 were done


def test_transient_failures_retry_then_succeed(stack_api: JobClient) -> None:
    trajectory = stack_api.run("demo", {"seconds": 0.1, "steps": 2, "transient_failures": 2})
    final = trajectory.final
    assert final["status"] == "success", trajectory.describe()
    assert final["attempts"] == 3
    assert "retry" in trajectory.statuses, trajectory.describe()


def test_cancel_a_running_job(stack_api: JobClient) -> None:
    submitted = stack_api.submit("demo", {"seconds": 20, "steps": 100})
    stack_api.follow(submitted, timeout=15, until=lambda job: job["progress"] > 0)
    response = stack_api.cancel(submitted["task_id"])
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    trajectory = stack_api.follow(submitted, timeout=5)
    assert trajectory.final["status"] == "revoked" and trajectory.final["progress"] < 100


def test_unknown_id_is_404(stack_processes: ProcfileStack) -> None:
    response = httpx.get(f"{stack_processes.api_url}/api/jobs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404


def test_progress_streams_as_server_sent_events(stack_api: JobClient, stack_processes: ProcfileStack) -> None:
    submitted = stack_api.submit("demo", {"seconds": 1.0, "steps": 10})
    progress: list[int] = []
    statuses: list[str] = []
    with httpx.stream(
        "GET", f"{stack_processes.api_url}/api/jobs/{submitted['task_id']}/events", timeout=30
    ) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                progress.append(event["progress"])
                statuses.append(event["status"])
    assert statuses[-1] == "success", statuses
    assert progress == sorted(progress) and progress[-1] == 100, progress
    assert len({p for p in progress if 0 < p < 100}) >= 3, f"too few live updates: {progress}"
