"""Liveness and readiness, in the shape load balancers and orchestrators expect."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from stack.api.auth import ANONYMOUS, identify_for_readiness
from stack.checks import check_broker, check_database

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """The process is alive; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "The database or the broker does not answer"}})
def ready(request: Request) -> JSONResponse:
    """200 when the database and (unless CELERY_ENABLED=false) the broker answer, else 503.
    Which one fails, and the details, only for a caller with a token (or any caller of an open
    API outside production): hosts and user names are nobody else's business."""
    service = request.app.state.jobs
    settings = service.runtime.settings
    results = [check_database(service.runtime.engine)]
    if not service.inline:
        results.append(check_broker(settings.broker_url, timeout=min(settings.broker_timeout, 2.0)))
    ok = all(r.ok for r in results)
    body: dict[str, object] = {"status": "ready" if ok else "not ready"}
    caller = identify_for_readiness(request)
    if caller is not None and (caller is not ANONYMOUS or not settings.is_production):
        body["mode"] = "inline" if service.inline else "celery"
        body["checks"] = {r.name: {"ok": r.ok, "detail": r.detail} for r in results}
        if not ok:
            body["failing"] = [r.name for r in results if not r.ok]
    return JSONResponse(body, status_code=200 if ok else 503)
