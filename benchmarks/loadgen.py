"""A small HTTP/1.1 load generator over loopback: asyncio streams, keep-alive, no client
library, so the client spends as little of the shared CPUs as possible.

Closed loop (``closed_loop``): ``concurrency`` connections, each sending its next request
as soon as the previous answer arrived (after a 503, once its Retry-After has passed).
Open loop (``open_loop``): requests start at a fixed rate whatever the server does;
latency counts from the scheduled start (no coordinated omission), connections come from
a pool that grows as needed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service.timing import STAGE_ORDER as INSIDE_APP

# An answer taking longer than this is a failure of the benchmark, not a latency.
REQUEST_TIMEOUT_S = 60.0

T = TypeVar("T")


def run(load: Coroutine[Any, Any, T]) -> T:
    """Run a load on uvloop (installed with uvicorn[standard]): at one client it took
    about 0.1 ms and 20 % less client CPU per request off the measured latency than
    asyncio's own loop (three alternating pairs, 2026-12-01); asyncio's loop without it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(load)
    return uvloop.run(load)


def multipart_body(field_name: str, filename: str, content: bytes, mime: str) -> tuple[str, bytes]:
    """The Content-Type and body of a multipart/form-data upload of one file field."""
    return form_body([(field_name, filename, content, mime)])


# One part of a form: field name, file name (None for a plain field), content, its type.
Part = tuple[str, str | None, bytes, str | None]


