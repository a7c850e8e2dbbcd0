"""Who may call the API: bearer tokens with scopes, the app's own dependency, an explicitly open
API; production refuses to start open by accident; /ready says little to strangers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Header, HTTPException
from fastapi.testclient import TestClient

from stack.api.app import create_app
from stack.api.auth import Principal, Scope
from stack.config import AppEnv
from stack.errors import ConfigError
from stack.jobs.migrate import upgrade
from stack.runtime import build_runtime
from tests.unit.conftest import make_settings

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
SUBMITTER = "submit-token-0123456789abcdef"
TOKENS = [ADMIN, f"{READER}:read", f"{SUBMITTER}:submit+read"]


def client_for(tmp_path: Path, **overrides: object) -> TestClient:
    settings = make_settings(tmp_path, **overrides)
    upgrade(build_runtime(settings).engine)
    return TestClient(create_app(settings))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(tmp_path, api_tokens=TOKENS, celery_enabled=False) as client:
        yield client


def submit(api: TestClient, token: str = ADMIN) -> str:
    response = api.post("/api/jobs/demo", json={"seconds": 0}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/jobs/demo"),
        ("get", "/api/jobs"),
        ("get", "/api/jobs/{id}"),
        ("get", "/api/jobs/{id}/events"),
        ("get", "/api/jobs/{id}/files/image.png"),
        ("post", "/api/jobs/{id}/cancel"),
    ],
)
def test_every_job_route_needs_a_token(api: TestClient, method: str, path: str) -> None:
    url = path.format(id=submit(api))
    for headers in ({}, bearer("not-a-token-of-ours-at-all"), {"Authorization": f"Basic {ADMIN}"}):
        response = api.request(method.upper(), url, json={}, headers=headers)
        assert response.status_code == 401, (url, headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "STACK_API_TOKENS" in response.json()["detail"]


def test_a_token_does_what_its_scopes_allow(api: TestClient) -> None:
    task_id = submit(api, SUBMITTER)
    assert api.get(f"/api/jobs/{task_id}", headers=bearer(READER)).status_code == 200
    refused = api.post("/api/jobs/demo", json={}, headers=bearer(READER))
    assert refused.status_code == 403
    assert refused.json()["detail"] == "token #2 may not submit jobs (its scopes: read)"
    assert api.post(f"/api/jobs/{task_id}/cancel", headers=bearer(SUBMITTER)).status_code == 403
    assert api.post(f"/api/jobs/{task_id}/cancel", headers=bearer(ADMIN)).status_code == 409  # finished


def test_health_is_public_and_ready_tells_strangers_only_yes_or_no(api: TestClient) -> None:
    assert api.get("/health").json() == {"status": "ok"}
    assert api.get("/ready").json() == {"status": "ready"}
    detailed = api.get("/ready", headers=bearer(READER)).json()
    assert detailed["status"] == "ready" and "database" in detailed["checks"]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["short"], "STACK_API_TOKENS entry 1 is 5 characters long"),
        ([f"{ADMIN}:read+delete"], "STACK_API_TOKENS entry 1 asks for scopes 'read+delete'"),
    ],
)
def test_bad_tokens_are_refused_at_start(tmp_path: Path, tokens: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        client_for(tmp_path, api_tokens=tokens)


def test_production_refuses_an_api_open_by_accident(tmp_path: Path) -> None:
    production = {"app_env": AppEnv.PRODUCTION, "secret_key": "s" * 40}
    with pytest.raises(ConfigError) as refused:
        client_for(tmp_path, **production)
    assert "STACK_API_TOKENS" in str(refused.value) and "STACK_AUTH=none" in str(refused.value)
    with client_for(tmp_path, auth="none", **production) as opened:  # said out loud: open it is
        assert opened.get("/api/jobs").status_code == 200
        assert opened.get("/ready").json() == {"status": "ready"}  # still no internals


# --- the app's own login --------------------------------------------------------------------------
class User:
    def __init__(self, username: str) -> None:
        self.username = username


def header_login(x_user: str | None = Header(default=None)) -> object:
    """What a team's own dependency looks like: here a trusted header set by a gateway."""
    if x_user is None:
        raise HTTPException(401, detail="log in first")
    if x_user == "auditor":
        return Principal("auditor", frozenset({Scope.READ}))
    return User(x_user) if x_user != "nobody" else None


def test_the_apps_own_dependency_decides(tmp_path: Path) -> None:
    with client_for(tmp_path, auth="tests.unit.test_auth:header_login", celery_enabled=False) as api:
        assert api.post("/api/jobs/demo", json={}).json()["detail"] == "log in first"
        assert api.post("/api/jobs/demo", json={}, headers={"X-User": "nobody"}).status_code == 401
        created = api.post("/api/jobs/demo", json={"seconds": 0}, headers={"X-User": "ana"})
        assert created.status_code == 200
        task_id = created.json()["task_id"]
        assert api.get(f"/api/jobs/{task_id}", headers={"X-User": "auditor"}).status_code == 200
        assert api.post("/api/jobs/demo", json={}, headers={"X-User": "auditor"}).status_code == 403


def test_only_a_custom_dependency_is_installed_as_an_override(tmp_path: Path, api: TestClient) -> None:
    # Any dependency override makes FastAPI rebuild every route's dependency graph per request:
    # tokens and open access, which need nothing but the request, must not cost that.
    assert api.app.dependency_overrides == {}  # type: ignore[attr-defined]
    with client_for(tmp_path, auth="tests.unit.test_auth:header_login", celery_enabled=False) as custom:
        assert list(custom.app.dependency_overrides.values()) == [header_login]  # type: ignore[attr-defined]


def test_an_unloadable_dependency_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STACK_AUTH='nowhere:login'"):
        client_for(tmp_path, auth="nowhere:login")


# --- browsers ----------------------------------------------------------------------------------------
def test_cors_is_off_unless_origins_are_named(tmp_path: Path) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with client_for(tmp_path) as closed:
        response = closed.options("/api/jobs/demo", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with client_for(tmp_path, cors_origins=["https://app.example"]) as opened:
        allowed = opened.options("/api/jobs/demo", headers={**preflight, "Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = opened.options("/api/jobs/demo", headers=preflight)
        assert "access-control-allow-origin" not in other.headers


# --- the contract ----------------------------------------------------------------------------------
def test_docs_work_offline(api: TestClient) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = api.get(page).text
        assert f"/static-offline-docs/{asset}" in html and "cdn" not in html.lower()
        assert api.get(f"/static-offline-docs/{asset}").status_code == 200


def test_openapi_documents_each_kinds_params_and_every_error(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert "/api/jobs/{kind}" not in spec["paths"]
    create = spec["paths"]["/api/jobs/demo"]["post"]
    schema_ref = create["requestBody"]["content"]["application/json"]["schema"]
    assert "DemoParams" in str(schema_ref)
    assert {"202", "200", "400", "401", "403", "413", "415", "422", "503"} <= set(create["responses"])
    assert "steps" in spec["components"]["schemas"]["DemoParams"]["properties"]
    assert "/api/jobs/generate_image" in spec["paths"] and "/api/jobs/write_log" in spec["paths"]


def test_an_empty_kind_filter_is_a_422_not_a_404(api: TestClient) -> None:
    assert api.get("/api/jobs?kind=", headers=bearer(ADMIN)).status_code == 422
