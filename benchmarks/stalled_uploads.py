"""Memory held by uploads that stop mid-body: ``python -m benchmarks.stalled_uploads``.

    python -m benchmarks.stalled_uploads [--clients 200] [--bytes 3900000]
        [--max-body-bytes-in-flight 268435456] [--body-timeout 30] [--out benchmarks/results]

An upload being received keeps its form's file part in memory up to
``VISION_UPLOAD_SPOOL_BYTES`` (4 MiB), and uvicorn waits for a body as long as the client
keeps its socket open. ``UploadGateMiddleware`` (``service/limits.py``) bounds both: at most
``VISION_MAX_BODY_BYTES_IN_FLIGHT`` of request bodies at once, each by its declared length
(503 past it, the body read and dropped), and 408 for a body that stops arriving for
``VISION_BODY_TIMEOUT_S``. This starts the service (``python -m service.serve``, landmark
only, its defaults otherwise) twice, first with the gate's budget at
``--max-body-bytes-in-flight`` (the default's), then with a budget that holds every stalled
upload (no cap, as before the gate), the body timeout ``--body-timeout`` both times (the
default's), and in each:

1. one upload is answered (the warm state), then the server's resident memory (VmRSS) read;
2. ``--clients`` raw connections each send a ``POST /recognize`` form's headers (declaring a
   body 1000 bytes longer) and ``--bytes`` of its image part, one after the other, and then
   send nothing more;
3. once every byte is sent and the server's memory has stopped growing: its VmRSS, the
   in-flight gauges (the gate's and all requests'), and a fresh upload's status and time,
   and ``GET /health/ready``'s;
4. every stalled connection is read to its end, all at once: its status, and how long
   after its own last byte the answer came;
5. the server's VmRSS and peak (VmHWM) after, a fresh upload's status, and the gate's
   refusals by reason (``vision_request_bodies_refused_total``).

Last, in this process, what the gate itself adds to each request with a body
(``gate_overhead_us``).

Writes ``stalled_uploads.json`` and ``stalled_uploads.md`` under ``--out``; reading in
``benchmarks/README.md`` ("Uploads that stop arriving").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import selectors
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from benchmarks.run import (
    HOST,
    ROOT,
    benchmark_image,
    report_run_line,
    report_start,
    server,
    server_commands,
    service_env,
    write_report,
)
from service.limits import BODY_OVERHEAD_BYTES, BodyLimits, UploadGateMiddleware
from service.metrics import create_metrics
from service.settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
    DEFAULT_MAX_UPLOAD_BYTES,
)

# The part's bytes beyond what is sent: the body never ends.
MISSING_BYTES = 1000
# Memory has settled when VmRSS moved less than this over SETTLE_INTERVAL_S (MiB): the
# server has parsed what arrived.
SETTLE_MIB = 1.0
SETTLE_INTERVAL_S = 0.5
SETTLE_LIMIT_S = 20.0
BOUNDARY = b"stalled-upload-boundary"
PART_HEAD = (
    b"--" + BOUNDARY + b"\r\n"
    b'Content-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n"
)
# A photo the size the benchmarks use, for the fresh uploads.
PHOTO_SIZE = (640, 480)
PHOTO_ROOM = 1024 * 1024  # more than its JPEG and form take
MIB = 1024 * 1024
# Calls per timing of the gate's own cost, and alternating rounds of them: about a second.
OVERHEAD_CALLS = 20_000
OVERHEAD_ROUNDS = 4


def status_mib(pid: int, field: str) -> float:
    """A memory figure (``VmRSS``, ``VmHWM``) of process ``pid`` in MiB, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/{pid}/status")
    return int(match.group(1)) / 1024


