"""uvicorn's HTTP/1.1 protocol (httptools) with a deadline on request headers.

uvicorn arms a timer only between keep-alive requests (``timeout_keep_alive``, the entry
command's ``KEEP_ALIVE_S``), and any byte cancels it: a connection that never sends a
request, or sends its head a byte at a time (slowloris), is held, with its buffers and its
place in the server's connection set, for as long as the client keeps it open. The upload
gate's body timeout (service/limits.py) starts only once the headers are in. This protocol
closes a connection whose request headers have not all arrived ``header_timeout_s`` after
the connection started or, for a later request, after that request's first byte (after
its previous request's answer, when it was pipelined behind it), as nginx's
``client_header_timeout`` does: silently when nothing of a request came, with a 408
problem+json when part of a head did. Between requests the connection is idle for at most
uvicorn's keep-alive time (``timeout_keep_alive``), timed here rather than by uvicorn's own
timer, which any byte cancels (the CRLFs a client may send between requests start no
request, so they would hold the connection for good); a request's first byte ends the idle
wait and starts its head's deadline. A proxy that reuses its upstream connections for
longer than ``header_timeout_s`` needs this (see service/serve.py). An idle close is not
counted in the timeout metric, as uvicorn's was not. The deadline is off from the end of a
head until the request is answered, so a request whose head is in is never cut by it,
however long its body or answer takes. An app that answers before reading the body (a 404
to an upload) leaves uvicorn reading and dropping the rest: each piece of it restarts the
deadline, so the client may finish sending, a connection whose dropped body stops arriving
for ``header_timeout_s`` is closed too, and once that body has all come the connection is
idle as after any answer.

Bytes httptools refuses (a Content-Length of ``abc``, ``-5`` or two values, a broken request
line) get a 400 problem+json, like every other error, where uvicorn writes a text/plain one;
behind whole requests (pipelined), after their answers.

Nor does uvicorn bound how long an answer may wait for the client to take it: with the
send buffer full it waits for ever, holding the answer and, for a request pipelined behind
it, that request's body reservation, and a close waits for the buffer for good. Each
connection's socket gets ``TCP_USER_TIMEOUT`` = ``send_timeout_s`` (Linux): the kernel
drops a connection whose client acknowledges nothing of what was sent, or opens no window
the kernel can send into (about a segment), for that long; the transport's own buffer would
not show that progress (the kernel's queue of megabytes sits in front of it). A client
reading a large answer slower than about a segment and a half per timeout is cut.
When a connection is lost, every request on it is told so, the running one too, not only
uvicorn's newest (one pipelined behind it).

It overrides uvicorn's ``data_received``, ``send_400_response``, ``connection_made``,
``connection_lost``, ``_start_asgi_task`` and parser callbacks
(``on_message_begin``, ``on_headers_complete``, ``on_body``, ``on_message_complete``,
``on_response_complete``), which are not a public API; tests/service/test_protocol.py runs
it in the entry command over TCP, so an upgrade that changes them fails there.

Nor does uvicorn bound a head's size, and httptools joins a long header by copying it again
for each piece that arrives. From the read after the one a head began in, this protocol
counts its bytes and gives the parser no more than ``max_header_bytes`` of them: when the
head ends within those, the rest of the read (a body, the next requests) follows; when it
does not, the answer is 431 problem+json and the connection is closed, after the answers
to any requests before it. So a head holds at most that limit plus the read it began in
(asyncio and uvloop read up to 256 KiB at a time). httptools gathers a chunked body's
trailer fields the same way, after the head: while a body arrives, what of each read does
not reach the body (chunk sizes, trailers) may not pass ``max_header_bytes`` plus the body
so far, or the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import socket
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.errors import (
    HeaderFieldsTooLarge,
    MalformedRequest,
    RequestTimeout,
    ServiceError,
    URITooLong,
)
from service.metrics import METRICS_STATE_KEY, Metrics
from service.schemas import PROBLEM_MEDIA_TYPE
from service.settings import DEFAULT_MAX_HEADER_BYTES, DEFAULT_SEND_TIMEOUT_S

# The longest request target httptools parses (its URL offsets are 16-bit): past it, 414.
MAX_URL_BYTES = 65535
# Linux's bound on how long sent data may go unacknowledged (RFC 5482); elsewhere there is
# no send timeout.
TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)


def with_path(target: bytes) -> bytes:
    """An absolute-form request target whose path is empty (``http://host``,
    ``http://host?q=1``) with the "/" that RFC 3986 (6.2.3) makes it equal to; any other
    target as it is. uvicorn reads a target without a path as no request (a 400), though
    RFC 9112 (3.2.2) has servers accept the absolute form."""
    scheme_end = target.find(b"://")
    if scheme_end < 0:
        return target
    authority = scheme_end + len(b"://")
    ends = [i for i in (target.find(c, authority) for c in (b"/", b"?", b"#")) if i >= 0]
    path_start = min(ends, default=len(target))
    if target[path_start : path_start + 1] == b"/":
        return target
    return target[:path_start] + b"/" + target[path_start:]


def timeout_response(
    header_timeout_s: float, default_headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """The raw HTTP/1.1 408 written to a connection whose request head stopped arriving,
    after uvicorn's ``default_headers`` (date, server) as its own answers have them."""
    error = RequestTimeout(
        f"the request headers did not arrive within {header_timeout_s:g} s "
        "(VISION_HEADER_TIMEOUT_S); the connection is closed"
    )
    return raw_response(error, default_headers)


def too_large_response(
    max_header_bytes: int, default_headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """The raw HTTP/1.1 431 written to a connection whose request head grew too large."""
    error = HeaderFieldsTooLarge(
        f"the request line and headers passed {max_header_bytes} bytes "
        "(VISION_MAX_HEADER_BYTES); the connection is closed"
    )
    return raw_response(error, default_headers)


def uri_too_long_response(default_headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """The raw HTTP/1.1 414 written to a connection whose request target is longer than
    httptools parses (its parse error would otherwise be the 400 of malformed bytes)."""
    error = URITooLong(
        f"the request target passed {MAX_URL_BYTES} bytes, the most this server reads; "
        "the connection is closed"
    )
    return raw_response(error, default_headers)


def malformed_response(
    default_headers: Sequence[tuple[bytes, bytes]] = (), path: str = ""
) -> bytes:
    """The raw HTTP/1.1 400 written to a connection whose bytes are not a valid request
    (``path``: the request's, when its request line was read)."""
    error = MalformedRequest(
        "the request is not valid HTTP/1.1 (its request line, a header field or its "
        "framing); the connection is closed"
    )
    return raw_response(error, default_headers, path)


def raw_response(
    error: ServiceError, default_headers: Sequence[tuple[bytes, bytes]], path: str = ""
) -> bytes:
    """``error`` as a raw HTTP/1.1 problem+json answer that closes the connection, written
    by the protocol itself: before an ASGI request exists (its head is not complete), or,
    for the 400, also when a body's chunk framing breaks while the app is reading it.
    ``path`` (when known) adds its protocol's members (``error`` under ``/v2``)."""
    status = HTTPStatus(error.status)
    body = json.dumps(error.document(path)).encode()
    fields = b"".join(name + b": " + value + b"\r\n" for name, value in default_headers)
    head = (
        f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    status_line = f"HTTP/1.1 {int(status)} {status.phrase}\r\n"
    return status_line.encode("ascii") + fields + head.encode("ascii") + body


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections slow to deliver a request head; build a
    subclass with the timeout through :func:`header_timeout_protocol`."""

    header_timeout_s: ClassVar[float]
    max_header_bytes: ClassVar[int]
    send_timeout_s: ClassVar[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        # The request whose app runs (uvicorn's ``cycle`` is the newest: with requests
        # pipelined behind it, a queued one).
        self._running: RequestResponseCycle | None = None
        # Requests whose headers are in and whose answer is not complete (more than one when
        # a client pipelines); the timer runs only while there are none.
        self._open_requests = 0
        # Some bytes of the next request's head have arrived (it gets a 408, not silence).
        self._head_begun = False
        # Bytes of that head counted so far (from the read after the one it began in).
        self._head_bytes = 0
        # Heads completed on this connection (tells whether a head ended within a read).
        self._heads_completed = 0
        # A head went over the limit or the parser refused bytes after whole requests:
        # nothing more is read; the refusal (the raw answer, the log line's format and
        # arguments) goes out once the requests before it are answered.
        self._refusing = False
        self._refusal: tuple[bytes, str, tuple[object, ...]] = (b"", "", ())
        # Of the current message after its head: body bytes, and the rest (chunk framing,
        # trailer fields), counted while its body arrives.
        self._body_bytes = 0
        self._framing_bytes = 0
        # The last request whose head came has not had all its body yet (with no request
        # open: it was answered early, and uvicorn drops the rest as it comes).
        self._body_pending = False
        # The timer armed times an idle connection (keep-alive), not a head's deadline: the
        # next request's first byte starts the head's own.
        self._timing_idle = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        sock = transport.get_extra_info("socket")
        if TCP_USER_TIMEOUT is not None and sock is not None:
            # The kernel times what it sent and the client has not acknowledged, or could
            # not send into its zero window: it measures the client's progress, which the
            # transport's buffer does not show (the kernel holds megabytes in front of it),
            # and frees a closed connection's unsent answer too.
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.IPPROTO_TCP, TCP_USER_TIMEOUT, round(self.send_timeout_s * 1000)
                )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if isinstance(exc, TimeoutError):  # the kernel's ETIMEDOUT: the send timeout
            if (metrics := self._metrics()) is not None:
                metrics.connections_timed_out.labels("answer").inc()
            self.logger.warning(
                "%s:%s - too little of an answer taken for %g s: connection dropped",
                *(self.client or ("-", "-")),
                self.send_timeout_s,
            )
        # uvicorn tells only its newest request that the client has gone: with one queued
        # behind it, the running app wrote on into the closed transport (an "unhandled
        # error" and two tracebacks per connection) and was not dropped as a request
        # whose client left is.
        for cycle in (self._running, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return
        if self._head_begun:
            self._feed_head(data)
        elif self._body_pending:
            self._feed_body(data)
        else:  # a head starting in this read is counted from the next
            super().data_received(data)

    def _feed_head(self, data: bytes) -> None:
        """A read that continues a head begun in an earlier one."""
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        heads = self._heads_completed
        super().data_received(data[:room])
        if self._heads_completed == heads:  # the head did not end within the limit
            self._refuse_head()
        elif not self.transport.is_closing():
            super().data_received(data[room:])

    def _feed_body(self, data: bytes) -> None:
        """A read while a body arrives: what does not reach the body is framing or
        trailers, bounded like a head (plus the body so far: chunk sizes grow with it)."""
        body_before = self._body_bytes
        super().data_received(data)
        if not self._body_pending or self.transport.is_closing():
            return  # the message ended in this read (what followed it: the next head)
        self._framing_bytes += len(data) - (self._body_bytes - body_before)
        if self._framing_bytes > self.max_header_bytes + self._body_bytes:
            self._refusing = True
            self._close(
                b"",
                "%d bytes of chunk framing and trailers beside %d of body: connection closed",
                self._framing_bytes,
                self._body_bytes,
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._head_bytes = 0
        # A head's deadline runs from the connection's start (armed then) or from its own
        # first byte: the idle time before it was the keep-alive timer's to bound.
        if self._header_timer is None or self._timing_idle:
            self._arm()

    def on_headers_complete(self) -> None:
        self._heads_completed += 1
        self._body_bytes = self._framing_bytes = 0
        self._head_begun = False
        self._body_pending = True
        self._open_requests += 1
        self._disarm()
        if self.url[:1] != b"/":  # absolute-form (or "*"): rare, so the check is one byte
            self.url = with_path(self.url)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)
        if self._open_requests == 0:
            # Answered before its body was read (a 404 to an upload): uvicorn drops the
            # rest, and each piece of it restarts the deadline, so a client still sending
            # is not cut while one that stops is not held for good.
            self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_pending = False
        if not (self._open_requests or self.transport.is_closing()):
            # A body dropped after an early answer has all come: idle, as after any answer.
            self._arm(idle=True)

    def on_response_complete(self) -> None:
        self._open_requests -= 1
        super().on_response_complete()
        if self._refusing:
            if not self._open_requests:
                # Not in the context of the request just answered: the log line is no
                # request's (it carried that request's id).
                contextvars.Context().run(self._send_refusal)
            return
        if self._open_requests or self.transport.is_closing():
            return
        # uvicorn's keep-alive timer (just armed) is cancelled by any byte, even the CRLFs
        # a client may send between requests, which start no message: a connection could
        # be held by a byte at a time. The protocol times every wait itself instead.
        self._unset_keepalive_if_required()
        if self._head_begun or self._body_pending:
            # The next request's head has begun (pipelined), or the rest of an early-answered
            # body is still to come and dropped: the deadline runs from now.
            self._arm()
        else:  # idle for as long as keep-alive allows; a request's first byte ends it
            self._arm(idle=True)

    def _arm(self, *, idle: bool = False) -> None:
        """Start the head's deadline (``header_timeout_s``), or with ``idle`` the idle wait
        between requests (uvicorn's ``timeout_keep_alive``)."""
        self._disarm()
        delay = self.timeout_keep_alive if idle else self.header_timeout_s
        # An empty context: armed as an answer completes, the timer would otherwise carry
        # that request's context, and its 408 line would name the answered request's id.
        self._header_timer = self.loop.call_later(
            delay, self._timed_out, context=contextvars.Context()
        )
        self._timing_idle = idle

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._timing_idle = False

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses (it has logged ``msg``), as
        problem+json. Bytes after whole requests (pipelined behind them) get theirs after
        those requests' answers, as a 431 does: written at once, it replaced an answer
        still being made, one whose teacher record was stored among them. The parser also
        refuses a broken chunk size mid-body: if that request's answer is already being
        written, a 400 would land inside it, so the connection is only closed."""
        cycle = self.cycle
        started = cycle is not None and cycle.response_started and not cycle.response_complete
        if self._body_pending and started:  # broken mid-body, its answer on its way
            self.transport.close()
            return
        queued = [entry for entry in self.pipeline if entry[0] is cycle]
        if self._body_pending and queued:
            # Broken mid-body while queued behind a request still being answered: it never
            # runs (out of the queue), and its 400 waits for the answers before it.
            self.pipeline.remove(queued[0])
            self._open_requests -= 1
            self._body_pending = False
        # The request line's target, when one was read (uvicorn sets url once a message
        # begins; bytes refused before that have none).
        url: bytes = getattr(self, "url", b"")
        if len(url) > MAX_URL_BYTES:
            answer = uri_too_long_response(self.server_state.default_headers)
            self._count_refused("uri_too_long")
        else:
            path = url.split(b"?", 1)[0].decode("latin-1")
            answer = malformed_response(self.server_state.default_headers, path)
            self._count_refused("malformed")
        if self._open_requests and not self._body_pending:
            self._disarm()
            self._refusing = True
            self._refusal = (
                answer,
                "bytes that are no request: 400 after the answers before them",
                (),
            )
            return
        self.transport.write(answer)
        self.transport.close()

    def _refuse_head(self) -> None:
        """Stop reading: the head passed ``max_header_bytes``. The 431 goes out now, or
        after the answers to the requests before it (pipelined) are complete."""
        self._disarm()
        self._refusing = True
        self._count_refused("head_too_large")
        self._refusal = (
            too_large_response(self.max_header_bytes, self.server_state.default_headers),
            "request head over %d bytes: 431",
            (self.max_header_bytes,),
        )
        if not self._open_requests:
            self._send_refusal()

    def _metrics(self) -> Metrics | None:
        """The app's metrics (None before the lifespan has put them in its state)."""
        metrics: Metrics | None = self.app_state.get(METRICS_STATE_KEY)
        return metrics

    def _count_refused(self, reason: str) -> None:
        if (metrics := self._metrics()) is not None:
            metrics.connections_refused.labels(reason).inc()

    def _send_refusal(self) -> None:
        answer, why, args = self._refusal
        self._close(answer, why + ", connection closed", *args)

    def _close(self, answer: bytes, why: str, *args: object) -> None:
        """Write ``answer`` (raw bytes, may be empty), log ``why`` (a %-format, with
        ``args``) as this client's warning, and close once the write is flushed; nothing
        when the connection is already closing (an answer before said ``Connection: close``):
        nothing would be sent."""
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(answer)
        self.logger.warning("%s:%s - " + why, *(self.client or ("-", "-")), *args)
        self.transport.close()

    def _timed_out(self) -> None:
        self._header_timer = None
        if self._open_requests or self.transport.is_closing():
            return
        if self._timing_idle:  # keep-alive ran out, as it would in uvicorn: not counted
            self.transport.close()
            return
        if self._body_pending:  # answered; the rest of its body stopped arriving
            phase = "body"
        elif self._head_begun:
            phase = "headers"
        else:
            phase = "idle"
        if (metrics := self._metrics()) is not None:
            metrics.connections_timed_out.labels(phase).inc()
        if phase == "headers":
            self._close(
                timeout_response(self.header_timeout_s, self.server_state.default_headers),
                "request headers incomplete after %g s: 408, connection closed",
                self.header_timeout_s,
            )
        else:  # nothing of a request is pending: closed without a word
            self.transport.close()


def header_timeout_protocol(
    header_timeout_s: float,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
) -> type[HeaderTimeoutProtocol]:
    """A protocol class for ``uvicorn.run(http=...)`` with this header timeout (seconds),
    head size limit (bytes) and send timeout (seconds). Made at run time, so it cannot be
    pickled: fine for the one worker of service/serve.py (uvicorn pickles its config only
    to spawn several)."""
    return type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_header_bytes": max_header_bytes,
            "send_timeout_s": send_timeout_s,
        },
    )
