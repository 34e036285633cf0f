"""Latency under overload against the queue bound: ``python -m benchmarks.overload_queue``.

    python -m benchmarks.overload_queue [--queue-sizes 16 4 2 1] [--duration 5]
        [--out benchmarks/results]

Issue 6 asks that under a 2x overload the p99 of the accepted requests stay within 2x of
the unloaded p99. ``benchmarks.run`` reads "unloaded" as the 16-client closed loop; read
strictly (one client, nothing else in flight), no run comes near it with the default
queue, since an accepted request waits behind up to ``VISION_BATCH_QUEUE_SIZE`` others and
a batch. This starts the service (``python -m service.serve``, landmark only, batching
on, its defaults otherwise) once per ``--queue-sizes`` value of
``VISION_BATCH_QUEUE_SIZE`` and, in each: one client and 16 clients closed loop, then an
open loop offering twice the 16-client throughput, as ``benchmarks.run`` does. Reported:
throughput at 16 clients, the one-client p99, the accepted requests' p99 under overload
and its ratio to both, and how fast the 503s came.

Writes ``overload_queue.json`` and ``overload_queue.md`` under ``--out``; reading in the
README ("Open problems", overload).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import (
    OVERLOAD_BASE,
    OVERLOAD_FACTOR,
    ROOT,
    benchmark_image,
    load_levels,
    overload,
    report_run_line,
    report_start,
    server,
    server_commands,
    service_env,
    write_report,
)

DEFAULT_QUEUE_SIZES = (16, 4, 2, 1)  # 16: the service's default (BATCH_MAX_SIZE)
PHOTO_SIZE = (640, 480)  # benchmarks.run's upload


def measure(port: int, pid: int, photo: bytes, duration: float, warmup: float) -> dict[str, Any]:
    """One client, OVERLOAD_BASE clients, then OVERLOAD_FACTOR x the latter's throughput."""
    one, base = load_levels(port, pid, photo, [1, OVERLOAD_BASE], duration, warmup)
    rate = OVERLOAD_FACTOR * base["throughput_rps"]
    over = overload(port, photo, rate, duration, warmup)
    return {
        "one_client": {key: one[key] for key in ("throughput_rps", "p50_ms", "p99_ms")},
        "base": {key: base[key] for key in ("throughput_rps", "p50_ms", "p99_ms")},
        "overload": {
            key: over[key]
            for key in (
                "offered_rps",
                "ok",
                "rejected_503",
                "errors",
                "other_status",
                "p50_ms",
                "p99_ms",
                "p99_503_ms",
            )
        },
        "accepted_rps": over["ok"] / duration,
        "overload_p99_vs_one_client": over["p99_ms"] / one["p99_ms"],
        "overload_p99_vs_base": over["p99_ms"] / base["p99_ms"],
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    rows = [
        "# Latency under 2x overload against the queue bound (landmark, batching on)",
        "",
        report_run_line(report),
        "",
        f"| `VISION_BATCH_QUEUE_SIZE` | {OVERLOAD_BASE} clients req/s | one-client p99 ms | "
        f"{OVERLOAD_BASE}-client p99 ms | offered req/s | accepted req/s | 503s (p99 ms) | "
        f"errors | accepted p99 ms | / one-client p99 | / {OVERLOAD_BASE}-client p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        over = run["overload"]
        rows.append(
            f"| {run['queue_size']} | {run['base']['throughput_rps']:.1f} | "
            f"{run['one_client']['p99_ms']:.1f} | {run['base']['p99_ms']:.1f} | "
            f"{over['offered_rps']:.0f} | {run['accepted_rps']:.1f} | "
            f"{over['rejected_503']} ({over['p99_503_ms']:.1f}) | "
            f"{over['errors'] + over['other_status']} | {over['p99_ms']:.1f} | "
            f"{run['overload_p99_vs_one_client']:.1f} | {run['overload_p99_vs_base']:.2f} |"
        )
    path.write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the service at each queue size; write and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue-sizes", type=int, nargs="+", default=list(DEFAULT_QUEUE_SIZES))
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured s per level")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    photo = benchmark_image(PHOTO_SIZE)
    report: dict[str, Any] = {**report_start("overload_queue", argv), "runs": []}
    command = server_commands()[2]
    with tempfile.TemporaryDirectory() as tmp:
        for queue_size in args.queue_sizes:
            env = {**service_env(True, Path(tmp)), "VISION_BATCH_QUEUE_SIZE": str(queue_size)}
            with server(command, env, "/health/ready") as (port, pid):
                run = measure(port, pid, photo, args.duration, args.warmup)
            report["runs"].append({"queue_size": queue_size, **run})
            print(json.dumps(report["runs"][-1]), flush=True)
    write_report(report, args.out, "overload_queue", write_markdown, started)
    return report


if __name__ == "__main__":
    main()
