"""Request body size limit, enforced before and while the body streams in."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from service.schemas import PROBLEM_MEDIA_TYPE

# Multipart framing (boundaries, part headers, the other small fields) on top of the file
# itself; 64 KiB is far more than a client legitimately sends around one upload.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

# An over-limit body is read and dropped, up to this many times the path's limit, before the
# 413 goes out: most clients (browsers, requests, httpx) send the whole body before reading
# the answer, and a server that closes on unread data resets the connection, so they would
# see a reset instead of the 413. Past it the connection is closed unread.
DRAIN_LIMIT_FACTOR = 4

# POST paths whose form carries two files (image + mask, image_a + image_b); each file may
# reach the upload limit. tests/service/test_bad_corpus.py checks this against the schema.
UPLOADS_PER_PATH: Mapping[str, int] = {"/attention/correct": 2, "/faces/verify": 2}


def configure_uploads(spool_bytes: int) -> None:
    """File parts up to ``spool_bytes`` stay in memory while a form is parsed; larger ones
    are spooled to the temporary directory.

    Starlette spools past 1 MiB, and then every 64 KiB chunk written and the final read is
    a trip to a worker thread and back: at one client a 2.8 MB photo's request took 1.3-5.1
    ms longer that way, with 2.3-5.8 ms more server CPU, in the three rounds of
    ``benchmarks/results/sizes-grain6.json`` ("service, 1 MiB spool"). Starlette reads this
    class attribute for every form (there is no per-app setting), so it holds for the whole
    process."""
    MultiPartParser.spool_max_size = spool_bytes


@dataclass(frozen=True)
class BodyLimits:
    """The largest request body each path accepts, in bytes: its uploads at the per-upload
    limit plus the form's framing. A form with two files (image + mask, image_a + image_b)
    may carry twice the limit."""

    max_upload_bytes: int  # per uploaded file (settings.max_upload_bytes)
    overhead_bytes: int = MULTIPART_OVERHEAD_BYTES  # boundaries, part headers, small fields
    # path -> number of file fields, where more than one
    uploads: Mapping[str, int] = field(default_factory=lambda: UPLOADS_PER_PATH)

    def for_path(self, path: str) -> int:
        return self.uploads.get(path, 1) * self.max_upload_bytes + self.overhead_bytes

    def describe(self, path: str) -> str:
        """The limit for ``path`` and how it is made up, for a 413's detail."""
        count = self.uploads.get(path, 1)
        files = "one upload" if count == 1 else f"{count} uploads"
        return (
            f"the limit is {self.for_path(path)} bytes ({files} of at most "
            f"{self.max_upload_bytes} bytes and {self.overhead_bytes} bytes of form framing)"
        )


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once the body passes the limit."""


class BodySizeLimitMiddleware:
    """Answers 413 problem+json for bodies over the path's limit (``limits``).

    A declared Content-Length over the limit is refused before the app reads anything; a
    body without one (chunked) or lying about it is counted as it streams and cut off at
    the limit, so a huge body is never buffered. Before the 413, the rest of the body is
    read and dropped (up to DRAIN_LIMIT_FACTOR times the limit) so that a client still
    uploading can read the answer; a client that asked for ``100-continue`` is answered at
    once, having sent nothing yet.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = self.limits.for_path(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            reason = f"the request body is {declared} bytes"
            if Headers(scope=scope).get("expect", "").lower() == "100-continue":
                await self._reject(send, reason, path, close=True)  # nothing sent yet
                return
            drained = declared <= DRAIN_LIMIT_FACTOR * limit and await drain_body(
                receive, 0, DRAIN_LIMIT_FACTOR * limit
            )
            await self._reject(send, reason, path, close=not drained)
            return

        received = 0
        exceeded = False
        ended = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded, ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if received > limit:
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
            drained = ended or await drain_body(receive, received, DRAIN_LIMIT_FACTOR * limit)
            await self._reject(
                send, f"the request body exceeds {limit} bytes", path, close=not drained
            )

    async def _reject(self, send: Send, reason: str, path: str, *, close: bool) -> None:
        """413 problem+json; ``close`` when the body was not read to its end (the
        connection cannot carry another request)."""
        error = PayloadTooLarge(f"{reason}; {self.limits.describe(path)}")
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
                    *([(b"connection", b"close")] if close else []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def drain_body(receive: Receive, received: int, cap: int) -> bool:
    """Read and drop the rest of a body, ``received`` bytes of which are already read; True
    when it ended within ``cap`` bytes in all, False past it or when the client left."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        received += len(message.get("body", b""))
        if received > cap:
            return False
        if not message.get("more_body", False):
            return True


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
