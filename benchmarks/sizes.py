"""The one-client target across photo sizes: ``python -m benchmarks.sizes``.

    python -m benchmarks.sizes [--sizes 320x240 640x480 1280x960 1920x1440 4032x3024]
        [--grain 0] [--rounds 3] [--duration 4] [--warmup 1] [--out benchmarks/results]

``benchmarks.run`` reads the one-client target (p50 <= 1.2 x decode + pre-processing + one
run) at one photo size (640x480), where the run dominates the pipeline and the request
path's fixed cost (HTTP, multipart, thread hand-offs, the service's features) is large next
to it. This measures the same ratio at several sizes, from a thumbnail to a 12-megapixel
phone photo, with the pipeline timed right before and right after each one-client level
(the denominator is their mean, so the host's drift between them is halved rather than
carried from a measurement minutes away). Per size and round, one after the other at one
client, closed loop, loadgen.py over loopback:

1. the in-process pipeline (``benchmarks.run.measure_pipeline``: decode as the service does,
   with JPEG draft decoding; letterbox and normalise; one run), back to back;
2. the service (``python -m service.serve``, landmark only, batching on) ``POST /recognize``,
   and the same with Starlette's 1 MiB spool size instead of ``VISION_UPLOAD_SPOOL_BYTES``
   (``configure_uploads`` in ``service/limits.py``), what a large upload cost before;
3. the thin route (``benchmarks/thin_app.py``, worker thread): the same work behind one bare
   handler, the bound for any design that keeps the event loop free;
4. the HTTP floor (the naive peer's ``POST /upload``: the upload read, nothing else): what
   the upload alone costs at that size, with Starlette's 1 MiB spool size (the naive peer
   is tutorial code), so past 1 MiB it includes the spooling the service no longer does;
5. the pipeline again.

Rounds take the sizes, and the routes within each size, in alternating order (forward,
then backward) so that neither a slow stretch of the host nor a place in the sequence
lands on one of them. The photos are ``benchmarks.run.benchmark_image``
(Grace Hopper, 512x600, resized and saved at JPEG quality 90). An upscaled photo has less
fine detail than a camera's, so its JPEG is smaller and decodes faster than a real photo of
that size (a 12 MP one is 1.1 MB, where a phone's is 2-5 MB); ``--grain 6`` adds the noise
that brings it to 2.8 MB.

Writes ``sizes.json``, ``sizes.md`` and ``sizes.png`` under ``--out`` (``sizes-grain6.*``
with ``--grain 6``). Figures and their
reading: ``benchmarks/README.md`` ("One client across photo sizes").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.run import (
    ROOT,
    benchmark_image,
    cpu_model,
    landmark_version,
    load_average,
    load_levels,
    measure_pipeline,
    naive_env,
    server,
    server_commands,
    service_env,
)
from service.settings import Settings, available_cpus

# A thumbnail, the benchmark's photo (benchmarks.run), two camera-roll downscales and a
# 12 MP phone photo.
DEFAULT_SIZES = ("320x240", "640x480", "1280x960", "1920x1440", "4032x3024")
# The one-client target: p50 <= TARGET x (decode + pre-processing + one run).
TARGET = 1.2
# Seconds each part of the pipeline is timed for, before and after each level: long enough
# for a 12-megapixel decode (15-30 ms here, with grain the most) to be timed 16 times or more.
PIPELINE_SECONDS = 0.5
# The service as it was before VISION_UPLOAD_SPOOL_BYTES, measured beside it.
SPOOLED = "service, 1 MiB spool"
# Where each one-client row comes from: (server, route), in the order of the even rounds
# (odd rounds take them backwards, so no route always follows the pipeline's timing).
ROUTES = {
    "service": ("service", "/recognize"),
    SPOOLED: ("spooled", "/recognize"),
    "thin route": ("thin", "/recognize"),
    "HTTP floor": ("naive", "/upload"),
}
# The service as it was before VISION_UPLOAD_SPOOL_BYTES: Starlette's own spool size.
SPOOL_1_MIB = {"VISION_UPLOAD_SPOOL_BYTES": str(1024 * 1024)}


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)``; an argparse type."""
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return width, height


