"""The application's own cost per request, without HTTP: ``python -m benchmarks.inprocess``.

    python -m benchmarks.inprocess [--requests 1600] [--concurrency 1 16]

Drives the real application (``create_app`` with its lifespan, the landmark model only, as
``benchmarks.run`` serves it) over ASGI inside this process: ``POST /recognize`` with the
benchmark JPEG as a multipart upload, from ``concurrency`` callers on one event loop (uvloop,
as uvicorn runs the service). The naive peer's ``POST /upload`` (the same upload read, its
size answered, no decoding, no model, no middleware) is driven the same way as the floor.
No socket, no HTTP parser and no load generator share the CPUs: what is left is the
application's Python, its thread hand-offs, decoding and ONNX Runtime. Per row: wall ms per
request, the event-loop thread's CPU ms per request (``time.thread_time`` on the loop's
thread), the whole process's CPU ms per request, and the cyclic garbage collector's wall ms
per request with its number of collections (``gc.callbacks``; a collection holds the GIL,
so every thread's Python waits for it). Printed first, for scale: the in-process
pipeline timed back to back as ``benchmarks.run`` times it (decode + letterbox and normalise
+ one run), what the one-client target multiplies by 1.2.

It separates what the application costs from what HTTP and the load generator cost; on a
shared two-CPU host its figures still move by about 10 % between runs, so compare a change
in alternating pairs. Figures and their reading: ``benchmarks/README.md`` ("One client").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

from benchmarks.loadgen import multipart_request
from benchmarks.loadgen import run as loadgen_run
from benchmarks.run import HOST, benchmark_image, measure_pipeline, service_env
from service.settings import Settings

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

# Requests before each timed row: the first ones allocate ORT's arena and warm the caches;
# the question is the steady state.
WARM_REQUESTS = 50
# The port only appears in the Host header; nothing listens.
NOMINAL_PORT = 8000


def split_request(raw: bytes) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
    """An HTTP/1.1 request's path, ASGI headers (lower-case names) and body."""
    head, body = raw.split(b"\r\n\r\n", 1)
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, value = line.split(":", 1)
        headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
    return request_line.split(" ")[1], headers, body


async def call(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One request through ``app``; its status. The client never disconnects."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (HOST, 50000),
        "server": (HOST, NOMINAL_PORT),
    }
    delivered = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # still connected: wait until cancelled
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


@contextmanager
def collections_timed() -> Iterator[dict[str, float]]:
    """The cyclic garbage collector's work while the block runs: ``seconds`` of wall time
    inside collections and their ``count``, over every generation and thread."""
    totals = {"seconds": 0.0, "count": 0.0}
    started: list[float] = []

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:  # a collection already under way when the block began is not counted
            totals["seconds"] += time.perf_counter() - started.pop()
            totals["count"] += 1

    gc.callbacks.append(on_collection)
    try:
        yield totals
    finally:
        gc.callbacks.remove(on_collection)


async def measure(app: ASGIApp, raw: bytes, requests: int, concurrency: int) -> dict[str, float]:
    """``requests`` calls from ``concurrency`` callers; per-request wall and CPU in ms."""
    path, headers, body = split_request(raw)
    for _ in range(WARM_REQUESTS):
        status = await call(app, path, headers, body)
        if status != 200:
            raise RuntimeError(f"POST {path} answered {status}")
    per_caller = max(1, requests // concurrency)
    statuses: list[int] = []

    async def caller() -> None:
        for _ in range(per_caller):
            statuses.append(await call(app, path, headers, body))

    # The process clock is read first and last so that its window holds the loop thread's:
    # both come from the same per-thread runtimes, so loop <= process holds exactly. Read the
    # other way round, CPU time between the first two reads (a host preempting this VM counts
    # as such) fell in the loop's window only: CI once saw 1.146 ms loop against 1.136 ms
    # process per request.
    with collections_timed() as collected:
        process0 = time.process_time()
        wall0, loop0 = time.perf_counter(), time.thread_time()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall, loop = time.perf_counter() - wall0, time.thread_time() - loop0
        process = time.process_time() - process0
    done = len(statuses)
    if set(statuses) != {200}:
        raise RuntimeError(f"POST {path} answered {sorted(set(statuses))}")
    return {
        "requests": done,
        "wall_ms": 1000 * wall / done,
        "loop_cpu_ms": 1000 * loop / done,
        "process_cpu_ms": 1000 * process / done,
        "gc_ms": 1000 * collected["seconds"] / done,
        "gc_collections": int(collected["count"]),
    }


async def measure_all(
    image: bytes, settings: Settings, requests: int, levels: list[int]
) -> list[dict[str, Any]]:
    """The service's ``/recognize`` and the naive peer's ``/upload`` at every level."""
    from benchmarks import naive_app
    from service.main import create_app

    rows: list[dict[str, Any]] = []
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        for path, target, label in (
            ("/recognize", app, "service POST /recognize"),
            ("/upload", naive_app.app, "floor: naive peer POST /upload"),
        ):
            raw = multipart_request(
                HOST, NOMINAL_PORT, path, "image", "photo.jpg", image, "image/jpeg"
            )
            for level in levels:
                row = await measure(target, raw, requests, level)
                rows.append({"endpoint": label, "concurrency": level} | row)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1600, help="timed requests per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args(argv)
    image = benchmark_image((640, 480))
    with tempfile.TemporaryDirectory() as tmp, patch.dict(os.environ):
        # The environment benchmarks.run starts the service with, read as a real start does
        # (and put back afterwards).
        os.environ.update(service_env(True, Path(tmp)))
        settings = Settings()
        pipeline = measure_pipeline(image, settings)
        rows = loadgen_run(measure_all(image, settings, args.requests, args.concurrency))
    print(
        f"in-process pipeline, back to back: decode {pipeline['decode_ms']:.2f} + letterbox and "
        f"normalise {pipeline['preprocess_ms']:.2f} + one run {pipeline['run_ms']:.2f} = "
        f"{pipeline['single_ms']:.2f} ms"
    )
    print(
        "| endpoint | callers | requests | wall ms/request | loop CPU ms/request "
        "| process CPU ms/request | GC ms/request (collections) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['endpoint']} | {row['concurrency']} | {row['requests']} | "
            f"{row['wall_ms']:.3f} | {row['loop_cpu_ms']:.3f} | {row['process_cpu_ms']:.3f} | "
            f"{row['gc_ms']:.4f} ({row['gc_collections']}) |"
        )
    return rows


if __name__ == "__main__":
    main()
