"""`/ui`: a live jobs page served by the API itself — plain HTML, CSS and JS shipped in the package.

No CDN and no build step: the page must work on a laptop offline and behind a firewall, exactly
like /docs. The page itself is public (it holds no data); every data call it makes sends the
token the user typed (`Authorization: Bearer`), so it sits behind the same authentication as the
API. The Content-Security-Policy lets it load nothing but its own files: a job message or result
can never pull in a script.

The only data route here is what the page needs and the jobs API does not show: a job's params
(long strings cut, as a 20 MB base64 image is no use in a table).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from stack.api.auth import Scope, require

STATIC_DIR = Path(__file__).with_name("ui") / "static"
SHOWN_CHARS = 300  # a param string longer than this is cut in the page's detail view

# 'self' only: no inline script, no third-party origin. img-src allows blob: because a job's
# picture is fetched with the token and shown from a blob (an <img src> cannot send a header).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Cache-Control": "no-cache",  # revalidate: an upgraded stack must not run yesterday's script
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Module scripts are refused unless served as JavaScript, whatever the platform's mimetypes say.
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

router = APIRouter(include_in_schema=False)


def _static_files() -> dict[str, Path]:
    # Listed once: a request names a file of this folder or gets a 404, never a path.
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}


FILES = _static_files()


def _serve(path: Path) -> FileResponse:
    media_type = MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    return FileResponse(path, media_type=f"{media_type}; charset=utf-8", headers=HEADERS)


@router.get("/ui", name="ui")
def page() -> FileResponse:
    return _serve(FILES["index.html"])


@router.get("/ui/static/{name}", name="ui_static")
def static(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise HTTPException(404, detail=f"no file {name!r} in the UI")
    return _serve(path)


@router.get("/ui/api/jobs/{task_id}/params", dependencies=[Depends(require(Scope.READ))])
async def job_params(task_id: str, request: Request) -> JSONResponse:
    """The params a job was submitted with, for the page's detail view; READ scope, like the job."""
    job = await run_in_threadpool(request.app.state.jobs.store.get, task_id)
    if job is None:
        raise HTTPException(404, detail=f"no job with id {task_id!r}")
    return JSONResponse({"task_id": task_id, "params": shorten(job.params or {})})


def shorten(value: Any, *, limit: int = SHOWN_CHARS) -> Any:
    """`value` with every string over `limit` characters cut, saying how long it was."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}… ({len(value):,} characters)"
    if isinstance(value, dict):
        return {k: shorten(v, limit=limit) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten(v, limit=limit) for v in value]
    return value
