"""Connections that never finish a request head: ``python -m benchmarks.slow_heads``.

    python -m benchmarks.slow_heads [--clients 500] [--header-timeout 10]
        [--drip-interval 1] [--out benchmarks/results]

uvicorn times out a keep-alive connection only after an answer, and any byte it receives
resets that: a connection that never sends a request, or sends its head a byte at a time
(slowloris), stays open as long as the client likes. The entry command's protocol
(``service/protocol.py``) closes a connection whose request head is not complete
``VISION_HEADER_TIMEOUT_S`` after it opened or after its last answer. This starts the
service (``python -m service.serve``, landmark only, its defaults otherwise) twice, first
with the header timeout at ``--header-timeout`` (the default's), then with it at 10^9 s
(uvicorn's own behaviour), and in each:

1. one upload is answered (the warm state), then the server's resident memory (VmRSS) read;
2. ``--clients`` raw connections open and send nothing (idle), and ``--clients`` more send
   a ``GET /health/ready`` request line and one header line, then one more byte of a header
   every ``--drip-interval`` seconds (slow heads), from one thread, never ending the head;
3. halfway through the timeout: the server's VmRSS, a fresh upload's status and time, and
   ``GET /health/ready``'s status;
4. until the timeout plus ``GRACE_S`` after the last connection opened, each connection's
   end is watched for (the drip goes on): what the server sent (nothing, or a status) and
   when, from the connection's own start; then the ones still open are counted and closed;
5. the server's VmRSS after, a fresh upload's status, and its
   ``vision_connections_timed_out_total`` by phase.

Last, in this process, what the protocol adds to a keep-alive request: uvicorn's httptools
protocol and the service's each serve OVERHEAD_REQUESTS GETs over a fake transport to a
bare app, in alternating rounds (``protocol_overhead_us``).

Writes ``slow_heads.json`` and ``slow_heads.md`` under ``--out``; reading in
``benchmarks/README.md`` ("Request heads that never end").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
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
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

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
from benchmarks.stalled_uploads import PHOTO_SIZE, samples, settled_rss, status_mib, timed_post
from service.protocol import header_timeout_protocol
from service.settings import DEFAULT_HEADER_TIMEOUT_S

# The connections are watched this long past the timeout: time for the server's timers to
# fire on a busy machine, and for the closes to reach the client.
GRACE_S = 2.0
# "Off": longer than any benchmark runs, and a finite float as the setting requires.
NO_TIMEOUT_S = 1e9
# A request line and one header: the head a slowloris client starts with.
HEAD_START = f"GET /health/ready HTTP/1.1\r\nHost: {HOST}\r\nX-Drip: ".encode()
# Requests per timing of the protocol's added work, and alternating rounds of them.
OVERHEAD_REQUESTS = 20_000
OVERHEAD_ROUNDS = 4


class Watched:
    """One benchmark connection: its socket, kind, start, and what the server did."""

    def __init__(self, sock: socket.socket, kind: str) -> None:
        self.sock = sock
        self.kind = kind
        self.opened = time.monotonic()
        self.received = b""
        self.closed_after_s: float | None = None  # when the server ended it, from opened

    @property
    def status(self) -> str:
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", self.received)
        return match.group(1).decode() if match else "none"


def open_connections(port: int, clients: int) -> list[Watched]:
    """``clients`` idle connections and ``clients`` slow heads, interleaved."""
    watched = []
    for _ in range(clients):
        idle = socket.create_connection((HOST, port), timeout=10)
        watched.append(Watched(idle, "idle"))
        slow = socket.create_connection((HOST, port), timeout=10)
        slow.sendall(HEAD_START)
        watched.append(Watched(slow, "slow head"))
    for connection in watched:
        connection.sock.setblocking(False)
    return watched


def watch(watched: list[Watched], until: float, drip_s: float, selector: Any) -> None:
    """Read what the server sends and note when it closes each connection, dripping one
    byte into every open slow head each ``drip_s``, until the monotonic time ``until``."""
    next_drip = time.monotonic() + drip_s
    while (now := time.monotonic()) < until:
        if now >= next_drip:
            for connection in watched:
                if connection.kind == "slow head" and connection.closed_after_s is None:
                    # Closed under us: the read below notes it.
                    with contextlib.suppress(OSError):
                        connection.sock.send(b"x")
            next_drip += drip_s
        for key, _ in selector.select(timeout=max(0.0, min(next_drip, until) - now)):
            connection = key.data
            try:
                chunk = connection.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                connection.received += chunk
                continue
            connection.closed_after_s = time.monotonic() - connection.opened
            selector.unregister(connection.sock)


def timed_out(client: httpx.Client) -> dict[str, int]:
    """The server's header-timeout closes so far, by phase."""
    return {
        dict(labels)["phase"]: int(value)
        for (name, labels), value in samples(client).items()
        if name == "vision_connections_timed_out_total"
    }


