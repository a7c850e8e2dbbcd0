"""Refuse request bodies over a size limit with 413, before they reach memory or a handler.

The limit is enforced on the bytes that actually arrive, whatever the headers claim: servers do
not agree on what a request with both `Transfer-Encoding: chunked` and `Content-Length` means
(h11 reads it as chunked and passes both headers on; llhttp refuses it), so no header is trusted
to bound a body. A declared length over the limit is still refused before a byte is read.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodyTooLarge(Exception):
    """Raised from `receive` to stop an app mid-body; never leaves this middleware."""


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = [value for name, value in scope["headers"] if name == b"content-length"]
        if lengths and any(name == b"transfer-encoding" for name, _ in scope["headers"]):
            # RFC 9112 §6.3: a request smuggling vector (a proxy in front may frame it by the
            # other header). A server that lets it through leaves it to us; nobody sends it in good faith.
            await self._answer(
                send,
                400,
                "request has both Transfer-Encoding and Content-Length; send only one (RFC 9112 section 6.3)",
            )
            return
        if not all(value.isdigit() for value in lengths):  # servers refuse these too; in case one does not
            await self._answer(send, 400, "Content-Length is not a number")
            return
        if any(int(value) > self.max_bytes for value in lengths):
            await self._refuse(send)  # declared too large: refused before a byte is read
            return

        # Streamed through, counted as it arrives: the app sees at most `max_bytes` of body and
        # never its end, so a handler never runs on a refused body, and nothing is buffered here.
        received = 0
        started = False  # the app began its own answer: too late for a 413
        refused = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    # Raising is the only way to stop an app that is reading; what it answers to
                    # the error (FastAPI: a 400) is dropped below, the client has its 413.
                    raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            # _BodyTooLarge, or whatever a middleware in between made of it (an ExceptionGroup...).
            # The 413 went out; if the app had already begun answering, the server sees an
            # unfinished response and closes the connection, which is all that is left to do.
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        await self._answer(
            send, 413, f"request body larger than {self.max_bytes} bytes (STACK_MAX_BODY_BYTES)"
        )

    @staticmethod
    async def _answer(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is never read, so the connection cannot carry another
                    # request: its next bytes would be parsed as one.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
