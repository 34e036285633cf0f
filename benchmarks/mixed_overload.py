"""Every model endpoint at once, far past capacity: ``python -m benchmarks.mixed_overload``.

    python -m benchmarks.mixed_overload [--clients 256] [--duration 20] [--warmup 2]
        [--retry-at-once] [--env NAME=VALUE ...] [--label TEXT] [--out benchmarks/results]

``benchmarks.run``'s 2x overload sends ``/recognize`` alone. This starts the service with
every committed model (CPU provider, its defaults otherwise) and runs ``--clients``
keep-alive clients closed loop, spread evenly over ``/recognize``, ``/attention``,
``/attention/correct``, ``/gender``, ``/occlusion`` and ``/faces/verify``, each sending the
committed example uploads (``examples/``) over and over and waiting the ``Retry-After`` a
503 asks for, as ``client/`` does (``--retry-at-once``: retrying at once, as a careless
client does). Beside them a probe asks ``GET /health/live`` every
``PROBE_INTERVAL_S``. Reported per endpoint: answers a second, 503s, other statuses and
connection errors, and the accepted answers' p50 / p99 / slowest latency; the probe's p99
and slowest. ``--env`` passes settings to the server (an A/B of one setting).

Found by an operations review of 2026-12-04 (README, "Open problems"): the cheap answers
(``/attention`` of an image whose features are cached) can take the event loop from the
rest. Writes ``mixed_overload[-label].{json,md}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import Connection, Part, Result, closed_loop_mixed, form_request
from benchmarks.loadgen import run as loadgen_run
from benchmarks.run import (
    HOST,
    ROOT,
    report_run_line,
    report_start,
    server,
    server_commands,
    write_report,
)

EXAMPLES = ROOT / "examples"
# How often the probe asks /health/live: often enough for a p99 over a 20 s run (200
# probes), rarely enough to add nothing to the load.
PROBE_INTERVAL_S = 0.1


def _png(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def endpoint_forms() -> dict[str, tuple[str, list[Part]]]:
    """Each endpoint's request: its path (with query) and its form, from ``examples/``."""
    face, masked = _png("face.png"), _png("face_masked.png")
    return {
        "/recognize": ("/recognize", [("image", "scene.png", _png("scene.png"), "image/png")]),
        "/attention": (
            "/attention",
            [("image", "coat.png", _png("attention_coat.png"), "image/png")],
        ),
        "/attention/correct": (
            "/attention/correct",
            [
                ("image", "pair.png", _png("attention_pair.png"), "image/png"),
                ("mask", "mask.png", _png("attention_pair_mask.png"), "image/png"),
                ("label", None, b"coat", None),
            ],
        ),
        "/gender": ("/gender", [("image", "dress.png", _png("garment_dress.png"), "image/png")]),
        "/occlusion": ("/occlusion", [("image", "face.png", masked, "image/png")]),
        "/faces/verify": (
            "/faces/verify",
            [
                ("image_a", "a.png", face, "image/png"),
                ("image_b", "b.png", masked, "image/png"),
            ],
        ),
    }


async def probe(port: int, seconds: float) -> list[float]:
    """``GET /health/live`` latencies (s) every PROBE_INTERVAL_S for ``seconds``; a probe
    that fails counts as infinite."""
    request = f"GET /health/live HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    connection = await Connection.open(HOST, port)
    while time.perf_counter() < stop:
        began = time.perf_counter()
        try:
            status, close, _, _ = await asyncio.wait_for(connection.send(request), 30.0)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            status, close = 0, True
        latencies.append(time.perf_counter() - began if status == 200 else float("inf"))
        if close:
            connection.close()
            connection = await Connection.open(HOST, port)
        await asyncio.sleep(max(0.0, PROBE_INTERVAL_S - (time.perf_counter() - began)))
    connection.close()
    return latencies


