"""Request bodies against the real API process, under each HTTP implementation uvicorn runs
(`--http h11`, `--http httptools`): raw bytes over a socket, as a client or a request-smuggling
proxy may send them. A body over STACK_MAX_BODY_BYTES is a 413, a request framed two ways at once
is a 400, and none of them creates a job, whatever the headers claim."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stack.testing.fixtures import StartStack
from stack.testing.procfile import ProcfileStack
from tests.e2e.conftest import E2E_ENV

pytestmark = pytest.mark.e2e

LIMIT = 2048  # STACK_MAX_BODY_BYTES; its minimum is 1024
# `{}` (the demo kind's defaults) padded with JSON whitespace: a job if it got through, so the
# only thing that can refuse it is its size.
OVERSIZED = b"{" + b" " * (2 * LIMIT) + b"}"


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {**E2E_ENV, "STACK_MAX_BODY_BYTES": str(LIMIT)}


@pytest.fixture(scope="module", params=["h11", "httptools"])
def http(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def api(
    http: str, stack_start: StartStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcfileStack]:
    """The API alone (no worker: a job that got through would stay pending, and count all the same),
    one HTTP implementation at a time."""
    procfile = tmp_path_factory.mktemp(f"procfile-{http}") / "Procfile"
    procfile.write_text(f"web: stack run api -- --http {http}\n")
    stack = stack_start(procfile)
    cmdline = Path(f"/proc/{stack['web'].pid}/cmdline")
    if cmdline.exists():  # `stack run` execs uvicorn in place: its argv says what it runs
        assert f"--http\0{http}\0" in cmdline.read_text(), cmdline.read_text().split("\0")
    yield stack
    stack.teardown()  # before the next implementation starts: one API at a time


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(stack: ProcfileStack, raw: bytes, *, timeout: float = 10.0) -> Answer:
    """Send `raw` as is and read one response (to its Content-Length, or to the close)."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=timeout) as sock:
        sock.sendall(raw)
        # No shutdown(SHUT_WR): uvicorn takes a half-close for a disconnect and drops the answer.
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before an answer: {data!r}\n{stack.logs()}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)
        }
        length = int(headers["content-length"]) if "content-length" in headers else None
        while length is None or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return Answer(int(status_line.split()[1]), headers, body)


def request(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(body: bytes, size: int = 1000) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


def job_count(stack: ProcfileStack) -> int:
    response = httpx.get(f"{stack.api_url}/api/jobs", params={"limit": 500}, timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


def test_chunked_with_a_small_content_length_is_400(api: ProcfileStack, http: str) -> None:
    before = job_count(api)
    answer = exchange(
        api,
        request("/api/jobs/demo", "Transfer-Encoding: chunked", "Content-Length: 2") + chunked(OVERSIZED),
    )
    assert answer.status == 400, answer
    if http == "h11":  # h11 frames it as chunked and passes both headers on: our middleware answers
        assert b"Transfer-Encoding and Content-Length" in answer.body, answer
    # (httptools' parser refuses it before the app: "Invalid HTTP request received.")
    assert job_count(api) == before


def test_chunked_over_the_limit_is_413_and_under_it_a_job(api: ProcfileStack) -> None:
    before = job_count(api)
    answer = exchange(api, request("/api/jobs/demo", "Transfer-Encoding: chunked") + chunked(OVERSIZED))
    assert answer.status == 413, answer
    assert b"STACK_MAX_BODY_BYTES" in answer.body and answer.headers.get("connection") == "close"
    assert job_count(api) == before

    # The same framing within the limit goes through: the refusal above was the size.
    small = exchange(
        api, request("/api/jobs/demo", "Transfer-Encoding: chunked", "Connection: close") + chunked(b"{}")
    )
    assert small.status == 202, small
    assert job_count(api) == before + 1


def test_a_declared_length_over_the_limit_is_413_without_waiting_for_the_body(api: ProcfileStack) -> None:
    before = job_count(api)
    # Ten bytes of the 100000 announced: answered at once, or this would time out.
    answer = exchange(api, request("/api/jobs/demo", "Content-Length: 100000") + b"{}" + b" " * 8, timeout=5)
    assert answer.status == 413, answer
    assert job_count(api) == before


def test_bytes_past_a_short_content_length_reach_no_handler(api: ProcfileStack) -> None:
    # 10 bytes declared, 4000 sent: the server frames the body by its length (`{"seconds"`, not
    # JSON: 422), and what follows is no request. Nothing adds up to a job.
    before = job_count(api)
    lie = b'{"seconds": 0}' + b" " * (2 * LIMIT)
    answer = exchange(api, request("/api/jobs/demo", "Content-Length: 10") + lie)
    assert answer.status in (400, 422), answer
    assert job_count(api) == before