def measure(
    port: int, pid: int, clients: int, timeout_s: float, drip_s: float, photo: bytes
) -> dict[str, Any]:
    """Steps 1-5 of the module docstring against one running server."""
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=60) as client:
        warm = timed_post(client, photo)
        rest = settled_rss(pid)
        watched = open_connections(port, clients)
        opened = time.monotonic()
        selector = selectors.DefaultSelector()
        for connection in watched:
            selector.register(connection.sock, selectors.EVENT_READ, connection)
        watch(watched, opened + timeout_s / 2, drip_s, selector)
        # A fresh connection: the pooled one has been idle for about the header timeout by
        # now, and a POST reused as the server closes it would fail (httpx does not retry).
        with httpx.Client(base_url=client.base_url, timeout=60) as fresh:
            during = {
                "rss_mib": status_mib(pid, "VmRSS"),
                "upload": timed_post(fresh, photo),
                "health_status": fresh.get("/health/ready").status_code,
            }
        watch(watched, opened + timeout_s + GRACE_S, drip_s, selector)
        selector.close()
        still_open = Counter(c.kind for c in watched if c.closed_after_s is None)
        for connection in watched:
            connection.sock.close()
        after = {"rss_mib": settled_rss(pid), "upload": timed_post(client, photo)}
        closes = timed_out(client)
    kinds: dict[str, Any] = {}
    for kind in ("idle", "slow head"):
        mine = [c for c in watched if c.kind == kind]
        times = [c.closed_after_s for c in mine if c.closed_after_s is not None]
        kinds[kind] = {
            "closed_by_server": len(times),
            "still_open": still_open[kind],
            "answers": dict(sorted(Counter(c.status for c in mine).items())),
            "closed_after_s": [min(times), max(times)] if times else None,
        }
    return {
        "warm_upload": warm,
        "rest_rss_mib": rest,
        "during": during,
        "connections": kinds,
        "after": after,
        "timed_out": dict(sorted(closes.items())),
        "held_kib_per_connection": (during["rss_mib"] - rest) * 1024 / (2 * clients),
    }


class _Transport:
    """Just enough of an asyncio transport for a protocol to serve requests in-process."""

    def __init__(self) -> None:
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": (HOST, 8000), "peername": (HOST, 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer_ok(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _per_request_us(protocol_class: type[Any], requests: int) -> float:
    """Microseconds per keep-alive GET served by ``protocol_class`` over a fake transport
    (parser, callbacks, ASGI cycle and a bare app: no socket)."""
    config = Config(app=_answer_ok, http=protocol_class, lifespan="off", log_level="error")
    config.load()
    protocol = protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocol.connection_made(_Transport())
    request = f"GET /x HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    started = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(request)
        while protocol.cycle is None or not protocol.cycle.response_complete:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


def protocol_overhead_us(
    requests: int = OVERHEAD_REQUESTS, rounds: int = OVERHEAD_ROUNDS
) -> list[tuple[float, float]]:
    """``(uvicorn's httptools protocol, the service's)`` microseconds per keep-alive request
    in-process, in alternating rounds, on uvloop (the server's loop) where installed."""

    async def measure_all() -> list[tuple[float, float]]:
        timed = header_timeout_protocol(DEFAULT_HEADER_TIMEOUT_S)
        return [
            (
                await _per_request_us(HttpToolsProtocol, requests),
                await _per_request_us(timed, requests),
            )
            for _ in range(rounds)
        ]

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # Windows: the server runs asyncio's own loop too
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(measure_all())