async def load(
    port: int, clients: int, duration: float, warmup: float, honour_retry_after: bool = True
) -> tuple[dict[str, Result], list[float]]:
    requests = {
        name: form_request(HOST, port, path, parts)
        for name, (path, parts) in endpoint_forms().items()
    }
    results, probes = await asyncio.gather(
        closed_loop_mixed(HOST, port, requests, clients, duration, warmup, honour_retry_after),
        _after(warmup, probe(port, duration)),
    )
    return results, probes


async def _after(seconds: float, coroutine: Any) -> Any:
    await asyncio.sleep(seconds)
    return await coroutine


def endpoint_row(result: Result) -> dict[str, Any]:
    summary = result.summary()
    ok = result.latencies.get(200, [])
    return {
        "answered_rps": summary["throughput_rps"],
        "ok": summary["ok"],
        "rejected_503": summary["rejected_503"],
        "other_status": summary["other_status"],
        "errors": summary["errors"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "max_ms": 1000.0 * max(ok) if ok else float("nan"),
    }


def probe_row(latencies: list[float]) -> dict[str, Any]:
    answered = np.asarray([s for s in latencies if np.isfinite(s)]) * 1000.0
    return {
        "probes": len(latencies),
        "failed": len(latencies) - int(answered.size),
        "p99_ms": float(np.percentile(answered, 99)) if answered.size else float("nan"),
        "max_ms": float(answered.max()) if answered.size else float("nan"),
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    settings = ", ".join(f"`{k}={v}`" for k, v in report["env"].items()) or "defaults"
    rows = [
        f"# Every model endpoint at once: {report['clients']} clients"
        f"{'' if report.get('retry_after_honoured', True) else ' retrying 503s at once'}, "
        f"{report['duration_s']:.0f} s (settings: {settings})",
        "",
        report_run_line(report),
        "",
        "| endpoint | answered req/s | 503s | other | errors | p50 ms | p99 ms | slowest ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["endpoints"].items():
        rows.append(
            f"| `{name}` | {row['answered_rps']:.1f} | {row['rejected_503']} | "
            f"{row['other_status']} | {row['errors']} | {row['p50_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | {row['max_ms']:.0f} |"
        )
    probe_ = report["probe"]
    rows += [
        "",
        f"`GET /health/live` every {PROBE_INTERVAL_S * 1000:.0f} ms: {probe_['probes']} probes, "
        f"{probe_['failed']} failed, p99 {probe_['p99_ms']:.0f} ms, "
        f"slowest {probe_['max_ms']:.0f} ms.",
    ]
    path.write_text("\n".join(rows) + "\n")


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env takes NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the load once against a fresh server; write and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--duration", type=float, default=20.0, help="measured s")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s first")
    parser.add_argument(
        "--retry-at-once", action="store_true", help="clients ignore Retry-After after a 503"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--label", default="", help="suffix of the output files")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    env = parse_env(args.env)
    report: dict[str, Any] = {
        **report_start("mixed_overload", argv),
        "clients": args.clients,
        "duration_s": args.duration,
        "retry_after_honoured": not args.retry_at_once,
        "env": env,
    }
    with tempfile.TemporaryDirectory() as tmp:
        server_env = {
            "VISION_PROVIDERS": "cpu",
            "VISION_LOG_LEVEL": "WARNING",
            "VISION_FEEDBACK_DB": str(Path(tmp) / "feedback.sqlite3"),
            **env,
        }
        with server(server_commands()[2], server_env, "/health/ready") as (port, _):
            results, probes = loadgen_run(
                load(port, args.clients, args.duration, args.warmup, not args.retry_at_once)
            )
    report["endpoints"] = {name: endpoint_row(result) for name, result in results.items()}
    report["probe"] = probe_row(probes)
    print(json.dumps({"endpoints": report["endpoints"], "probe": report["probe"]}), flush=True)
    name = "mixed_overload" + (f"-{args.label}" if args.label else "")
    write_report(report, args.out, name, write_markdown, started)
    return report


if __name__ == "__main__":
    main()
