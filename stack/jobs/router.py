"""HTTP API of jobs: create, status, list, events, files, cancel.

Each job kind gets a route of its own, `POST /api/jobs/<kind>`, whose body is the kind's params
model: OpenAPI documents every kind's params, and FastAPI validates them. Who may call what is
in `stack.api.auth`.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel

from stack.api.auth import Scope, require
from stack.errors import UnknownKindError
from stack.jobs.grouping import GroupSubmitter
from stack.jobs.hints import HintCache, owner_hint
from stack.jobs.models import JobStatus
from stack.jobs.registry import JobKind, outputs_dir
from stack.jobs.schemas import JobDetail, JobList, JobOut
from stack.jobs.service import JobService
from stack.jobs.stream import RETRY_AFTER_S, EventStreamResponse, already_finished
from stack.jobs.stream import job_events as stream_job_events

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

Responses = dict[int | str, dict[str, Any]]
_NOT_FOUND: Responses = {404: {"description": "No job with this id"}}
# What any route of this API may answer besides its own codes.
_COMMON: Responses = {
    401: {"description": "No credentials, or unknown ones (`WWW-Authenticate: Bearer`)"},
    403: {"description": "The caller may not do this (its scopes)"},
    422: {"description": "Invalid parameter or params; `loc` names the field"},
    503: {"description": "The database is unreachable; see /ready"},
}
_BODY: Responses = {
    400: {"description": "The body is not JSON (or not UTF-8)"},
    413: {"description": "Body larger than STACK_MAX_BODY_BYTES"},
    415: {"description": "The body is not `application/json`"},
}
READ = Depends(require(Scope.READ))
SUBMIT = Depends(require(Scope.SUBMIT))
CANCEL = Depends(require(Scope.CANCEL))


async def json_only(request: Request) -> None:
    """Bodies are JSON, declared as such: a form post from any web page (which needs no CORS
    preflight) is refused before it can create a job."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail="send the params as JSON with Content-Type: application/json ({} for the defaults)",
        )


JSON_ONLY = Depends(json_only)


def _service(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


def _kind(service: JobService, name: str) -> JobKind:
    try:
        return service.registry.get(name)
    except UnknownKindError as exc:
        raise HTTPException(404, detail={"message": str(exc), "known_kinds": exc.known}) from None


async def _submit(request: Request, job_kind: JobKind, params: dict[str, Any]) -> Response:
    service = _service(request)
    if service.inline:  # the job runs in this request: a worker thread, as any blocking work
        job = await run_in_threadpool(service.submit, job_kind, params)
    else:  # written with the submits that arrive meanwhile (stack.jobs.grouping)
        submits: GroupSubmitter = request.app.state.submits
        job = await submits.submit(job_kind, params)
    body_out = JobDetail.of(job) if service.inline else JobOut.of(job)
    return _json(
        body_out,
        status_code=status.HTTP_200_OK if service.inline else status.HTTP_202_ACCEPTED,
        headers={"Location": f"/api/jobs/{job.id}"},
    )


def kind_routes(kinds: list[JobKind]) -> APIRouter:
    """`POST /api/jobs/<kind>` for each kind, its body typed by the kind's params model."""
    routes = APIRouter(prefix="/api/jobs", tags=["jobs"])
    for job_kind in kinds:
        routes.add_api_route(
            f"/{job_kind.name}",
            _create_endpoint(job_kind),
            methods=["POST"],
            status_code=status.HTTP_202_ACCEPTED,
            response_model=JobOut,
            responses={
                200: {"model": JobDetail, "description": "CELERY_ENABLED=false: ran inline, finished"},
                **_BODY,
                **_COMMON,
            },
            dependencies=[SUBMIT, JSON_ONLY],
            summary=f"Queue a {job_kind.name} job",
            description=_describe(job_kind),
            name=f"create_{job_kind.name}",
            operation_id=f"create_{job_kind.name}",
        )
    return routes


def _create_endpoint(job_kind: JobKind) -> Any:
    async def create(request: Request, params: BaseModel) -> Response:
        # FastAPI validated the body against the kind's model (`{}` for the defaults).
        return await _submit(request, job_kind, params.model_dump(mode="json"))

    # The body's type is the kind's model, set here since it is only known at run time.
    create.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
            inspect.Parameter(
                "params",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=Annotated[job_kind.params, Body()],
            ),
        ],
        return_annotation=Response,
    )
    return create


def _describe(job_kind: JobKind) -> str:
    doc = inspect.cleandoc(job_kind.handler.__doc__ or "").split("\n\n", 1)[0]
    where = f"Runs on queue `{job_kind.queue}`; poll `Location` (or stream its events) for progress."
    return f"{doc}\n\n{where}" if doc else where


