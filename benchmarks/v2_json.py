"""How long a large V2 JSON request holds the event loop: ``python -m benchmarks.v2_json``.

    python -m benchmarks.v2_json [--mib 19] [--repeats 5]

Builds a KServe V2 inference request for the served landmark graph whose FP32 input is sent
as JSON numbers (random values, batch grown until the body reaches ``--mib`` MiB, the upload
limit being 20 MiB) and times what ``POST /v2/models/landmark/infer`` does with it on the
event loop before the run: ``split_body`` (pydantic-core parses and validates the JSON) and
``decode_inputs`` (numpy's conversion and the value checks). For comparison, the same
request parsed by the standard library (``json.loads``, then ``InferRequest.model_validate``)
and the same ``decode_inputs``: the path the service took before 2026-12-03. Then the other
way: an answer carrying the attention model's feature map (96 x 16 x 16 FP32 per image) as
JSON numbers at batch 1 and 16, from the array to bytes, written by the service
(``json_values``: 65 536 values a piece turned to Python floats and encoded by pydantic, so
that no answer is ever one Python list; since 2026-12-04), by the whole list at once
(``tolist``, then ``JSON_BODY.dump_json``: 2026-12-03) and by ``json.dumps`` (before).
Prints every repeat's milliseconds per path; the machine's other load moves them, so
compare within a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.run import each_ms, landmark_version
from service.routers.v2 import (
    JSON_BODY,
    InferRequest,
    decode_inputs,
    json_values,
    split_body,
)
from service.runtime import GraphConfig, read_config
from service.settings import Settings


def landmark_graph(settings: Settings) -> GraphConfig:
    return read_config(landmark_version(settings)).graph_configs()["model"]


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
    return each_ms(lambda: decode_inputs(*parse(body), graph), repeats)


# The attention model's feature map per image, the largest output any served graph has.
FEATURE_MAP = (96, 16, 16)
ANSWER_BATCHES = (1, 16)


def answer_values(batch: int) -> npt.NDArray[np.float32]:
    """A random FP32 feature map of ``batch`` images, as the graph answers it."""
    return np.random.default_rng(0).random((batch, *FEATURE_MAP)).astype(np.float32)


def service_writer(values: npt.NDArray[Any]) -> bytes:
    """The answer's data as encode_outputs writes it (no limit to stop it here)."""
    return b"[" + b",".join(json_values(values, sys.maxsize)) + b"]"


ENCODERS: dict[str, Callable[[npt.NDArray[Any]], bytes]] = {
    "service (json_values: pieces of 65 536 values)": service_writer,
    "whole list (tolist, JSON_BODY.dump_json)": lambda values: JSON_BODY.dump_json(
        {"data": values.reshape(-1).tolist()}
    ),
    "standard library (tolist, json.dumps)": lambda values: json.dumps(
        {"data": values.reshape(-1).tolist()}, separators=(",", ":"), allow_nan=False
    ).encode(),
}


def time_encoding(
    encode: Callable[[npt.NDArray[Any]], bytes], batch: int, repeats: int
) -> list[float]:
    """Milliseconds to write ``answer_values(batch)`` as JSON, per repeat."""
    values = answer_values(batch)
    return each_ms(lambda: encode(values), repeats)


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
    for batch in ANSWER_BATCHES:
        print(f"V2 JSON answer: feature map of {batch} image(s)")
        for label, encode in ENCODERS.items():
            times = time_encoding(encode, batch, args.repeats)
            result[f"answer batch {batch}: {label}"] = times
            print(f"  {label}: " + ", ".join(f"{t:.1f}" for t in times) + " ms")
    return result


if __name__ == "__main__":
    main()
