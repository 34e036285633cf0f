"""Request body size limit, enforced before and while the body streams in."""

from __future__ import annotations

import contextlib
import json
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PROBLEM_MEDIA_TYPE, PayloadTooLarge

# Multipart framing (boundaries, part headers, the other small fields) on top of the file
# itself; 64 KiB is far more than a client legitimately sends around one upload.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once the body passes the limit."""


class BodySizeLimitMiddleware:
    """Answers 413 problem+json for bodies over ``max_body_bytes``.

    A declared Content-Length over the limit is refused before reading anything; a body
    without one (chunked) or lying about it is counted as it streams and cut off at the
    limit, so a huge body is never buffered.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._reject(send, f"the request body is {declared} bytes")
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # Whatever the app made of the interrupted body (FastAPI turns it into a 400
            # "error parsing the body"), the caller gets the real reason instead.
            if exceeded:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not response_started:
            await self._reject(send, f"the request body exceeds {self.max_body_bytes} bytes")

    async def _reject(self, send: Send, reason: str) -> None:
        error = PayloadTooLarge(f"{reason}; the limit is {self.max_body_bytes} bytes")
        body = json.dumps(
            {
                "type": error.type,
                "title": error.title,
                "status": int(error.status),
                "detail": str(error),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": int(HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