def settled_rss(pid: int) -> float:
    """VmRSS (MiB) once it moves less than SETTLE_MIB over SETTLE_INTERVAL_S."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    last = status_mib(pid, "VmRSS")
    while time.monotonic() < deadline:
        time.sleep(SETTLE_INTERVAL_S)
        now = status_mib(pid, "VmRSS")
        if abs(now - last) < SETTLE_MIB:
            return now
        last = now
    return last


def declared_length(size: int) -> int:
    """The Content-Length a stalled upload of ``size`` sent bytes declares."""
    return len(PART_HEAD) + size + MISSING_BYTES


def stalled_upload(port: int, size: int) -> socket.socket:
    """A connection that has sent a form's headers and ``size`` bytes of its file part, of
    a body MISSING_BYTES longer, and sends nothing more."""
    length = declared_length(size)
    head = (
        f"POST /recognize HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((HOST, port), timeout=3 * DEFAULT_BODY_TIMEOUT_S)
    sock.sendall(head + PART_HEAD)
    sock.sendall(b"\xff" * size)
    return sock


def read_answers(stalled: list[tuple[socket.socket, float]]) -> list[dict[str, Any]]:
    """Read every connection to its close at once (a selector, so each answer's time is
    when it came, not when its turn to be read came): per connection the status (None for
    none: a reset, or closed without a word) and the seconds from its last byte sent to
    the first byte of the answer."""
    selector = selectors.DefaultSelector()
    received: dict[int, list[bytes]] = {}
    first: dict[int, float] = {}
    for index, (sock, _) in enumerate(stalled):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
        received[index] = []
    open_count = len(stalled)
    while open_count:
        for key, _ in selector.select():
            index, sock = key.data, stalled[key.data][0]
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                first.setdefault(index, time.monotonic())
                received[index].append(chunk)
                continue
            selector.unregister(sock)
            sock.close()
            open_count -= 1
    selector.close()
    answers = []
    for index, (_, sent) in enumerate(stalled):
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", b"".join(received[index]))
        answers.append(
            {
                "status": int(match.group(1)) if match else None,
                "after_s": first[index] - sent if index in first else None,
            }
        )
    return answers


def samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The server's metrics: (sample name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }


def refused(client: httpx.Client) -> dict[str, int]:
    """The upload gate's refusals so far, by reason."""
    return {
        dict(labels)["reason"]: int(value)
        for (name, labels), value in samples(client).items()
        if name == "vision_request_bodies_refused_total"
    }


def timed_post(client: httpx.Client, photo: bytes) -> dict[str, Any]:
    started = time.perf_counter()
    answer = client.post("/recognize", files={"image": ("photo.jpg", photo, "image/jpeg")})
    return {"status": answer.status_code, "ms": (time.perf_counter() - started) * 1000}


def measure(port: int, pid: int, clients: int, size: int, photo: bytes) -> dict[str, Any]:
    """Steps 1-5 of the module docstring against one running server."""
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=60) as client:
        warm = timed_post(client, photo)
        rest = settled_rss(pid)
        stalled_at = [(stalled_upload(port, size), time.monotonic()) for _ in range(clients)]
        stalled = settled_rss(pid)
        gauges = samples(client)
        during = {
            "rss_mib": stalled,
            "in_flight": gauges[("vision_http_requests_in_flight", ())],
            "body_bytes_in_flight": gauges[("vision_request_body_bytes_in_flight", ())],
            "upload": timed_post(client, photo),
            "health_status": client.get("/health/ready").status_code,
        }
        answers = read_answers(stalled_at)
        after = {
            "rss_mib": settled_rss(pid),
            "peak_mib": status_mib(pid, "VmHWM"),
            "upload": timed_post(client, photo),
        }
        refusals = refused(client)
    statuses = Counter(str(answer["status"]) for answer in answers)
    times = [answer["after_s"] for answer in answers if answer["after_s"] is not None]
    return {
        "warm_upload": warm,
        "rest_rss_mib": rest,
        "during": during,
        "answers": dict(sorted(statuses.items())),
        "answer_after_s": [min(times), max(times)] if times else None,
        "after": after,
        "refused": dict(sorted(refusals.items())),
        "held_mib": stalled - rest,
    }


