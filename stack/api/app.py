"""The FastAPI application factory: `uvicorn --factory stack.api.app:create_app_from_env`."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from celery import Celery
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from stack.api import health
from stack.api.limits import BodySizeLimit
from stack.config import Settings, get_settings, redact_url
from stack.jobs import router as jobs_router
from stack.jobs.celery_app import create_celery
from stack.jobs.hints import HintCache, probe_view
from stack.jobs.registry import JobRegistry
from stack.jobs.service import JobService
from stack.logs import configure_logging
from stack.runtime import build_runtime

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, registry: JobRegistry | None = None) -> FastAPI:
    runtime = build_runtime(settings, registry)
    celery = create_celery(settings, runtime.registry) if settings.celery_enabled else None
    hints = _hint_cache(settings, celery, runtime.registry)
    # For event streams; inline mode has no Redis and its jobs are finished when answered.
    events_redis = (
        aioredis.Redis.from_url(settings.effective_redis_url, socket_connect_timeout=settings.broker_timeout)
        if celery is not None
        else None
    )

    service = JobService(runtime, celery)

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
            await asyncio.to_thread(service.close)
            if events_redis is not None:
                await events_redis.aclose()

    app = FastAPI(
        title="stack",
        summary="Background jobs with live progress: FastAPI + Celery + Redis + PostgreSQL",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.jobs = service
    app.state.hints = hints
    app.state.redis = events_redis
    app.include_router(health.router)
    app.include_router(jobs_router.router)
    storage = settings.effective_storage_dir
    storage.mkdir(parents=True, exist_ok=True)
    app.mount("/files", StaticFiles(directory=storage), name="files")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.get("/", include_in_schema=False)
    def index() -> dict[str, object]:
        return {
            "name": "stack",
            "mode": "celery" if celery else "inline",
            "kinds": {k.name: k.queue for k in runtime.registry},
            "docs": "/docs",
        }

    @app.exception_handler(OperationalError)
    async def database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse(
            {"detail": "the database is unreachable; see /ready", "error": str(exc.orig)[:300]},
            status_code=503,
        )

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
        queues=registry.queues(),
        timeout=min(settings.broker_timeout, 2.0),
    )
    return HintCache(probe, hint_after=settings.hint_after)


def create_app_from_env() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
