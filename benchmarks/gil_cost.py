"""What a request's Python costs at 16 callers: ``python -m benchmarks.gil_cost``.

    python -m benchmarks.gil_cost [--added-ms 0.2 0.4] [--concurrency 16]
        [--requests 1600] [--rounds 3] [--out benchmarks/results]

The 80 %-of-the-limit target is missed with a fifth of the two CPUs idle
(``benchmarks.inprocess``), so the question is which of a request's work stands on the
path that bounds throughput. This drives the real application over ASGI in one process,
as ``benchmarks.inprocess`` does (``POST /recognize``, landmark only, no socket), and adds
a known amount of work to every request in one of three places:

- ``loop, GIL held``: Python spinning on the event loop before the app sees the request
  (what the service's own Python on the loop is: middleware, form parsing, dependencies,
  answer decoding, JSON);
- ``loop, GIL released``: hashing (``hashlib.sha256`` over a length calibrated to the
  same time) on the event loop: the loop is blocked just as long, but other threads may
  run Python meanwhile;
- ``decode thread, GIL held``: Python spinning in the decode pool's thread before each
  decode (the service's Python glue around decoding and batching).

Per row: the median wall ms per request over ``--rounds`` (the rows alternate within each
round, so host drift falls on all alike) and the slope, the wall added per request over
the work added. A slope near 1 means that work is on the bounding path one for one; near
0.5, that it shares two CPUs with everything else; near 0, that it fills idle time.

Then what the service's own Python on the loop is made of, as far as middleware goes: the
event loop's CPU per request at one caller (the least noisy measure of it) for the app as
served, for the same app without each of its middlewares in turn, and without any, each the
median over ``--rounds`` (alternating again). The app without one is for measuring only:
it answers the benchmark's request the same, but without that layer's guard.

Writes ``gil_cost.json`` and ``gil_cost.md`` under ``--out``; the reading is in
``benchmarks/README.md`` ("What bounds it", under "The 16-client plateau").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from unittest.mock import patch

from benchmarks.inprocess import NOMINAL_PORT, ASGIApp, measure
from benchmarks.loadgen import multipart_request
from benchmarks.loadgen import run as loadgen_run
from benchmarks.run import (
    HOST,
    ROOT,
    benchmark_image,
    report_run_line,
    report_start,
    service_env,
    write_report,
)
from service.settings import Settings
from service.workers import WorkerPool

P = ParamSpec("P")
T = TypeVar("T")

PLACES = ("loop, GIL held", "loop, GIL released", "decode thread, GIL held")
# Bytes hashed to time the hash rate: long enough that a clock tick is no part of it.
CALIBRATION_BYTES = 32 * 1024 * 1024
# Requests before the timed rounds (benchmarks.inprocess warms each row too).
WARM_REQUESTS = 200


def spin(seconds: float) -> None:
    """Run Python for ``seconds`` (the GIL held throughout, but for the interpreter's
    periodic switches)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def hash_rate() -> float:
    """Bytes a second ``hashlib.sha256`` hashes here (it releases the GIL for inputs over
    2 KiB)."""
    blob = bytes(CALIBRATION_BYTES)
    started = time.perf_counter()
    hashlib.sha256(blob).digest()
    return CALIBRATION_BYTES / (time.perf_counter() - started)


class Added:
    """The work added to every request: ``place`` (one of PLACES, or None) for ``seconds``."""

    def __init__(self, rate: float) -> None:
        self.place: str | None = None
        self.seconds = 0.0
        self.rate = rate
        self._blob = b""

    def set(self, place: str | None, seconds: float) -> None:
        self.place, self.seconds = place, seconds
        self._blob = bytes(int(seconds * self.rate))

    def on_loop(self) -> None:
        if self.place == PLACES[0]:
            spin(self.seconds)
        elif self.place == PLACES[1]:
            hashlib.sha256(self._blob).digest()

    def in_thread(self) -> None:
        if self.place == PLACES[2]:
            spin(self.seconds)


def with_loop_work(app: ASGIApp, added: Added) -> ASGIApp:
    """``app`` behind an ASGI wrapper doing ``added``'s loop work on every HTTP request."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            added.on_loop()
        await app(scope, receive, send)

    return wrapped


class SpinningPool(WorkerPool):
    """The decode pool, with ``added``'s thread work run in the pool's thread before each
    job."""

    def __init__(self, pool: WorkerPool, added: Added) -> None:
        super().__init__(pool.threads, pool.name)
        self.added = added

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        def job() -> T:
            self.added.in_thread()
            return fn(*args, **kwargs)

        return await super().run(job)


def recognize_request(image: bytes) -> bytes:
    """The benchmark's ``POST /recognize`` of ``image`` as raw HTTP/1.1 bytes."""
    return multipart_request(
        HOST, NOMINAL_PORT, "/recognize", "image", "photo.jpg", image, "image/jpeg"
    )