async def _bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads a body and answers 200 with nothing else: what the gate is timed around."""
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def gate_overhead_us(calls: int = OVERHEAD_CALLS, rounds: int = OVERHEAD_ROUNDS) -> list[float]:
    """What UploadGateMiddleware (with its metrics) adds per request with a body, in
    microseconds of event-loop time: ``calls`` ASGI calls of a 79 kB POST (its body in one
    message) with and without the gate around a bare app, alternating, ``rounds`` times."""
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/recognize",
        "headers": [(b"content-length", b"79000")],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    gate = UploadGateMiddleware(
        _bare_app,
        BodyLimits(DEFAULT_MAX_UPLOAD_BYTES),
        DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
        DEFAULT_BODY_TIMEOUT_S,
        create_metrics(),
    )

    async def per_call_s(app: ASGIApp) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / calls

    async def measure_all() -> list[float]:
        return [(await per_call_s(gate) - await per_call_s(_bare_app)) * 1e6 for _ in range(rounds)]

    return asyncio.run(measure_all())


def write_markdown(report: dict[str, Any], path: Path) -> None:
    rows = [
        "| server | body budget MiB | RSS at rest MiB | RSS stalled MiB (+held) | "
        "reserved MiB (requests in flight) | fresh upload while stalled | /health/ready | "
        "stalled clients' answers (s after each one's last byte) | RSS after MiB | peak MiB | "
        "fresh upload after | gate's refusals |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        during, after = run["during"], run["after"]
        answers = ", ".join(f"{count} x {status}" for status, count in run["answers"].items())
        first, last = run["answer_after_s"] or (float("nan"), float("nan"))
        refusals = ", ".join(f"{count} {reason}" for reason, count in run["refused"].items())
        rows.append(
            f"| {run['label']} | {run['max_body_bytes_in_flight'] / MIB:.0f} | "
            f"{run['rest_rss_mib']:.0f} | "
            f"{during['rss_mib']:.0f} (+{run['held_mib']:.0f}) | "
            f"{during['body_bytes_in_flight'] / MIB:.0f} ({during['in_flight']:.0f}) | "
            f"{during['upload']['status']} in {during['upload']['ms']:.1f} ms | "
            f"{during['health_status']} | {answers} ({first:.1f}-{last:.1f}) | "
            f"{after['rss_mib']:.0f} | {after['peak_mib']:.0f} | {after['upload']['status']} | "
            f"{refusals} |"
        )
    overhead = ", ".join(f"{value:.1f}" for value in report["gate_overhead_us"])
    lines = [
        "# Uploads that stop arriving: server memory, CPU",
        "",
        f"{report_run_line(report)} {report['clients']} connections "
        f"each send a `POST /recognize` form's headers and {report['bytes']} bytes of its "
        f"image part, then stop ({MISSING_BYTES} bytes short of the declared length); body "
        f"timeout {report['body_timeout_s']:g} s. RSS is the server process's "
        "VmRSS once it settled; held = stalled - at rest.",
        "",
        *rows,
        "",
        f"What the gate adds to a request with a body, event-loop time in-process (alternating "
        f"rounds of {OVERHEAD_CALLS} ASGI calls with and without it around a bare app): "
        f"{overhead} us.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both servers; write and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="stalled connections")
    parser.add_argument("--bytes", type=int, default=3_900_000, help="sent of each image part")
    parser.add_argument(
        "--max-body-bytes-in-flight", type=int, default=DEFAULT_MAX_BODY_BYTES_IN_FLIGHT
    )
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, help="s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    photo = benchmark_image(PHOTO_SIZE)
    report: dict[str, Any] = {
        **report_start("stalled_uploads", argv),
        "clients": args.clients,
        "bytes": args.bytes,
        "body_timeout_s": args.body_timeout,
        "runs": [],
    }
    command = server_commands()[2]
    # Room for every stalled upload and the fresh ones beside them.
    room = (args.clients + 2) * (declared_length(args.bytes) + BODY_OVERHEAD_BYTES + PHOTO_ROOM)
    runs = [("service", args.max_body_bytes_in_flight), ("no cap", room)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, budget in runs:
            env = {
                **service_env(True, Path(tmp)),
                "VISION_MAX_BODY_BYTES_IN_FLIGHT": str(budget),
                "VISION_BODY_TIMEOUT_S": str(args.body_timeout),
            }
            with server(command, env, "/health/ready") as (port, pid):
                run = measure(port, pid, args.clients, args.bytes, photo)
            report["runs"].append({"label": label, "max_body_bytes_in_flight": budget, **run})
            print(json.dumps(report["runs"][-1]), flush=True)
    report["gate_overhead_us"] = gate_overhead_us()
    write_report(report, args.out, "stalled_uploads", write_markdown, started)
    return report


if __name__ == "__main__":
    main()
