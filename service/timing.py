"""Where one request's time went, as a ``Server-Timing`` response header (W3C Server
Timing; browsers' developer tools draw it) and in the access line.

``ServerTimingMiddleware`` starts a ``Timings`` for every HTTP request; the serving code
adds to it through ``record`` (pool threads see it too: ``WorkerPool.run`` copies the
context into them). Stages, each summed over the request's images and graphs, in milliseconds:

| stage | what |
|---|---|
| ``decode-wait`` | waiting for a decode thread (``DECODE_THREADS``) and the hand-off to it |
| ``decode`` | image decode and fit to the model input (the decode pool) |
| ``queue`` | waiting for a batch to start (alone: for a run slot, usually 0) |
| ``infer`` | ONNX Runtime ``run`` of the request's batch (``desc``: its rows, the largest) |
| ``app`` | from the outermost middleware to the answer's first byte |

``app`` holds everything above plus the middlewares, routing, multipart parsing, thread
hand-offs back, decoding the outputs and the JSON. So ``app`` minus the other stages is
the service's own Python and hand-offs, and a client's latency minus ``app`` is the
network, HTTP parsing and the client itself.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SERVER_TIMING_HEADER = b"server-timing"
# Where the middleware leaves the request's Timings: Starlette answers an
# unhandled error outside every middleware, so its 500 handler reads them from the scope.
TIMING_SCOPE_KEY = "vision.timing"
# The order stages are written in: the order a request passes through them.
STAGE_ORDER = ("decode-wait", "decode", "queue", "infer")


class Timings:
    """Milliseconds per stage for one request, summed over repeated stages."""

    __slots__ = ("rows", "stages_ms", "started")

    def __init__(self) -> None:
        self.stages_ms: dict[str, float] = {}
        self.rows = 0  # rows of the batches this request's inferences ran in
        self.started = time.perf_counter()  # seconds, perf_counter: when the request came in

    def add(self, stage: str, seconds: float, rows: int = 0) -> None:
        self.stages_ms[stage] = self.stages_ms.get(stage, 0.0) + 1000.0 * seconds
        self.rows = max(self.rows, rows)

    def header(self, app_ms: float) -> bytes:
        """The ``Server-Timing`` value: each recorded stage, then ``app``."""
        parts = []
        for stage in STAGE_ORDER:
            if stage in self.stages_ms:
                entry = f"{stage};dur={self.stages_ms[stage]:.3f}"
                if stage == "infer" and self.rows:
                    entry += f';desc="batch of {self.rows}"'
                parts.append(entry)
        parts.append(f"app;dur={app_ms:.3f}")
        return ", ".join(parts).encode("ascii")


def scope_header(scope: Scope) -> str | None:
    """The ``Server-Timing`` value for a request answered outside the middleware (the 500
    of an unhandled error), up to now; None when the middleware is not installed."""
    timings = scope.get(TIMING_SCOPE_KEY)
    if not isinstance(timings, Timings):
        return None
    return timings.header(1000.0 * (time.perf_counter() - timings.started)).decode("ascii")


timings_var: contextvars.ContextVar[Timings | None] = contextvars.ContextVar(
    "timings", default=None
)


def record(stage: str, seconds: float, rows: int = 0) -> None:
    """Add ``seconds`` to ``stage`` of the current request (nothing outside one)."""
    timings = timings_var.get()
    if timings is not None:
        timings.add(stage, seconds, rows)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """``with timed("decode"):`` records the block's duration, also when it raises."""
    started = time.perf_counter()
    try:
        yield
    finally:
        record(stage, time.perf_counter() - started)


class ServerTimingMiddleware:
    """Starts each HTTP request's Timings and writes them as ``Server-Timing`` on the
    answer: every answer the app gives (the middlewares' own 413s and 503s carry ``app``
    alone); the 500 Starlette writes outside every middleware for an unhandled error gets
    it from ``scope_header``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timings = Timings()
        token = timings_var.set(timings)
        scope[TIMING_SCOPE_KEY] = timings

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                app_ms = 1000.0 * (time.perf_counter() - timings.started)
                headers = [
                    *message.get("headers", []),
                    (SERVER_TIMING_HEADER, timings.header(app_ms)),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            timings_var.reset(token)
