"""The FastAPI application factory: `uvicorn --factory stack.api.app:create_app_from_env`."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import OperationalError

from stack.api import health
from stack.api import metrics as metrics_api
from stack.api import queues as queues_api
from stack.api import ui as ui_page
from stack.api.auth import install, resolve_auth
from stack.api.limits import BodySizeLimit
from stack.config import Settings, get_settings, redact_url
from stack.jobs import router as jobs_router
from stack.jobs.celery_app import create_celery
from stack.jobs.fanout import EventHub
from stack.jobs.grouping import GroupSubmitter
from stack.jobs.hints import HintCache, probe_view
from stack.jobs.registry import JobRegistry
from stack.jobs.service import JobService
from stack.logs import configure_for
from stack.runtime import build_runtime

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, registry: JobRegistry | None = None) -> FastAPI:
    runtime = build_runtime(settings, registry)
    celery = create_celery(settings, runtime.registry) if settings.celery_enabled else None
    hints = _hint_cache(settings, celery, runtime.registry)
    # Event streams share one Redis subscription per process (connected by the first stream);
    # inline mode has no Redis and its jobs are finished when answered, so streams read the row.
    events = EventHub(
        settings.effective_redis_url if celery is not None else None,
        max_streams=settings.sse_max_streams,
        connect_timeout=settings.broker_timeout,
        prefix=settings.redis_prefix,
    )

    service = JobService(runtime, celery)
    submits = GroupSubmitter(service) if celery is not None else None
    authenticator = resolve_auth(settings)  # refuses an unauthenticated API in production

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The refresher idles until a request needs a hint: starting it costs nothing.
        if hints is not None:
            hints.start()
        try:
            yield
        finally:
            if hints is not None:
                await asyncio.to_thread(hints.stop)
            if submits is not None:
                await asyncio.to_thread(submits.close)
            await asyncio.to_thread(service.close)
            await events.close()

    # The docs pages' scripts and styles are served by the app itself: /docs and /redoc work
    # on a machine (or behind a firewall) that cannot reach a CDN.
    app = FastAPIOffline(
        title="stack",
        summary="Background jobs with live progress: FastAPI + Celery + Redis + PostgreSQL",
        version="0.1.0",
        lifespan=lifespan,
    )
    install(app, authenticator)
    app.state.jobs = service
    app.state.submits = submits
    app.state.hints = hints
    app.state.events = events
    app.include_router(health.router)
    app.include_router(jobs_router.kind_routes(list(runtime.registry)))  # before `/{kind}`
    app.include_router(jobs_router.router)
    app.include_router(queues_api.router)
    app.include_router(metrics_api.router)
    app.include_router(ui_page.router)  # /ui: the live jobs page (static files, no CDN)
    settings.effective_storage_dir.mkdir(parents=True, exist_ok=True)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # off by default: no web page elsewhere may call the API
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape, minus `input` (it may be megabytes of base64, or a secret) and `ctx`
        # (it may hold exception objects that are not JSON).
        errors = [{"type": e["type"], "loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/", include_in_schema=False, response_model=None)
    def index(request: Request) -> dict[str, object] | RedirectResponse:
        # A person's browser gets the jobs page; JSON clients (curl, httpx: */*) keep this index.
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"{request.scope.get('root_path', '')}/ui", status_code=307)
        return {
            "name": "stack",
            "mode": "celery" if celery else "inline",
            "kinds": {k.name: k.queue for k in runtime.registry},
            "docs": "/docs",
        }

    @app.exception_handler(OperationalError)
    async def database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        # Driver errors name hosts, users and databases: they go to the server's log, never to a
        # caller. An outage fails every request at once, so one line per 30 s burst (the first
        # carries the cause) says how many it stands for, rather than burying it under copies.
        now = asyncio.get_running_loop().time()
        state = app.state
        last = getattr(state, "database_down_logged_at", None)
        if last is None or now - last >= 30.0:
            skipped = getattr(state, "database_down_unlogged", 0)
            log.error(
                "database error, answering 503 (%d more since the last line): %s", skipped, exc.orig or exc
            )
            state.database_down_logged_at, state.database_down_unlogged = now, 0
        else:
            state.database_down_unlogged = getattr(state, "database_down_unlogged", 0) + 1
        return JSONResponse({"detail": "the database is unreachable; see /ready"}, status_code=503)

    log.info(
        "api ready: mode=%s database=%s broker=%s kinds=%s",
        "celery" if celery else "inline",
        redact_url(settings.effective_database_url),
        redact_url(settings.broker_url) if celery else "-",
        ",".join(runtime.registry.names()),
    )
    return app


def _hint_cache(settings: Settings, celery: Celery | None, registry: JobRegistry) -> HintCache | None:
    if celery is None:
        return None  # inline mode: jobs finish within the request, nothing to explain
    probe = functools.partial(
        probe_view,
        celery,
        broker_url=settings.broker_url,
        prefix=settings.redis_prefix,
        queues=registry.queues(),
        timeout=min(settings.broker_timeout, 2.0),
    )
    return HintCache(probe, hint_after=settings.hint_after)


def create_app_from_env() -> FastAPI:
    settings = get_settings()
    configure_for(settings)  # uvicorn started without stack.roles' --log-config logs in its own format
    return create_app(settings)
