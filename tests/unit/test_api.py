"""Every endpoint, its answers and its errors. Client mistakes are 4xx with the field named,
never a 500; a dead broker still accepts the job."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stack.api.app import create_app
from stack.jobs.migrate import upgrade
from stack.runtime import build_runtime
from tests.unit.conftest import make_settings

JOB_FIELDS = {"task_id", "kind", "queue", "status", "progress", "message", "created_at", "updated_at"}
DETAIL_FIELDS = JOB_FIELDS | {"attempts", "worker", "started_at", "finished_at", "result", "error", "hint"}


def client_for(tmp_path: Path, **overrides: object) -> TestClient:
    settings = make_settings(tmp_path, **overrides)
    upgrade(build_runtime(settings).engine)
    return TestClient(create_app(settings))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    """Celery mode on the memory transport: submits are dispatched, nothing consumes them."""
    with client_for(tmp_path) as client:
        yield client


@pytest.fixture
def inline(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(tmp_path, celery_enabled=False) as client:
        yield client


def png_base64(colour: tuple[int, int, int] = (255, 0, 0)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_submit_is_202_pending_with_location(api: TestClient) -> None:
    response = api.post("/api/jobs/demo", json={"seconds": 1, "steps": 5})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == JOB_FIELDS
    assert (body["kind"], body["queue"], body["status"], body["progress"]) == (
        "demo",
        "default",
        "pending",
        0,
    )
    assert response.headers["location"] == f"/api/jobs/{body['task_id']}"


def test_status_of_a_submitted_job(api: TestClient) -> None:
    task_id = api.post("/api/jobs/write_log", json={"event": "login"}).json()["task_id"]
    response = api.get(f"/api/jobs/{task_id}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == DETAIL_FIELDS
    assert (body["queue"], body["attempts"], body["worker"]) == ("logs", 0, None)


def test_an_empty_object_means_the_defaults_and_no_body_is_a_422(api: TestClient) -> None:
    assert api.post("/api/jobs/demo", json={}).status_code == 202
    missing = api.post("/api/jobs/demo", headers={"content-type": "application/json"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body"]


@pytest.mark.parametrize(
    "content",
    [
        {"headers": {}},  # a fetch() with no body
        {"data": {"seconds": "1"}},  # an HTML form
        {"content": b"", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        {"content": b"{}", "headers": {"content-type": "text/plain"}},  # no CORS preflight either
    ],
)
def test_only_json_bodies_are_accepted(api: TestClient, content: dict[str, object]) -> None:
    response = api.post("/api/jobs/demo", **content)  # type: ignore[arg-type]
    assert response.status_code == 415, response.text
    assert "Content-Type: application/json" in response.json()["detail"]
    assert api.get("/api/jobs").json()["count"] == 0  # nothing was created


@pytest.mark.parametrize("task_id", ["does-not-exist", "00000000-0000-0000-0000-000000000000", "x" * 300])
def test_unknown_id_is_404_not_pending(api: TestClient, task_id: str) -> None:
    response = api.get(f"/api/jobs/{task_id}")
    assert response.status_code == 404
    assert "no job with id" in response.json()["detail"]
    assert api.post(f"/api/jobs/{task_id}/cancel").status_code == 404


def test_posting_to_an_unknown_kind_is_405_listing_known_kinds(api: TestClient) -> None:
    response = api.post("/api/jobs/make_coffee", json={})
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    detail = response.json()["detail"]
    assert "make_coffee" in detail["message"]
    assert detail["known_kinds"] == [
        "analyze_image",
        "demo",
        "generate_content",
        "generate_image",
        "write_log",
    ]


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("demo", {"steps": 0}, "steps"),
        ("demo", {"seconds": -1}, "seconds"),
        ("demo", {"seconds": "slow"}, "seconds"),
        ("demo", {"steps": 3, "fail_at": 9}, "fail_at"),
        ("demo", {"unexpected": 1}, "unexpected"),
        ("generate_image", {"width": 99999}, "width"),
        ("analyze_image", {"image_data": "not base64 !!"}, "image_data"),
        ("analyze_image", {"image_data": base64.b64encode(b"just text").decode()}, "image_data"),
        ("analyze_image", {}, "image_data"),
        ("write_log", {"event": ""}, "event"),
    ],
)
def test_invalid_params_are_422_naming_the_field(api: TestClient, kind: str, body: dict, field: str) -> None:
    response = api.post(f"/api/jobs/{kind}", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"] == ["body", field] for error in errors), errors
    assert all("input" not in error for error in errors)  # never echo megabytes of base64 back


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"a string"'])
def test_malformed_body_is_422(api: TestClient, raw: bytes) -> None:
    response = api.post("/api/jobs/demo", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (rb'{"text": "\udce4 a lone low surrogate"}', ["body", "text"]),
        (rb'{"text": "ok", "title": "\ud83d"}', ["body", "title"]),
    ],
)
def test_text_no_database_can_store_is_a_422_naming_the_field(api: TestClient, raw: bytes, loc: list) -> None:
    response = api.post(
        "/api/jobs/generate_content", content=raw, headers={"content-type": "application/json"}
    )
    # JSON may escape a lone UTF-16 surrogate; UTF-8 (and so PostgreSQL) cannot hold one.
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_a_proper_surrogate_pair_is_just_a_character(api: TestClient) -> None:
    raw = rb'{"text": "\ud83d\ude00 grinning"}'
    response = api.post(
        "/api/jobs/generate_content", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text


def test_valid_image_is_accepted(api: TestClient) -> None:
    response = api.post("/api/jobs/analyze_image", json={"image_data": png_base64()})
    assert response.status_code == 202


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    with client_for(tmp_path, max_body_bytes=2048) as client:
        big = {"text": "x" * 5000}
        response = client.post("/api/jobs/generate_content", json=big)
        assert response.status_code == 413
        assert "STACK_MAX_BODY_BYTES" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
            yield b'{"text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        chunked = client.post(
            "/api/jobs/generate_content", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        assert client.post("/api/jobs/generate_content", json={"text": "small"}).status_code == 202


def test_list_filters(api: TestClient) -> None:
    ids = [api.post("/api/jobs/demo", json={}).json()["task_id"] for _ in range(3)]
    api.post("/api/jobs/write_log", json={"event": "e"})
    api.post(f"/api/jobs/{ids[0]}/cancel")
    demo = api.get("/api/jobs", params={"kind": "demo"}).json()
    assert demo["count"] == 3 and [j["task_id"] for j in demo["jobs"]] == ids[::-1]
    revoked = api.get("/api/jobs", params={"status": "revoked"}).json()
    assert [j["task_id"] for j in revoked["jobs"]] == [ids[0]]
    assert api.get("/api/jobs", params={"limit": 2}).json()["count"] == 2
    assert api.get("/api/jobs", params={"status": "exploded"}).status_code == 422
    assert api.get("/api/jobs", params={"limit": 0}).status_code == 422
    assert api.get("/api/jobs", params={"kind": "nope"}).status_code == 404


def test_cancel_pending_job_then_again_is_idempotent(api: TestClient) -> None:
    task_id = api.post("/api/jobs/demo", json={}).json()["task_id"]
    first = api.post(f"/api/jobs/{task_id}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "revoked"
    assert first.json()["finished_at"] is not None
    assert api.post(f"/api/jobs/{task_id}/cancel").json()["status"] == "revoked"


def test_cancel_finished_job_is_409(inline: TestClient) -> None:
    task_id = inline.post("/api/jobs/demo", json={"seconds": 0}).json()["task_id"]
    response = inline.post(f"/api/jobs/{task_id}/cancel")
    assert response.status_code == 409
    assert "already finished as success" in response.json()["detail"]


def test_broker_down_at_submit_still_accepts_the_job(tmp_path: Path) -> None:
    with client_for(tmp_path, celery_broker_url="redis://127.0.0.1:1/0", broker_timeout=0.5) as client:
        response = client.post("/api/jobs/demo", json={"seconds": 0})
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "pending"
        assert "broker was unreachable" in body["message"]
        assert client.get(f"/api/jobs/{body['task_id']}").json()["status"] == "pending"
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["failing"] == ["broker"]
        assert client.get("/health").json() == {"status": "ok"}


def test_ready_when_everything_answers(api: TestClient) -> None:
    response = api.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["database"]["ok"] is True


def test_inline_mode_runs_the_job_and_answers_finished(inline: TestClient) -> None:
    response = inline.post("/api/jobs/demo", json={"seconds": 0.05, "steps": 5})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["progress"], body["attempts"], body["worker"]) == (
        "success",
        100,
        1,
        "inline",
    )
    assert body["result"] == {"steps": 5, "seconds": 0.05, "attempt": 1}
    ready = inline.get("/ready").json()
    assert ready["mode"] == "inline" and "broker" not in ready["checks"]


def test_inline_failure_is_a_finished_job_not_a_500(inline: TestClient) -> None:
    response = inline.post("/api/jobs/demo", json={"seconds": 0, "steps": 2, "fail_at": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failure" and "fail_at=2" in body["error"]


def test_generated_image_is_downloadable(inline: TestClient) -> None:
    body = inline.post("/api/jobs/generate_image", json={"width": 64, "height": 48, "tiles": 4}).json()
    assert body["status"] == "success"
    download = inline.get(body["result"]["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(download.content)).size == (64, 48)
    task_id = body["task_id"]
    assert inline.get(f"/api/jobs/{task_id}/files/nope.png").status_code == 404
    assert inline.get(f"/api/jobs/{task_id}/files/../../audit.log").status_code == 404
    assert inline.get(f"/api/jobs/{task_id}/files/%2e%2e/%2e%2e/audit.log").status_code == 404
    assert inline.get("/files/audit.log").status_code == 404  # outputs only through their job


def test_database_down_is_503_not_500(tmp_path: Path) -> None:
    bad = make_settings(tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none")
    with TestClient(create_app(bad)) as client:
        response = client.post("/api/jobs/demo", json={})
        assert response.status_code == 503
        assert "database is unreachable" in response.json()["detail"]
        assert "database" in client.get("/ready").json()["failing"]
