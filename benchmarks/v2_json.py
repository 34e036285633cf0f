"""How long a large V2 JSON request holds the event loop: ``python -m benchmarks.v2_json``.

    python -m benchmarks.v2_json [--mib 19] [--repeats 5]

Builds a KServe V2 inference request for the served landmark graph whose FP32 input is sent
as JSON numbers (random values, batch grown until the body reaches ``--mib`` MiB, the upload
limit being 20 MiB) and times what ``POST /v2/models/landmark/infer`` does with it on the
event loop before the run: ``split_body`` (pydantic-core parses and validates the JSON) and
``decode_inputs`` (numpy's conversion and the value checks). For comparison, the same
request parsed by the standard library (``json.loads``, then ``InferRequest.model_validate``)
and the same ``decode_inputs``: the path the service took before 2026-12-03. Prints every
repeat's milliseconds per path; the machine's other load moves them, so compare within a
run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from service.routers.v2 import InferRequest, decode_inputs, split_body
from service.runtime import GraphConfig, read_config, select_version
from service.settings import Settings


def landmark_graph(settings: Settings) -> GraphConfig:
    version_dir = select_version(settings.model_repository / settings.recognize_model, None)
    return read_config(version_dir).graph_configs()["model"]


def json_body(graph: GraphConfig, mib: float) -> tuple[bytes, int]:
    """A JSON request of at least ``mib`` MiB for ``graph``'s image input; its batch size."""
    spec = graph.inputs[0]
    height, width = spec.shape[2], spec.shape[3]
    rng = np.random.default_rng(0)
    batch = 0
    body = b""
    while len(body) < mib * 2**20:
        batch += 1
        data = rng.random((batch, 3, height, width)).astype(np.float32)  # (N, 3, H, W)
        request = {
            "inputs": [
                {
                    "name": spec.name,
                    "shape": list(data.shape),
                    "datatype": "FP32",
                    "data": data.tolist(),
                }
            ]
        }
        body = json.dumps(request).encode()
    return body, batch


def standard_library_parse(body: bytes) -> tuple[InferRequest, bytes]:
    """The earlier parse: the standard library's json, then pydantic on the Python objects."""
    return InferRequest.model_validate(json.loads(body)), b""


def time_path(
    parse: Callable[[bytes], tuple[InferRequest, bytes]],
    body: bytes,
    graph: GraphConfig,
    repeats: int,
) -> list[float]:
    """Milliseconds of parse + decode_inputs, per repeat."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        parsed, binary = parse(body)
        decode_inputs(parsed, binary, graph)
        times.append(1000 * (time.perf_counter() - started))
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=19.0, help="least body size, MiB")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    graph = landmark_graph(Settings())
    body, batch = json_body(graph, args.mib)
    paths = {
        "service (split_body: pydantic-core parses the JSON)": lambda b: split_body(b, None),
        "standard library (json.loads, then model_validate)": standard_library_parse,
    }
    result: dict[str, Any] = {"body_mib": len(body) / 2**20, "batch": batch}
    print(f"V2 JSON request: {result['body_mib']:.1f} MiB, FP32 input of batch {batch}")
    for label, parse in paths.items():
        times = time_path(parse, body, graph, args.repeats)
        result[label] = times
        print(f"  {label}: " + ", ".join(f"{t:.0f}" for t in times) + " ms")
    return result


if __name__ == "__main__":
    main()
