"""Request body size limit, enforced before and while the body streams in."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    ClientClosedRequest,
    FormContentCoding,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    UnclosedForm,
    UnsupportedTransferCoding,
    echo,
)
from service.metrics import Metrics
from service.paths import RouteTemplates, route_path
from service.schemas import PROBLEM_MEDIA_TYPE

# Multipart framing (boundaries, part headers, the other small fields) on top of the file
# itself; 64 KiB is far more than a client legitimately sends around one upload.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

# What receiving a body costs beyond its bytes, reserved with each by UploadGateMiddleware:
# uvicorn buffers up to 64 KiB of a connection's unread body before it stops reading, and the
# request's own objects (scope, task, parser) come on top. It also keeps thousands of tiny
# bodies from passing as free.
BODY_OVERHEAD_BYTES = 64 * 1024

# Where UploadGateMiddleware leaves, in the request's scope, the callable that gives its
# reservation back (release_body).
RELEASE_BODY_SCOPE_KEY = "vision.release_body"
# ...and the one that makes it cover a larger body (reserve_at_least).
RESERVE_AT_LEAST_SCOPE_KEY = "vision.reserve_at_least"

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
    # The paths that take a form (their uploads plus framing; UploadGateMiddleware watches
    # their bodies for the form's end); any other body (V2 JSON) may be max_upload_bytes,
    # as sent or inflated. None: every path is a form's.
    form_paths: Collection[str] | None = None

    def is_form(self, path: str) -> bool:
        return self.form_paths is None or path in self.form_paths

    def for_path(self, path: str) -> int:
        if not self.is_form(path):
            return self.max_upload_bytes
        return self.uploads.get(path, 1) * self.max_upload_bytes + self.overhead_bytes

    def describe(self, path: str) -> str:
        """The limit for ``path`` and how it is made up, for a 413's detail."""
        if not self.is_form(path):
            return f"the limit is {self.for_path(path)} bytes (VISION_MAX_UPLOAD_BYTES)"
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

    def __init__(self, app: ASGIApp, limits: BodyLimits, router: Router | None = None) -> None:
        self.app = app
        self.limits = limits
        # To tell a path no route takes (its answer is the app's own 404, 405 or redirect,
        # not a 413 about an upload the path never takes).
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        limit = self.limits.for_path(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            release_body(scope)
            reason = f"the request body is {declared} bytes"
            if expects_continue(scope):
                drained = False  # nothing sent yet: answered at once, and closed
            else:
                drained = declared <= DRAIN_LIMIT_FACTOR * limit and await drain_body(
                    receive, 0, DRAIN_LIMIT_FACTOR * limit
                )
            if self.router is not None and not self._routed(scope):
                await self.app(scope, _no_body(receive), _closing(send) if not drained else send)
            else:
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
            release_body(scope)
            drained = ended or await drain_body(receive, received, DRAIN_LIMIT_FACTOR * limit)
            await self._reject(
                send, f"the request body exceeds {limit} bytes", path, close=not drained
            )

    def _routed(self, scope: Scope) -> bool:
        """Whether a route takes this request, path and method (Starlette's own match), a
        HEAD as the GET it becomes inside (HeadAsGetMiddleware: FastAPI's GET routes do
        not take HEAD themselves)."""
        assert self.router is not None
        if scope.get("method") == "HEAD":
            scope = {**scope, "method": "GET"}
        return any(route.matches(scope)[0] is Match.FULL for route in self.router.routes)

    async def _reject(self, send: Send, reason: str, path: str, *, close: bool) -> None:
        """413 problem+json; ``close`` when the body was not read to its end (the
        connection cannot carry another request)."""
        error = PayloadTooLarge(f"{reason}; {self.limits.describe(path)}")
        await send_problem(send, error, close=close, path=path)


def _no_body(receive: Receive) -> Receive:
    """``receive`` of a body already read and dropped (or never to be read): an empty last
    piece once, then the server's own ``receive``, which waits for the disconnect (a
    response that listens for one, as Starlette's file responses do, must not be answered
    at once forever: that loop never yielded, and the server hung)."""
    given = False

    async def no_body() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": b"", "more_body": False}

    return no_body


def closing(start: Message) -> Message:
    """An ``http.response.start`` message saying ``Connection: close`` (in place of any
    Connection header it had): uvicorn closes the connection after the answer."""
    headers = [(n, v) for n, v in start.get("headers", []) if n.lower() != b"connection"]
    return {**start, "headers": [*headers, (b"connection", b"close")]}


def _closing(send: Send) -> Send:
    """``send`` that marks the answer ``Connection: close`` (its body was not read)."""

    async def closing_send(message: Message) -> None:
        await send(closing(message) if message["type"] == "http.response.start" else message)

    return closing_send


async def send_problem(send: Send, error: ServiceError, *, close: bool, path: str) -> None:
    """Answer ``error`` to a request for ``path`` as problem+json with its headers, straight
    through ``send`` (from a middleware, outside the app's exception handlers); ``close``
    when the body was not read to its end (the connection cannot carry another request)."""
    body = json.dumps(error.document(path)).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
        *([(b"connection", b"close")] if close else []),
    ]
    await send({"type": "http.response.start", "status": int(error.status), "headers": headers})
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


