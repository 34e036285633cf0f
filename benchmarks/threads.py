"""Where the service's CPU goes under load: per-thread CPU of ``python -m service.serve``.

    python -m benchmarks.threads [--concurrency 16] [--duration 6] [--env VISION_X=y ...]

Starts the service (landmark model, batching on, as ``benchmarks.run`` does), drives
``POST /recognize`` with the benchmark JPEG in a closed loop and reads, from ``/proc``, the
CPU time each of the server's threads used over the measured window, and the machine's
busy share over the same window. The event loop runs on the main thread (its thread ID is
the process ID); the others are the decode / batch worker threads and ONNX Runtime's
intra-op threads, which Linux does not tell apart by name. A main thread well under 100 %
of a CPU means the single event loop is not what caps throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.loadgen import closed_loop, multipart_request
from benchmarks.loadgen import run as loadgen_run
from benchmarks.run import HOST, benchmark_image, server, service_env, stat_cpu_seconds


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live thread of ``pid``, by thread ID."""
    seconds: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds[int(task.name)] = stat_cpu_seconds(task / "stat")
        except OSError:  # the thread ended between listing and reading
            continue
    return seconds


def machine_busy_and_total() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs since boot (``/proc/stat``; idle + iowait idle)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return total - values[3] - values[4], total


def measure(pid: int, request: bytes, port: int, concurrency: int, duration: float) -> dict:
    """One closed-loop window; per-thread CPU as a share of one CPU over that window."""
    loadgen_run(closed_loop(HOST, port, request, concurrency, 1.0, 0.5))  # warm
    before, (busy0, total0) = thread_cpu_seconds(pid), machine_busy_and_total()
    started = time.monotonic()
    result = loadgen_run(closed_loop(HOST, port, request, concurrency, duration, 0.0))
    elapsed = time.monotonic() - started
    after, (busy1, total1) = thread_cpu_seconds(pid), machine_busy_and_total()
    shares = {tid: (after[tid] - before.get(tid, 0.0)) / elapsed for tid in after}
    others = sorted((share for tid, share in shares.items() if tid != pid), reverse=True)
    summary = result.summary()
    return {
        "concurrency": concurrency,
        "throughput_rps": summary["throughput_rps"],
        "p50_ms": summary["p50_ms"],
        "event_loop_thread": shares.get(pid, 0.0),
        "other_threads": [s for s in others if s >= 0.01],
        "server_total": sum(shares.values()),
        "machine_busy": (busy1 - busy0) / max(total1 - total0, 1),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=6.0, help="measured s per level")
    parser.add_argument("--env", nargs="*", default=[], help="extra VISION_*=value settings")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    image = benchmark_image((640, 480))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**service_env(True, Path(tmp)), **extra}
        with server([sys.executable, "-m", "service.serve"], env, "/health/ready") as (port, pid):
            request = multipart_request(
                HOST, port, "/recognize", "image", "photo.jpg", image, "image/jpeg"
            )
            for concurrency in args.concurrency:
                rows.append(measure(pid, request, port, concurrency, args.duration))
    print(
        "| clients | req/s | p50 ms | event loop thread | other threads (each >= 1 %) | "
        "server, all threads | machine busy |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        others = ", ".join(f"{100 * s:.0f}" for s in row["other_threads"])
        print(
            f"| {row['concurrency']} | {row['throughput_rps']:.0f} | {row['p50_ms']:.2f} | "
            f"{100 * row['event_loop_thread']:.0f} % | {others} % | "
            f"{100 * row['server_total']:.0f} % | {100 * row['machine_busy']:.0f} % of "
            f"{row['cpus']} CPUs |"
        )
    return rows


if __name__ == "__main__":
    main()
