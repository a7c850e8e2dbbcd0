"""HTTP API of jobs: create, status, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from stack.errors import UnknownKindError
from stack.jobs.hints import HintCache, owner_hint
from stack.jobs.models import JobStatus
from stack.jobs.registry import JobKind
from stack.jobs.schemas import JobDetail, JobList, JobOut
from stack.jobs.service import JobService
from stack.jobs.stream import job_events as stream_job_events

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No job with this id"}}


def _service(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


def _kind(service: JobService, name: str) -> JobKind:
    try:
        return service.registry.get(name)
    except UnknownKindError as exc:
        raise HTTPException(404, detail={"message": str(exc), "known_kinds": exc.known}) from None


def _validate(kind: JobKind, body: dict[str, Any] | None) -> dict[str, Any]:
    try:
        params = kind.validate(body)
    except ValidationError as exc:
        # Same shape as FastAPI's own 422s, minus `input` (it may be megabytes of base64) and
        # `ctx` (it may hold exception objects that are not JSON).
        raise RequestValidationError(
            [
                {"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
        ) from None
    return params.model_dump(mode="json")


@router.post(
    "/{kind}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        200: {"model": JobDetail, "description": "CELERY_ENABLED=false: ran inline, finished"},
        404: {"description": "Unknown job kind; the answer lists the known ones"},
        413: {"description": "Body larger than STACK_MAX_BODY_BYTES"},
        422: {"description": "Invalid params; `loc` names the field"},
    },
)
def create_job(
    kind: str,
    request: Request,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> Response:
    """Queue a job of `kind` with the JSON body as its params; poll `Location` for its status."""
    service = _service(request)
    job_kind = _kind(service, kind)
    params = _validate(job_kind, body)
    job = service.submit(job_kind, params)
    body_out = JobDetail.of(job) if service.inline else JobOut.of(job)
    return _json(
        body_out,
        status_code=status.HTTP_200_OK if service.inline else status.HTTP_202_ACCEPTED,
        headers={"Location": f"/api/jobs/{job.id}"},
    )


def _json(model: BaseModel, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialised here, not by FastAPI: its response_model pass would dump the model and validate
    it again, a cost every submit, status poll and listing pays for nothing (the model is built just
    before). `response_model` stays on the route for the OpenAPI schema."""
    return Response(
        model.model_dump_json(), status_code=status_code, media_type="application/json", headers=headers
    )


@router.get("", response_model=JobList)
def list_jobs(
    request: Request,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Most recent jobs first, optionally filtered by status and kind."""
    service = _service(request)
    if kind is not None:
        _kind(service, kind)
    jobs = [JobDetail.of(j) for j in service.store.list(status=status_, kind=kind, limit=limit)]
    return _json(JobList(jobs=jobs, count=len(jobs)))


@router.get("/{task_id}", response_model=JobDetail, responses=_NOT_FOUND)
def get_job(task_id: str, request: Request) -> Response:
    """The job's row; `hint` says why it is still pending after a while, or why a running job
    shows no sign of life (its worker stopped heartbeating)."""
    service = _service(request)
    job = service.store.get(task_id)
    if job is None:
        raise HTTPException(404, detail=f"no job with id {task_id!r}")
    detail = JobDetail.model_validate(job)
    hints: HintCache | None = getattr(request.app.state, "hints", None)
    if hints is not None:  # None in inline mode: a job there is never pending
        detail.hint = hints.hint_for(job) or owner_hint(
            job, settings=service.runtime.settings, workers=service.store.workers
        )
    return _json(detail)


@router.get(
    "/{task_id}/events",
    response_class=StreamingResponse,
    responses={
        **_NOT_FOUND,
        200: {"content": {"text/event-stream": {}}, "description": "`event: job` with JSON data"},
    },
)
async def job_events(task_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: the job now, then each progress update, then the finished job."""
    service = _service(request)

    async def load() -> JobDetail | None:
        job = await run_in_threadpool(service.store.get, task_id)
        return JobDetail.of(job) if job is not None else None

    if await load() is None:
        raise HTTPException(404, detail=f"no job with id {task_id!r}")
    stream = stream_job_events(
        job_id=task_id,
        load=load,
        redis_client=getattr(request.app.state, "redis", None),
        disconnected=request.is_disconnected,
    )
    # no-cache and X-Accel-Buffering: proxies (nginx) must pass events on as they come.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.post(
    "/{task_id}/cancel",
    response_model=JobDetail,
    responses={**_NOT_FOUND, 409: {"description": "The job already finished"}},
)
def cancel_job(task_id: str, request: Request) -> Response:
    """Revoke a job. A queued job never runs; a running one stops at its next progress report."""
    job = _service(request).cancel(task_id)
    if job is None:
        raise HTTPException(404, detail=f"no job with id {task_id!r}")
    if job.status is not JobStatus.REVOKED:
        raise HTTPException(409, detail=f"job {task_id} already finished as {job.status.value}")
    return _json(JobDetail.of(job))
