"""BodySizeLimit driven directly as ASGI: the server's messages are scripted, so each case shows
what the app sees (and what the client gets) whatever the server did with the headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from stack.api.limits import BodySizeLimit

LIMIT = 1024


def scope(*headers: tuple[bytes, bytes], method: str = "POST") -> Scope:
    return {"type": "http", "method": method, "path": "/api/jobs/demo", "headers": list(headers)}


def chunks(*sizes: int) -> list[Message]:
    """What a server hands over for a body arriving in pieces of these sizes."""
    return [
        {"type": "http.request", "body": b"x" * size, "more_body": i < len(sizes) - 1}
        for i, size in enumerate(sizes)
    ]


class Server:
    """A scripted ASGI server: `receive` replays its messages, `send` records the answer."""

    def __init__(self, messages: list[Message]) -> None:
        self.pending = list(messages)
        self.sent: list[Message] = []
        self.reads = 0

    async def receive(self) -> Message:
        self.reads += 1
        if self.pending:
            return self.pending.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more; the tests never get here
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m["status"] for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1, f"two answers started: {self.sent}"
        return starts[0] if starts else None

    @property
    def detail(self) -> str:
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return str(json.loads(body)["detail"])

    def header(self, name: bytes) -> bytes | None:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"]).get(name)


class App:
    """Reads the whole body like FastAPI does, answers 200 with its size; notes how far it got."""

    def __init__(self, *, on_receive_error: int | None = None) -> None:
        self.called = False
        self.handled: bytes | None = None  # set only once the body's end arrived: the "handler"
        self.seen = 0
        self.on_receive_error = on_receive_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        body = b""
        try:
            while True:
                message = await receive()
                body += message.get("body", b"")
                self.seen = len(body)
                if not message.get("more_body", False):
                    break
        except Exception:
            if self.on_receive_error is None:
                raise
            # FastAPI's way: a failing body read becomes its own error answer.
            await send({"type": "http.response.start", "status": self.on_receive_error, "headers": []})
            await send({"type": "http.response.body", "body": b'{"detail": "error parsing the body"}'})
            return
        self.handled = body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps({"detail": len(body)}).encode()})


def run(app: Callable[[Scope, Receive, Send], Awaitable[None]], request: Scope, server: Server) -> None:
    middleware = BodySizeLimit(app, max_bytes=LIMIT)
    asyncio.run(asyncio.wait_for(middleware(request, server.receive, server.send), timeout=5))


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    app, server = App(), Server(chunks(LIMIT + 1))
    run(app, scope((b"content-length", str(LIMIT + 1).encode())), server)
    assert server.status == 413 and "STACK_MAX_BODY_BYTES" in server.detail
    assert str(LIMIT) in server.detail
    assert server.header(b"connection") == b"close"
    assert not app.called and server.reads == 0


@pytest.mark.parametrize("sizes", [(LIMIT + 1,), (400, 400, 400), (1, LIMIT)])
def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(sizes: tuple[int, ...]) -> None:
    app, server = App(on_receive_error=400), Server(chunks(*sizes))
    run(app, scope((b"transfer-encoding", b"chunked")), server)
    assert server.status == 413  # the app's own 400 about the failed read is dropped
    assert app.handled is None and app.seen <= LIMIT


def test_a_body_longer_than_its_declared_length_is_still_counted() -> None:
    # A server that trusts neither header the way we would (or a buggy one) hands over more.
    app, server = App(on_receive_error=400), Server(chunks(10, LIMIT))
    run(app, scope((b"content-length", b"10")), server)
    assert server.status == 413 and app.handled is None and app.seen <= LIMIT


@pytest.mark.parametrize(
    "headers",
    [
        ((b"transfer-encoding", b"chunked"), (b"content-length", b"10")),
        ((b"content-length", b"10"), (b"transfer-encoding", b"gzip, chunked")),
    ],
)
def test_transfer_encoding_with_content_length_is_400(headers: tuple[tuple[bytes, bytes], ...]) -> None:
    app, server = App(), Server(chunks(5000))
    run(app, scope(*headers), server)
    assert server.status == 400 and "Transfer-Encoding and Content-Length" in server.detail
    assert server.header(b"connection") == b"close"
    assert not app.called and server.reads == 0


def test_an_unreadable_content_length_is_400() -> None:
    app, server = App(), Server(chunks(5))
    run(app, scope((b"content-length", b"5, 5")), server)
    assert server.status == 400 and not app.called


@pytest.mark.parametrize(
    ("headers", "sizes"),
    [
        (((b"content-length", str(LIMIT).encode()),), (LIMIT,)),  # exactly the limit
        (((b"transfer-encoding", b"chunked"),), (500, 500, LIMIT - 1000)),
        ((), (0,)),  # no body at all
    ],
)
def test_bodies_within_the_limit_reach_the_app_whole(
    headers: tuple[tuple[bytes, bytes], ...], sizes: tuple[int, ...]
) -> None:
    app, server = App(), Server(chunks(*sizes))
    run(app, scope(*headers), server)
    assert server.status == 200 and app.handled == b"x" * sum(sizes)


def test_bodies_stream_through_unbuffered() -> None:
    """The app gets each piece as it arrives, not once the middleware has read the whole body."""

    async def scenario() -> list[str]:
        events: list[str] = []
        arrived: asyncio.Queue[Message] = asyncio.Queue()

        async def receive() -> Message:
            message = await arrived.get()
            events.append(f"server {len(message['body'])}")
            return message

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            while True:
                message = await receive()
                events.append(f"app {len(message['body'])}")
                if not message["more_body"]:
                    break
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def send(message: Message) -> None:
            events.append(message["type"])

        middleware = BodySizeLimit(app, max_bytes=LIMIT)
        task = asyncio.create_task(middleware(scope((b"transfer-encoding", b"chunked")), receive, send))
        for piece in chunks(100, 200):
            await arrived.put(piece)
            await asyncio.sleep(0.01)
            events.append("tick")
        await asyncio.wait_for(task, timeout=5)
        return events

    events = asyncio.run(scenario())
    assert events[:6] == ["server 100", "app 100", "tick", "server 200", "app 200", "http.response.start"]


def test_an_app_that_reads_again_after_the_refusal_gets_no_more_body() -> None:
    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        for _ in range(3):
            try:
                await receive()
            except Exception:
                continue
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    server = Server(chunks(LIMIT + 1, 10, 10))
    run(stubborn, scope((b"transfer-encoding", b"chunked")), server)
    assert server.status == 413 and server.reads == 1


def test_too_late_for_a_413_the_app_is_still_stopped() -> None:
    """An app that answers while it reads: its answer stands, the body read fails past the limit."""
    outcome: dict[str, Any] = {}

    async def early(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception as exc:
            outcome["error"] = exc
        await send({"type": "http.response.body", "body": b"partial"})

    server = Server(chunks(600, 600))
    run(early, scope((b"transfer-encoding", b"chunked")), server)
    assert server.status == 200 and "error" in outcome
    assert [m.get("body") for m in server.sent if m["type"] == "http.response.body"] == [b"partial"]


def test_other_scopes_pass_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def never() -> Message:
        raise AssertionError("no receive expected")

    async def ignore(message: Message) -> None:
        raise AssertionError("no send expected")

    asyncio.run(BodySizeLimit(app, max_bytes=LIMIT)({"type": "lifespan"}, never, ignore))
    assert seen == ["lifespan"]