def _json(model: BaseModel, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialised here, not by FastAPI: its response_model pass would dump the model and validate
    it again, a cost every submit, status poll and listing pays for nothing (the model is built just
    before). `response_model` stays on the route for the OpenAPI schema."""
    return Response(
        model.model_dump_json(), status_code=status_code, media_type="application/json", headers=headers
    )


@router.get(
    "",
    response_model=JobList,
    dependencies=[READ],
    responses={404: {"description": "Unknown kind; the answer lists the known ones"}, **_COMMON},
)
def list_jobs(
    request: Request,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    canary: Annotated[bool, Query(description="include the canary jobs `stack doctor` sent")] = False,
) -> Response:
    """Most recent jobs first, optionally filtered by status and kind."""
    service = _service(request)
    if kind is not None:
        _kind(service, kind)
    jobs = [
        JobDetail.of(j) for j in service.store.list(status=status_, kind=kind, limit=limit, canaries=canary)
    ]
    return _json(JobList(jobs=jobs, count=len(jobs)))


@router.get("/{task_id}", response_model=JobDetail, dependencies=[READ], responses={**_NOT_FOUND, **_COMMON})
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
    dependencies=[READ],
    responses={
        **_COMMON,
        **_NOT_FOUND,
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: job` with JSON data; each event has an `id:`, the stream starts "
            "with `retry:` and ends after STACK_SSE_MAX_SECONDS (EventSource reconnects)",
        },
        204: {"description": "`Last-Event-ID` is the finished job: nothing more will come"},
        503: {"description": "STACK_SSE_MAX_STREAMS streams open on this process; see `Retry-After`"},
    },
)
async def job_events(task_id: str, request: Request) -> Response:
    """Server-sent events: the job now, then each progress update, then the finished job. A
    reconnect with `Last-Event-ID` skips the row if it has not changed since that event."""
    service = _service(request)

    async def load() -> JobDetail | None:
        job = await run_in_threadpool(service.store.get, task_id)
        return JobDetail.of(job) if job is not None else None

    job = await load()
    if job is None:
        raise HTTPException(404, detail=f"no job with id {task_id!r}")
    last_event_id = request.headers.get("last-event-id")
    if already_finished(job, last_event_id):
        return Response(status_code=status.HTTP_204_NO_CONTENT)  # EventSource stops reconnecting
    hub = request.app.state.events
    slot = hub.admit()
    if slot is None:
        raise HTTPException(
            503,
            detail={
                "message": f"this API process already serves {hub.max_streams} event streams "
                f"(STACK_SSE_MAX_STREAMS); retry in {RETRY_AFTER_S} s or poll GET /api/jobs/{task_id}",
                "max_streams": hub.max_streams,
            },
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    settings = service.runtime.settings
    stream = stream_job_events(
        job_id=task_id,
        load=load,
        hub=hub,
        disconnected=request.is_disconnected,
        max_seconds=settings.sse_max_seconds,
        last_event_id=last_event_id,
    )
    # no-cache and X-Accel-Buffering: proxies (nginx) must pass events on as they come.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStreamResponse(stream, slot=slot, headers=headers)


@router.post(
    "/{task_id}/cancel",
    response_model=JobDetail,
    dependencies=[CANCEL],
    responses={**_NOT_FOUND, 409: {"description": "The job already finished"}, **_COMMON},
)
def cancel_job(task_id: str, request: Request) -> Response:
    """Revoke a job. A queued job never runs; a running one stops at its next progress report."""
    job = _service(request).cancel(task_id)
    if job is None:
        raise HTTPException(404, detail=f"no job with id {task_id!r}")
    if job.status is not JobStatus.REVOKED:
        raise HTTPException(409, detail=f"job {task_id} already finished as {job.status.value}")
    return _json(JobDetail.of(job))


@router.get(
    "/{task_id}/files/{path:path}",
    response_class=FileResponse,
    dependencies=[READ],
    responses={404: {"description": "No such job, or no such file among its outputs"}, **_COMMON},
)
def job_file(task_id: str, path: str, request: Request) -> FileResponse:
    """A file the job wrote into its outputs folder (e.g. the PNG of a `generate_image` job)."""
    service = _service(request)
    if service.store.get(task_id) is None:
        raise HTTPException(404, detail=f"no job with id {task_id!r}")
    outputs = outputs_dir(service.runtime.settings.effective_storage_dir, task_id).resolve()
    wanted = (outputs / path).resolve()
    if not wanted.is_relative_to(outputs) or not wanted.is_file():  # no way out of the folder
        raise HTTPException(404, detail=f"job {task_id} has no file {path!r}")
    return FileResponse(wanted)


# Registered last: for any other method on /api/jobs/<id>, the job route answers 405 with Allow: GET.
@router.post("/{name}", include_in_schema=False)
def not_a_kind(name: str, request: Request) -> Response:
    """POST to `/api/jobs/<name>` where no kind is called `name`: that resource (a job, or
    nothing) can only be read. 405 as HTTP says, with the kinds that can be posted to."""
    known = _service(request).registry.names()
    detail = {"message": f"unknown job kind {name!r}; known kinds: {', '.join(known)}", "known_kinds": known}
    raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, detail=detail, headers={"Allow": "GET"})