class FormEnd:
    """Watches a ``multipart/form-data`` body, piece by piece, for its close delimiter
    (RFC 2046: CRLF, two hyphens, the boundary, two hyphens). python-multipart stops at it
    and ignores an epilogue after it, but a body that ends before it raises nothing: the
    part still being read is dropped. ``closed`` is None until the body has all come."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"\r\n--" + boundary + b"--"
        # The last bytes seen, for a delimiter split between pieces; the CRLF stands for
        # the body's start, where a form of no parts begins with its close delimiter.
        self._tail = b"\r\n"
        self._seen = False
        self.closed: bool | None = None

    @classmethod
    def of(cls, scope: Scope) -> FormEnd | None:
        """One for a multipart form with a boundary, None for any other body."""
        content_type = Headers(scope=scope).get("content-type", "")
        media_type, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            return None
        return cls(boundary)

    def feed(self, piece: bytes, *, last: bool) -> None:
        if not self._seen:
            # Only the pieces' seams get copied; a scan of a 64 KiB piece takes about 4 us.
            keep = len(self.delimiter) - 1
            seam = self._tail + piece[:keep]
            self._seen = self.delimiter in seam or self.delimiter in piece
            self._tail = (self._tail + piece)[-keep:] if len(piece) < keep else piece[-keep:]
        if last:
            self.closed = self._seen

    def error(self) -> UnclosedForm:
        boundary = self.delimiter[4:-2].decode("latin-1")
        return UnclosedForm(
            f"the multipart body ended before its closing boundary ({echo('--' + boundary + '--')}"
            " on a line of its own); the part being read when it ended was dropped"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyStalled(Exception):
    """Raised into the app from ``receive`` when the next piece of the body is late."""


class BodyUnclosed(Exception):
    """Raised into the app from ``receive`` in place of a multipart body's last piece when
    the body lacks its close delimiter: the form parser then closes the file it was writing,
    which a body that merely ends leaves open."""


class UploadGateMiddleware:
    """At most ``max_bytes`` of request bodies in flight at once, none of them waiting more
    than ``timeout_s`` for its next piece.

    While a request with a body is received and handled it holds the body: a form's file
    parts up to the spool size in memory and the rest in the temporary directory (a tmpfs
    in the container, memory too), a V2 JSON body whole. Nothing else bounds how many are
    received at once (uvicorn takes every connection), so each request with a body reserves
    its declared length (the path's limit when it declares none: chunked) plus
    BODY_OVERHEAD_BYTES until it is answered, or until a refusal inside starts to read and
    drop its body (``release_body``). One that would take the reservations past
    ``max_bytes`` is refused without buffering its body: the body is read and dropped, then
    503 problem+json with Retry-After, so that a client that sends its whole body before
    reading can read the answer (at once and closed, unread, when the client waits for 100
    Continue). With nothing reserved any request passes, so a budget under one body still
    serves one at a time. Requests without a body (probes, scrapes, every GET) and bodies
    declared over the path's limit (the size limit's 413, read and dropped) reserve nothing
    and pass.

    uvicorn waits for a body as long as the client keeps its socket open; here a body that
    stops arriving for ``timeout_s`` is answered 408 (whatever the app made of the cut-off
    body is dropped) and the connection closed, which frees its reservation and memory. A
    client that disconnects before its body has all come is logged and counted as 499,
    whatever the app made of the cut-off body (FastAPI's form parser: a 400).
    Once the body is complete the app's own waits on ``receive`` (for a disconnect) are
    left alone.

    A request to one of ``keyed_paths`` (templates, as routes have them) that ``check_key``
    refuses is answered with that error (401) before it reserves anything: FastAPI reads a
    form before the routes' key check runs, so without this a client with no key could hold
    the budget with bodies it trickles in. Its body is read and dropped as for a 503, and
    so is that of a body sent with a transfer coding besides chunked (400). A multipart
    body sent to a form path of ``limits`` that ends before its close delimiter is answered
    400 too (FormEnd), not with whatever the app makes of a form missing its last part.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: BodyLimits,
        max_bytes: int,
        timeout_s: float,
        metrics: Metrics | None = None,
        check_key: Callable[[Request], None] | None = None,
        keyed_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.limits = limits
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.check_key = check_key
        self.keyed_paths = RouteTemplates(keyed_paths)
        self.reserved = 0  # bytes reserved by the requests now past this middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _declared_body(scope)
        if scope["type"] != "http" or declared == 0:
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        limit = self.limits.for_path(path)
        # A declared length over the limit is refused by the size limit (inside) and read
        # and dropped there, never buffered: it reserves nothing, so it gets its 413.
        oversize = declared is not None and declared > limit
        reservation = 0 if oversize else (declared or limit) + BODY_OVERHEAD_BYTES
        ended = False
        stalled = False
        gone = False  # the client left before its body had all come
        unclosed = False  # a multipart body ended before its close delimiter
        # The body is read only to be dropped: by the gate's own refusals, or by one inside
        # (release_body); watched for a form's end only while the app may parse it.
        dropping = True
        received = 0
        response_started = False

        # Only on a route that parses its body as a form is a missing close delimiter the
        # client's mistake (a V2 body under a multipart label is read as JSON).
        form_end = FormEnd.of(scope) if self.limits.is_form(path) else None

        async def timed_receive() -> Message:
            nonlocal ended, stalled, gone, unclosed, received
            if stalled:  # the body is given up; no second wait
                raise BodyStalled
            if ended or response_started:
                return await receive()
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                stalled = True
                raise BodyStalled from None
            gone = message["type"] == "http.disconnect"
            ended = gone or not message.get("more_body", False)
            body = message.get("body", b"")
            received += len(body)
            # Past the path's limit the size limit (inside) answers 413, whatever the form.
            if form_end is not None and not (gone or dropping) and received <= limit:
                form_end.feed(body, last=ended)
                if form_end.closed is False:
                    unclosed = True
                    raise BodyUnclosed
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if stalled or gone or unclosed:
                # The app's answer to a body cut short: the 408, 499 or 400 instead.
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        # A client waiting for 100 Continue has sent nothing: a refusal is answered at once,
        # and the connection closed.
        drain_limit = None if expects_continue(scope) else limit
        refused = self._unauthorized(scope, path)
        if refused is not None:
            self._count("unauthorized")
            await self._refuse(timed_receive, send, path, drain_limit, refused)
            return
        if declared is None and (coding := _unsupported_coding(scope)) is not None:
            self._count("transfer_coding")
            await self._refuse(timed_receive, send, path, drain_limit, coding)
            return
        if self.limits.is_form(path) and (encoded := _form_content_coding(scope)) is not None:
            self._count("content_coding")
            await self._refuse(timed_receive, send, path, drain_limit, encoded)
            return
        if reservation and self.reserved and self.reserved + reservation > self.max_bytes:
            self._count("full")
            error = Overloaded(  # said as it was when refused, not after the drain
                f"{self.reserved} bytes of request bodies are being received or handled; "
                f"this one's {reservation} would pass the {self.max_bytes} this server takes "
                "at once (VISION_MAX_BODY_BYTES_IN_FLIGHT)"
            )
            await self._refuse(timed_receive, send, path, drain_limit, error)
            return
        held = reservation

        def release() -> None:
            nonlocal held, dropping
            dropping = True
            self._reserve(-held)
            held = 0

        def reserve_at_least(body_bytes: int, why: str) -> None:
            nonlocal held
            size = max(0, body_bytes + BODY_OVERHEAD_BYTES - held)
            others = self.reserved - held
            if size and others and others + held + size > self.max_bytes:
                self._count("full")
                raise Overloaded(
                    f"{why} takes {held + size} bytes; with the {others} that other requests "
                    f"hold, that would pass the {self.max_bytes} this server takes at once "
                    "(VISION_MAX_BODY_BYTES_IN_FLIGHT)"
                )
            self._reserve(size)
            held += size

        self._reserve(held)
        scope[RELEASE_BODY_SCOPE_KEY] = release
        scope[RESERVE_AT_LEAST_SCOPE_KEY] = reserve_at_least
        dropping = False
        try:
            with contextlib.suppress(BodyStalled, BodyUnclosed):
                await self.app(scope, timed_receive, guarded_send)
        except ClientDisconnect:
            # Request.stream() raises it for a body cut short (a V2 infer's); the form
            # parser's 400 takes the other path. Either way the client left: 499 below.
            if not gone:
                raise
        finally:
            release()
        if stalled:
            self._count("stalled")
            if not response_started:
                await send_problem(send, self._timeout(), close=True, path=path)
        elif gone and not response_started:
            # Nobody reads it; logs and metrics count the request as the client's doing
            # (499), not as the 400 the form parser makes of a body cut short.
            left = ClientClosedRequest("the client disconnected before its body had all come")
            await send_problem(send, left, close=True, path=path)
        elif unclosed and form_end is not None and not response_started:
            self._count("unclosed_form")
            # The body has all come: the connection can carry the next request.
            await send_problem(send, form_end.error(), close=False, path=path)

    def _reserve(self, size: int) -> None:
        self.reserved += size
        if self.metrics is not None:
            self.metrics.body_bytes_in_flight.set(self.reserved)

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.bodies_refused.labels(reason).inc()

    def _unauthorized(self, scope: Scope, path: str) -> ServiceError | None:
        """The key check's error for a request to a keyed path, None when it passes."""
        if self.check_key is None or self.keyed_paths.match(path) is None:
            return None
        try:
            self.check_key(Request(scope))
        except ServiceError as error:
            return error
        return None

    async def _refuse(
        self, receive: Receive, send: Send, path: str, limit: int | None, error: ServiceError
    ) -> None:
        """``error`` with the body read and dropped, up to the path's ``limit`` (None: not
        read); closed when it was not read to its end."""
        drained = False
        if limit is not None:
            with contextlib.suppress(BodyStalled):
                drained = await drain_body(receive, 0, limit)
        await send_problem(send, error, close=not drained, path=path)

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(
            f"no part of the request body arrived for {self.timeout_s:g} s "
            "(VISION_BODY_TIMEOUT_S); the connection is closed"
        )


def release_body(scope: Scope) -> None:
    """Give the request's reservation back to UploadGateMiddleware's budget, before its body
    is read and dropped (a refusal's drain holds no memory); once is enough, and a request
    that did not pass the gate has nothing to give back."""
    release = scope.get(RELEASE_BODY_SCOPE_KEY)
    if release is not None:
        release()


def reserve_at_least(scope: Scope, body_bytes: int, why: str) -> None:
    """Make the request's reservation cover a body of ``body_bytes`` (what it became beyond
    the bytes sent: a gzip body inflated), growing it if it is smaller (a declared length),
    never shrinking it (a chunked body reserved the path's limit); raises Overloaded (503)
    when growing would take the budget past its bound while others hold part of it. ``why``
    names the larger body in the 503's detail. A request that did not pass the gate is not
    counted."""
    grow: Callable[[int, str], None] | None = scope.get(RESERVE_AT_LEAST_SCOPE_KEY)
    if grow is not None:
        grow(body_bytes, why)


def expects_continue(scope: Scope) -> bool:
    """Whether the client waits for ``100 Continue`` before it sends the request's body."""
    return Headers(scope=scope).get("expect", "").lower() == "100-continue"


def _other_codings(scope: Scope, header: bytes, allowed: bytes) -> str | None:
    """The codings a coding header (``header``, lower case; all its copies) lists, quoted for
    a message, when any of them is not ``allowed``; None when all are (or it is absent)."""
    values = [value for name, value in scope.get("headers", ()) if name == header]
    codings = [c.strip().lower() for value in values for c in value.split(b",") if c.strip()]
    if all(coding == allowed for coding in codings):
        return None
    return echo(", ".join(c.decode("latin-1") for c in codings))


def _unsupported_coding(scope: Scope) -> UnsupportedTransferCoding | None:
    """The 400 for a body whose Transfer-Encoding names a coding besides chunked, which the
    HTTP parser would pass on still encoded (the app would call it a broken form or JSON);
    None for chunked alone. Other framings (``gzip`` alone, ``chunked, chunked``) the parser
    refuses itself."""
    sent = _other_codings(scope, b"transfer-encoding", b"chunked")
    if sent is None:
        return None
    return UnsupportedTransferCoding(
        f"the body's Transfer-Encoding is {sent}; this server decodes chunked alone: send the "
        "body unencoded, chunked or with a Content-Length (a V2 infer body may be gzip as "
        "Content-Encoding)"
    )


def _form_content_coding(scope: Scope) -> FormContentCoding | None:
    """The 415 for a body sent with a Content-Encoding other than identity to a route that
    reads a form, which reads it as sent: compressed, it would fail as a broken form, and
    labelled but sent plain, it would be read against its own label (RFC 9110 8.4.1 lets a
    server refuse a content coding with 415). None without one."""
    sent = _other_codings(scope, b"content-encoding", b"identity")
    if sent is None:
        return None
    return FormContentCoding(
        f"the form's Content-Encoding is {sent}; forms are read as sent: send it without a "
        "content coding (the images in it are compressed already; a V2 infer body may be gzip)"
    )


def _declared_body(scope: Scope) -> int | None:
    """The body length a request declares: its Content-Length, 0 with neither that nor a
    Transfer-Encoding (no body), None when it is unknown (chunked, which HTTP/1.1 puts
    before any Content-Length, or a length that does not parse)."""
    names = {name for name, _ in scope.get("headers", ())}
    if b"transfer-encoding" in names:
        return None
    if b"content-length" not in names:
        return 0
    length = _content_length(scope)
    return None if length is None else max(length, 0)