def write_markdown(report: dict[str, Any], path: Path) -> None:
    rows = [
        "| server | header timeout s | RSS at rest MiB | RSS held MiB (KiB per connection) | "
        "fresh upload meanwhile | /health/ready | idle: closed by the server (s after "
        "opening), still open | slow heads: answers, closed (s), still open | RSS after MiB | "
        "timed out (server's count) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        during, idle, slow = (
            run["during"],
            run["connections"]["idle"],
            run["connections"]["slow head"],
        )

        def closed(kind: dict[str, Any]) -> str:
            if kind["closed_after_s"] is None:
                return "0"
            first, last = kind["closed_after_s"]
            return f"{kind['closed_by_server']} ({first:.1f}-{last:.1f})"

        answers = ", ".join(f"{count} x {status}" for status, count in slow["answers"].items())
        counts = ", ".join(f"{count} {phase}" for phase, count in run["timed_out"].items())
        rows.append(
            f"| {run['label']} | {run['header_timeout_s']:g} | {run['rest_rss_mib']:.0f} | "
            f"{during['rss_mib']:.0f} ({run['held_kib_per_connection']:.1f}) | "
            f"{during['upload']['status']} in {during['upload']['ms']:.1f} ms | "
            f"{during['health_status']} | {closed(idle)}, {idle['still_open']} | "
            f"{answers}; {closed(slow)}, {slow['still_open']} | "
            f"{run['after']['rss_mib']:.0f} | {counts or 'none'} |"
        )
    pairs = ", ".join(
        f"{plain:.2f} / {timed:.2f}" for plain, timed in report["protocol_overhead_us"]
    )
    lines = [
        "# Request heads that never end: connections held, memory",
        "",
        f"{report_run_line(report)} {report['clients']} connections "
        f"send nothing and {report['clients']} send a request line and then one header byte "
        f"every {report['drip_interval_s']:g} s; each is watched until the timeout plus "
        f"{GRACE_S:g} s after the last one opened. RSS held is the server's VmRSS halfway "
        "through, less at rest, per connection of both kinds.",
        "",
        *rows,
        "",
        "What the protocol adds to each keep-alive request: in this process, "
        f"{OVERHEAD_REQUESTS} GETs over a fake transport to a bare app per round "
        f"({report['event_loop']}), uvicorn's httptools protocol / the service's, alternating: "
        f"{pairs} us per request. "
        "The server's own count of idle closes includes the benchmark's HTTP client's "
        "keep-alive connection when the header timeout is shorter than uvicorn's keep-alive "
        "(5 s).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both servers; write and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500, help="connections of each kind")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S)
    parser.add_argument("--drip-interval", type=float, default=1.0, help="s between bytes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    photo = benchmark_image(PHOTO_SIZE)
    report: dict[str, Any] = {
        **report_start("slow_heads", argv),
        "clients": args.clients,
        "drip_interval_s": args.drip_interval,
        "runs": [],
    }
    command = server_commands()[2]
    runs = [("service", args.header_timeout), ("no header timeout", NO_TIMEOUT_S)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, timeout_s in runs:
            env = {**service_env(True, Path(tmp)), "VISION_HEADER_TIMEOUT_S": str(timeout_s)}
            # Both runs are watched for the same span: the timeout under test.
            with server(command, env, "/health/ready") as (port, pid):
                run = measure(
                    port, pid, args.clients, args.header_timeout, args.drip_interval, photo
                )
            report["runs"].append({"label": label, "header_timeout_s": timeout_s, **run})
            print(json.dumps(report["runs"][-1]), flush=True)
    report["protocol_overhead_us"] = protocol_overhead_us()
    report["event_loop"] = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    write_report(report, args.out, "slow_heads", write_markdown, started)
    return report


if __name__ == "__main__":
    main()
