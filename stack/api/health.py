"""Liveness and readiness, in the shape load balancers and orchestrators expect."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from stack.checks import check_broker, check_database

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """The process is alive; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request) -> JSONResponse:
    """200 when the database and (unless CELERY_ENABLED=false) the broker answer; 503 naming
    the one that does not."""
    service = request.app.state.jobs
    settings = service.runtime.settings
    results = [check_database(service.runtime.engine)]
    if not service.inline:
        results.append(check_broker(settings.broker_url, timeout=min(settings.broker_timeout, 2.0)))
    ok = all(r.ok for r in results)
    body: dict[str, object] = {
        "status": "ready" if ok else "not ready",
        "mode": "inline" if service.inline else "celery",
        "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
    }
    if not ok:
        body["failing"] = [r.name for r in results if not r.ok]
    return JSONResponse(body, status_code=200 if ok else 503)