def size_name(size: tuple[int, int]) -> str:
    """``(640, 480)`` -> ``"640x480"``, the key of a size in the report."""
    return f"{size[0]}x{size[1]}"


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's rounds -> medians of the pipeline and each route's p50 and ratio, and the
    range of the service's ratio."""
    ratios = [r["ratios"]["service"] for r in rounds]
    return {
        "pipeline_ms": statistics.median(r["pipeline_ms"] for r in rounds),
        "p50_ms": {
            name: statistics.median(r["rows"][name]["p50_ms"] for r in rounds) for name in ROUTES
        },
        "ratio": {name: statistics.median(r["ratios"][name] for r in rounds) for name in ROUTES},
        "service_ratio_min": min(ratios),
        "service_ratio_max": max(ratios),
        "rounds_met": sum(ratio <= TARGET for ratio in ratios),
    }


def measure_round(
    sizes: list[tuple[int, int]],
    images: dict[tuple[int, int], bytes],
    servers: dict[str, tuple[int, int]],
    settings: Settings,
    args: argparse.Namespace,
    routes: list[str],
) -> dict[str, dict[str, Any]]:
    """One round over ``sizes`` in the order given: per size, the pipeline, the ``routes``
    (names in ROUTES) in the order given at one client, the pipeline again."""
    out = {}
    for size in sizes:
        image = images[size]
        print(f"{size_name(size)} ({len(image)} bytes)", flush=True)
        before = measure_pipeline(image, settings, args.pipeline_seconds)
        rows = {}
        for name in routes:
            which, path = ROUTES[name]
            port, pid = servers[which]
            levels = load_levels(port, pid, image, [1], args.duration, args.warmup, path=path)
            rows[name] = levels[0]
        after = measure_pipeline(image, settings, args.pipeline_seconds)
        pipeline_ms = (before["single_ms"] + after["single_ms"]) / 2
        out[size_name(size)] = {
            "bytes": len(image),
            "pipeline_before": before,
            "pipeline_after": after,
            "pipeline_ms": pipeline_ms,
            "rows": rows,
            "ratios": {name: row["p50_ms"] / pipeline_ms for name, row in rows.items()},
        }
        print(
            f"  pipeline {before['single_ms']:.2f} / {after['single_ms']:.2f} ms, service "
            f"{rows['service']['p50_ms']:.2f} ms ({out[size_name(size)]['ratios']['service']:.2f})",
            flush=True,
        )
    return out


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """The report's table (medians over rounds, and the service's ratio in each) as markdown."""
    machine = report["machine"]
    lines = [
        "# One client across photo sizes: POST /recognize (landmark), CPU",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus_usable']} usable CPUs; load average "
        f"(1/5/15 min) before {machine['load_before']}, after {machine['load_after']}. "
        f"Command: `{report['command']}` ({report['seconds_total']:.0f} s). "
        f"{report['settings']['rounds']} rounds; in each, per size: the pipeline, the four "
        f"routes at one client ({report['settings']['duration_s']:g} s each after "
        f"{report['settings']['warmup_s']:g} s unmeasured), the pipeline again. Ratios are p50 "
        f"/ the mean of the two pipeline timings; the table gives medians over the rounds.",
        "",
        f"| photo | JPEG bytes | decode + pre + run ms | service p50 ms | ratio (target <= "
        f"{TARGET}) | service ratio, each round | 1 MiB spool p50 ms (ratio) | thin "
        f"route p50 ms (ratio) | HTTP floor p50 ms | service - pipeline ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in report["summary"].items():
        each = ", ".join(f"{round_[name]['ratios']['service']:.2f}" for round_ in report["rounds"])
        p50 = summary["p50_ms"]
        lines.append(
            f"| {name} | {report['bytes'][name]} | {summary['pipeline_ms']:.2f} | "
            f"{p50['service']:.2f} | {summary['ratio']['service']:.2f} | {each} | "
            f"{p50[SPOOLED]:.2f} ({summary['ratio'][SPOOLED]:.2f}) | "
            f"{p50['thin route']:.2f} ({summary['ratio']['thin route']:.2f}) | "
            f"{p50['HTTP floor']:.2f} | {p50['service'] - summary['pipeline_ms']:.2f} |"
        )
    lines += [
        "",
        "Service - pipeline is what the request path adds to the work itself: HTTP, the "
        "upload, thread hand-offs, a decode and a run on threads and caches gone idle, and "
        "the service's own features. 1 MiB spool: the service with Starlette's own spool size "
        "(uploads over 1 MiB parsed to a temporary file), as the HTTP floor (the naive peer's "
        "upload route) has it. The photos are Grace Hopper resized "
        "(JPEG quality 90), "
        + (
            f"with Gaussian noise of sd {report['settings']['grain']:g} levels added."
            if report["settings"]["grain"]
            else "without added noise: the larger ones decode faster than a camera's photos "
            "of the same size."
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Ratio against megapixels (log scale), each route's median and the service's rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["summary"])
    megapixels = [parse_size(name)[0] * parse_size(name)[1] / 1e6 for name in names]
    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for route in ("service", SPOOLED, "thin route"):
        axis.plot(
            megapixels,
            [report["summary"][name]["ratio"][route] for name in names],
            marker="o",
            label=f"{route}, median of rounds",
        )
    for round_ in report["rounds"]:
        axis.scatter(
            megapixels,
            [round_[name]["ratios"]["service"] for name in names],
            color="C0",
            alpha=0.35,
            s=12,
        )
    axis.axhline(TARGET, color="k", ls="--", lw=1, label=f"target {TARGET}x")
    axis.set_xscale("log")
    axis.set_xlabel("photo, megapixels")
    axis.set_ylabel("one-client p50 / (decode + pre + run)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    grain = report["settings"]["grain"]
    axis.set_title(
        f"POST /recognize at one client, CPU ({report['machine']['cpus_usable']} usable CPUs)"
        + (f"\nphotos with grain sd {grain:g}" if grain else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every size in every round; write and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None)
    parser.add_argument(
        "--grain", type=float, default=0.0, help="noise added to the photos, 8-bit levels (sd)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="measured s per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured s per level")
    parser.add_argument(
        "--pipeline-seconds", type=float, default=PIPELINE_SECONDS, help="s per pipeline part"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    sizes = args.sizes or [parse_size(text) for text in DEFAULT_SIZES]
    started = time.perf_counter()
    settings = Settings(providers="cpu")
    images = {size: benchmark_image(size, args.grain) for size in sizes}
    report: dict[str, Any] = {
        "command": "python -m benchmarks.sizes " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpu": cpu_model(),
            "cpus_usable": available_cpus(),
            "load_before": load_average(),
        },
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "pipeline_seconds": args.pipeline_seconds,
            "jpeg_draft": settings.jpeg_draft,
            "grain": args.grain,
        },
        "bytes": {size_name(size): len(image) for size, image in images.items()},
        "rounds": [],
    }
    naive, thin_app, service = server_commands()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        env = service_env(True, Path(tmp))
        version_dir = landmark_version(settings)
        servers = {
            "naive": stack.enter_context(server(naive, naive_env(version_dir), "/openapi.json")),
            "service": stack.enter_context(server(service, env, "/health/ready")),
            "spooled": stack.enter_context(
                server(service, {**env, **SPOOL_1_MIB}, "/health/ready")
            ),
            "thin": stack.enter_context(server(thin_app, env, "/docs")),
        }
        for index in range(args.rounds):
            forward = index % 2 == 0
            order, routes = (sizes, list(ROUTES)) if forward else (sizes[::-1], list(ROUTES)[::-1])
            print(f"round {index + 1} of {args.rounds}", flush=True)
            report["rounds"].append(measure_round(order, images, servers, settings, args, routes))
    report["summary"] = {
        size_name(size): summarize([round_[size_name(size)] for round_ in report["rounds"]])
        for size in sizes
    }
    report["machine"]["load_after"] = load_average()
    report["seconds_total"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sizes" if not args.grain else f"sizes-grain{args.grain:g}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, args.out / f"{stem}.md")
    write_plot(report, args.out / f"{stem}.png")
    print((args.out / f"{stem}.md").read_text())
    return report


if __name__ == "__main__":
    main()