def form_body(parts: Sequence[Part]) -> tuple[str, bytes]:
    """The Content-Type and body of a multipart/form-data form of files and plain fields."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, filename, content, mime in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if mime is not None:
            head += f"Content-Type: {mime}\r\n"
        chunks.append(head.encode() + b"\r\n" + content + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def form_request(host: str, port: int, path: str, parts: Sequence[Part]) -> bytes:
    """The bytes of one keep-alive ``POST path`` with a multipart/form-data form."""
    content_type, body = form_body(parts)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    return head + body


def multipart_request(
    host: str, port: int, path: str, field_name: str, filename: str, content: bytes, mime: str
) -> bytes:
    """The bytes of one keep-alive ``POST path`` with a multipart/form-data upload."""
    return form_request(host, port, path, [(field_name, filename, content, mime)])


# Stages of the service's Server-Timing header, in its order: those inside "app", then it.
TIMING_STAGES = (*INSIDE_APP, "app")


def parse_server_timing(value: bytes) -> dict[str, float]:
    """``decode;dur=1.2, app;dur=3.4`` -> ``{"decode": 1.2, "app": 3.4}`` (ms)."""
    stages = {}
    for entry in value.decode("latin-1").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if key == "dur":
                stages[name] = float(number)
    return stages


@dataclass
class Result:
    """Outcome of a load run: latencies (s) by status, wall time of the measured window,
    and the Server-Timing stages (ms) of the 200s that carried them, with their latency."""

    seconds: float
    latencies: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0
    timings: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def add(self, status: int, latency: float, timing: dict[str, float] | None = None) -> None:
        self.latencies.setdefault(status, []).append(latency)
        if status == 200 and timing and all(stage in timing for stage in TIMING_STAGES):
            self.timings.append((latency, timing))

    def stages(self) -> dict[str, float]:
        """Medians (ms) over the answers that said where their time went: each stage,
        ``own`` (app minus the other stages: the service's Python and hand-offs) and
        ``outside`` (latency minus app: network, HTTP parsing, the client)."""
        if not self.timings:
            return {}
        medians = {
            stage: float(np.median([t[stage] for _, t in self.timings])) for stage in TIMING_STAGES
        }
        own = [t["app"] - sum(t[stage] for stage in INSIDE_APP) for _, t in self.timings]
        outside = [1000.0 * latency - t["app"] for latency, t in self.timings]
        return {**medians, "own": float(np.median(own)), "outside": float(np.median(outside))}

    def count(self, status: int) -> int:
        return len(self.latencies.get(status, []))

    def summary(self) -> dict[str, Any]:
        """Throughput of 200s (req/s), their p50/p95/p99 (ms), and the other outcomes."""
        ok = np.asarray(self.latencies.get(200, []), dtype=np.float64) * 1000.0
        rejected = np.asarray(self.latencies.get(503, []), dtype=np.float64) * 1000.0
        others = sum(len(v) for k, v in self.latencies.items() if k not in (200, 503))
        out: dict[str, Any] = {
            "ok": int(ok.size),
            "rejected_503": int(rejected.size),
            "other_status": others,
            "errors": self.errors,
            "throughput_rps": ok.size / self.seconds if self.seconds > 0 else 0.0,
        }
        for q in (50, 95, 99):
            out[f"p{q}_ms"] = float(np.percentile(ok, q)) if ok.size else float("nan")
        out["p99_503_ms"] = float(np.percentile(rejected, 99)) if rejected.size else float("nan")
        if stages := self.stages():
            out["server_timing_p50_ms"] = stages
        return out


class Connection:
    """One keep-alive HTTP/1.1 connection; ``send`` returns the status code."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bool, float, dict[str, float]]:
        """Send one request; returns its status, whether the server closes the connection
        after it, its Retry-After in seconds (0 when absent) and its Server-Timing stages
        (empty when absent)."""
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        retry_after = 0.0
        timing: dict[str, float] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
            elif key == b"retry-after":
                retry_after = float(value.strip())
            elif key == b"server-timing":
                timing = parse_server_timing(value)
        if length:
            await self.reader.readexactly(length)
        return status, close, retry_after, timing

    def close(self) -> None:
        self.writer.close()


async def closed_loop(
    host: str, port: int, request: bytes, concurrency: int, duration_s: float, warmup_s: float
) -> Result:
    """``concurrency`` clients back to back for ``warmup_s`` + ``duration_s``; only requests
    that start inside the measured window count."""
    results = await closed_loop_mixed(host, port, {"": request}, concurrency, duration_s, warmup_s)
    return results[""]


async def closed_loop_mixed(
    host: str,
    port: int,
    requests: Mapping[str, bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    honour_retry_after: bool = True,
) -> dict[str, Result]:
    """``closed_loop`` with client ``i`` sending the ``i % len(requests)``-th request over
    and over; one Result per request name. ``honour_retry_after=False``: clients retry a
    503 at once, as a careless client does."""
    names = list(requests)
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop = measure_from + duration_s
    results = {name: Result(seconds=duration_s) for name in names}

    async def client(index: int) -> None:
        connection = connections[index]
        name = names[index % len(names)]
        request, result = requests[name], results[name]
        while (began := time.perf_counter()) < stop:
            try:
                status, close, retry_after, timing = await asyncio.wait_for(
                    connection.send(request), REQUEST_TIMEOUT_S
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                result.errors += began >= measure_from
                connection.close()
                connection = await Connection.open(host, port)
                continue
            if began >= measure_from:
                result.add(status, time.perf_counter() - began, timing)
            if close:
                connection.close()
                connection = await Connection.open(host, port)
            if status == 503 and retry_after > 0 and honour_retry_after:
                # A well-behaved client (client/ raises ServiceUnavailable with retry_after)
                # waits as told rather than hammering an overloaded server.
                await asyncio.sleep(min(retry_after, max(0.0, stop - time.perf_counter())))

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    for connection in connections:
        connection.close()
    return results


async def open_loop(
    host: str, port: int, request: bytes, rate_rps: float, duration_s: float, warmup_s: float
) -> Result:
    """Requests started every ``1/rate_rps`` seconds for ``warmup_s`` + ``duration_s``;
    latency from each request's scheduled start; only the measured window counts."""
    pool: list[Connection] = []
    result = Result(seconds=duration_s)
    start = time.perf_counter()
    measure_from = start + warmup_s
    total = int((warmup_s + duration_s) * rate_rps)

    async def one(scheduled: float) -> None:
        connection = pool.pop() if pool else await Connection.open(host, port)
        try:
            status, close, _, timing = await asyncio.wait_for(
                connection.send(request), REQUEST_TIMEOUT_S
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            result.errors += scheduled >= measure_from
            connection.close()
            return
        if scheduled >= measure_from:
            result.add(status, time.perf_counter() - scheduled, timing)
        if close:
            connection.close()
        else:
            pool.append(connection)

    tasks = []
    for index in range(total):
        scheduled = start + index / rate_rps
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    for connection in pool:
        connection.close()
    return result
