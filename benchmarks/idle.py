"""What idle time between requests costs one ONNX Runtime run: ``python -m benchmarks.idle``.

    python -m benchmarks.idle [--gaps 0 2 5 20] [--runs 300] [--intra-op-threads 1 2]

``benchmarks.run`` times "one run" back to back, so ORT's intra-op threads are awake and
the caches warm; a lone request reaches a graph that has been idle since the previous
answer went out. This times one run of the served landmark graph (batch 1, the benchmark
JPEG decoded and pre-processed as the service does) after each idle gap, with the
service's session options under three intra-op spinning policies:

- ``off``: ``VISION_INTRA_OP_SPINNING=false``, the service's default;
- ``on``: ORT's default, pool threads spin while waiting for work, also between runs;
- ``during-run``: spinning on, plus ``session.force_spinning_stop`` (threads stop spinning
  as soon as the last concurrent run returns).

With ``--intra-op-threads`` each policy is timed at each of those thread counts (default:
the service's, the CPUs this process may use); with one thread there is no pool thread to
wake, so what is left of the idle cost is the CPU's own (caches, frequency, a halted vCPU).
It prints the median run time per gap and the process's CPU share over each loop (2.0 =
two CPUs busy). Figures in ``benchmarks/README.md`` ("One client").
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.run import benchmark_image, landmark_version
from service.batching import Normalization
from service.imaging import decode_to_fit, fit_image
from service.runtime import read_config, session_options
from service.settings import Settings

POLICIES = ("off", "on", "during-run")
# Runs before each policy's timed loops: the first runs of a fresh session allocate its
# arena and plan memory; the question here is idle gaps, not a cold session.
WARM_RUNS = 50


@dataclass(frozen=True)
class Graph:
    """The served landmark graph's file and one pre-processed benchmark image."""

    path: str
    input_name: str
    tensor: np.ndarray  # (1, 3, H, W) float32, normalised as the service does


def landmark_graph(settings: Settings) -> Graph:
    version_dir = landmark_version(settings)
    config = read_config(version_dir)
    pre = config.preprocess
    graph = config.graph_configs()["model"]
    rgb, full = decode_to_fit(
        benchmark_image((640, 480)),
        pre.height,
        pre.width,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        resize=pre.resize,
    )
    boxed, _ = fit_image(
        rgb, pre.height, pre.width, pre.pad_value, resize=pre.resize, source_size=full
    )
    tensor = np.empty((1, 3, pre.height, pre.width), np.float32)
    Normalization.of(pre.scale, pre.mean, pre.std).into(boxed[np.newaxis], tensor)
    return Graph(str(version_dir / graph.file), graph.inputs[0].name, tensor)


def policy_session(
    graph: Graph, settings: Settings, policy: str, threads: int | None = None
) -> ort.InferenceSession:
    """A CPU session with the service's options, ``policy``'s spinning and ``threads``
    intra-op threads (None: the service's count)."""
    update: dict[str, Any] = {"intra_op_spinning": policy != "off"}
    if threads is not None:
        update["intra_op_threads"] = threads
    options = session_options(settings.model_copy(update=update))
    if policy == "during-run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(graph.path, options, providers=["CPUExecutionProvider"])


def time_after_gaps(
    session: ort.InferenceSession, graph: Graph, gap_s: float, runs: int
) -> dict[str, float]:
    """Median ms of one run, each after ``gap_s`` idle, and the process's CPU share (in
    CPUs) over the whole loop, sleeps included."""
    feeds = {graph.input_name: graph.tensor}
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(runs):
        if gap_s > 0:
            time.sleep(gap_s)
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"run_ms": 1000 * statistics.median(times), "cpus": cpu / wall}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gaps", type=float, nargs="+", default=[0, 2, 5, 20], help="idle ms")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per gap")
    parser.add_argument(
        "--intra-op-threads", type=int, nargs="+", default=None, help="default: the service's"
    )
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    args = parser.parse_args(argv)
    settings = Settings()
    graph = landmark_graph(settings)
    rows = []
    for threads in args.intra_op_threads or [settings.resolved_intra_op_threads()]:
        for policy in args.policies:
            session = policy_session(graph, settings, policy, threads)
            for _ in range(WARM_RUNS):
                session.run(None, {graph.input_name: graph.tensor})
            for gap_ms in args.gaps:
                rows.append(
                    {"threads": threads, "policy": policy, "gap_ms": gap_ms}
                    | time_after_gaps(session, graph, gap_ms / 1000, args.runs)
                )
    print(f"landmark graph, batch 1, {args.runs} runs per row")
    print(
        "| intra-op threads | spinning | idle before each run | median run ms | process CPUs busy |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['threads']} | {row['policy']} | {row['gap_ms']:g} ms | {row['run_ms']:.2f} "
            f"| {row['cpus']:.2f} |"
        )
    return rows


if __name__ == "__main__":
    main()