async def measure_places(
    image: bytes,
    settings: Settings,
    added_ms: list[float],
    requests: int,
    concurrency: int,
    rounds: int,
) -> list[dict[str, Any]]:
    """Wall ms per request for nothing added and every place x amount, ``rounds`` times."""
    from service.main import create_app

    app = create_app(settings)
    added = Added(hash_rate())
    cases: list[tuple[str | None, float]] = [(None, 0.0)] + [
        (place, ms) for place in PLACES for ms in added_ms
    ]
    walls: dict[tuple[str | None, float], list[float]] = {case: [] for case in cases}
    # Made before the lifespan, as create_app makes its own, so that the lifespan's end
    # closes this one; the replaced pool has made no threads yet.
    app.state.decode_pool = SpinningPool(app.state.decode_pool, added)
    async with app.router.lifespan_context(app):
        target = with_loop_work(app, added)
        raw = recognize_request(image)
        await measure(target, raw, WARM_REQUESTS, concurrency)
        for _ in range(rounds):
            for place, ms in cases:
                added.set(place, ms / 1000)
                row = await measure(target, raw, requests, concurrency)
                walls[(place, ms)].append(row["wall_ms"])
    base = statistics.median(walls[(None, 0.0)])
    rows = []
    for place, ms in cases:
        wall = statistics.median(walls[(place, ms)])
        rows.append(
            {
                "place": place or "nothing added",
                "added_ms": ms,
                "wall_ms": wall,
                "rounds_wall_ms": walls[(place, ms)],
                "slope": (wall - base) / ms if ms else None,
            }
        )
    return rows


async def measure_middleware(
    image: bytes, settings: Settings, requests: int, rounds: int
) -> list[dict[str, Any]]:
    """Loop CPU ms per request at one caller: the app as served, without each middleware,
    and without all of them."""
    from service.main import create_app

    served = create_app(settings)
    names = [entry.cls.__name__ for entry in served.user_middleware]
    variants: dict[str, ASGIApp] = {"as served": served}
    async with served.router.lifespan_context(served):
        for left_out in [*names, None]:
            app = create_app(settings)
            app.user_middleware = [
                entry
                for entry in app.user_middleware
                if left_out is not None and entry.cls.__name__ != left_out
            ]
            app.state = served.state  # the served app's models, pools and settings
            variants[f"without {left_out}" if left_out else "without any"] = app
        raw = recognize_request(image)
        loop_ms: dict[str, list[float]] = {name: [] for name in variants}
        for app in variants.values():
            await measure(app, raw, WARM_REQUESTS // 4, 1)
        for _ in range(rounds):
            for name, app in variants.items():
                row = await measure(app, raw, requests, 1)
                loop_ms[name].append(row["loop_cpu_ms"])
    served_ms = statistics.median(loop_ms["as served"])
    return [
        {
            "app": name,
            "loop_cpu_ms": statistics.median(values),
            "rounds_loop_cpu_ms": values,
            "saved_us": 1000 * (served_ms - statistics.median(values)),
        }
        for name, values in loop_ms.items()
    ]


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = [
        f"# Work added to every request at {report['concurrency']} callers, in-process "
        "(POST /recognize, landmark)",
        "",
        report_run_line(report),
        "",
        "| added where | added ms | wall ms/request, median (rounds) | slope: wall added / "
        "work added |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        rounds = ", ".join(f"{wall:.3f}" for wall in row["rounds_wall_ms"])
        slope = "" if row["slope"] is None else f"{row['slope']:.2f}"
        lines.append(
            f"| {row['place']} | {row['added_ms']:.2f} | {row['wall_ms']:.3f} ({rounds}) "
            f"| {slope} |"
        )
    lines += [
        "",
        "The event loop's CPU per request at one caller, without each middleware (a layer "
        "left out for measuring only):",
        "",
        "| app | loop CPU ms/request, median (rounds) | less than as served, us |",
        "|---|---|---|",
    ]
    for row in report["middleware"]:
        rounds = ", ".join(f"{ms:.3f}" for ms in row["rounds_loop_cpu_ms"])
        lines.append(
            f"| {row['app']} | {row['loop_cpu_ms']:.3f} ({rounds}) | {row['saved_us']:.1f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every place and amount; write and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--added-ms", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1600, help="timed requests per row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if any(ms <= 0 for ms in args.added_ms):
        parser.error("--added-ms must be positive")
    started = time.perf_counter()
    report: dict[str, Any] = {
        **report_start("gil_cost", argv),
        "concurrency": args.concurrency,
        "requests": args.requests,
    }
    image = benchmark_image((640, 480))
    with tempfile.TemporaryDirectory() as tmp, patch.dict(os.environ):
        # The environment benchmarks.run starts the service with, put back afterwards.
        os.environ.update(service_env(True, Path(tmp)))
        report["rows"] = loadgen_run(
            measure_places(
                image, Settings(), args.added_ms, args.requests, args.concurrency, args.rounds
            )
        )
        report["middleware"] = loadgen_run(
            measure_middleware(image, Settings(), args.requests, args.rounds)
        )
    write_report(report, args.out, "gil_cost", write_markdown, started)
    print((args.out / "gil_cost.md").read_text())
    return report


if __name__ == "__main__":
    main()
