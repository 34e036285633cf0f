"""Fake model repositories: tiny ONNX graphs with the landmark model's exact signature.

The fake graph is a deterministic function of its input: a cell's confidence is
``sigmoid(20 * (mean brightness of the cell - 0.5))`` for anchor 0 and half that for
anchor 1; every anchor says class ``FAKE_CLASS`` with probability 0.9 and its point is its
cell's centre. A white stride-sized square on black therefore yields one landmark at the
centre of the cell it covers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LABELS = ["stop", "yield", "speed_limit", "traffic_light", "crosswalk", "arrow", "no_entry", "park"]
SIZE = 160
STRIDE = 8
GRID = SIZE // STRIDE
CELLS = GRID * GRID
ANCHORS = 2
FAKE_CLASS = 2
FAKE_CLASS_PROB = 0.9
OPSET = 17
# ONNX Runtime reads IR 9 everywhere; newer onnx packages default to newer IRs.
IR_VERSION = 9


def cell_centres() -> np.ndarray:
    """(CELLS, 2) model-input pixel centres (u, v) of the grid cells, row-major."""
    rows, cols = np.divmod(np.arange(CELLS), GRID)
    return np.stack([cols * STRIDE + STRIDE / 2, rows * STRIDE + STRIDE / 2], axis=1).astype(
        np.float32
    )


def fake_class_probs(classes: int = len(LABELS)) -> np.ndarray:
    probs = np.full(classes + 1, (1 - FAKE_CLASS_PROB) / classes, np.float32)
    probs[FAKE_CLASS] = FAKE_CLASS_PROB
    return probs


def landmark_graph(
    *,
    input_name: str = "image",
    size: int = SIZE,
    classes: int = len(LABELS),
    point_dims: int = 2,
) -> bytes:
    """Serialized ONNX model: image (N,3,size,size) -> class_probs, confidence, points."""
    grid = size // STRIDE
    cells = grid * grid
    probs = np.broadcast_to(fake_class_probs(classes), (1, cells, ANCHORS, classes + 1))
    rows, cols = np.divmod(np.arange(cells), grid)
    centres = np.stack([cols * STRIDE + STRIDE / 2, rows * STRIDE + STRIDE / 2], axis=1)
    centres = np.concatenate([centres, np.zeros((cells, point_dims - 2))], axis=1)
    points = np.broadcast_to(centres[None, :, None, :], (1, cells, ANCHORS, point_dims))

    def const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name)

    initializers = [
        const("cell_shape", [0, cells, 1], np.int64),
        const("half", 0.5),
        const("gain", 20.0),
        const("anchor_scale", [1.0, 0.5]),
        const("probs", probs),
        const("centres", points),
        const("probs_tail", [cells, ANCHORS, classes + 1], np.int64),
        const("points_tail", [cells, ANCHORS, point_dims], np.int64),
    ]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["grey"], axes=[1], keepdims=1),
        helper.make_node(
            "AveragePool",
            ["grey"],
            ["cell_mean"],
            kernel_shape=[STRIDE, STRIDE],
            strides=[STRIDE, STRIDE],
        ),
        helper.make_node("Reshape", ["cell_mean", "cell_shape"], ["cells"]),
        helper.make_node("Sub", ["cells", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["conf0"]),
        helper.make_node("Mul", ["conf0", "anchor_scale"], ["confidence"]),
        helper.make_node("Shape", [input_name], ["batch"], start=0, end=1),
        helper.make_node("Concat", ["batch", "probs_tail"], ["probs_shape"], axis=0),
        helper.make_node("Concat", ["batch", "points_tail"], ["points_shape"], axis=0),
        helper.make_node("Expand", ["probs", "probs_shape"], ["class_probs"]),
        helper.make_node("Expand", ["centres", "points_shape"], ["points"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_landmark",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info(
                "class_probs", TensorProto.FLOAT, ["N", cells, ANCHORS, classes + 1]
            ),
            helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["N", cells, ANCHORS]),
            helper.make_tensor_value_info(
                "points", TensorProto.FLOAT, ["N", cells, ANCHORS, point_dims]
            ),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def landmark_config(name: str, version: str, graph: bytes) -> dict[str, Any]:
    """config.json for the fake graph, as models/common/export.py would write it."""
    return {
        "format": 1,
        "name": name,
        "version": version,
        "task": "landmark_points",
        "file": "model.onnx",
        "sha256": hashlib.sha256(graph).hexdigest(),
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
        "outputs": [
            {"name": "class_probs", "datatype": "FP32", "shape": [-1, CELLS, ANCHORS, 9]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1, CELLS, ANCHORS]},
            {"name": "points", "datatype": "FP32", "shape": [-1, CELLS, ANCHORS, 2]},
        ],
        "preprocess": {
            "height": SIZE,
            "width": SIZE,
            "resize": "letterbox",
            "pad_value": [114, 114, 114],
            # mean 0 / std 1: the fake graph sees brightness in [0, 1].
            "scale": 1 / 255,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "color": "RGB",
            "layout": "NCHW",
        },
        "labels": list(LABELS),
        "decode": {
            "stride": STRIDE,
            "grid": {"rows": GRID, "cols": GRID},
            "anchors": ANCHORS,
            "background_class": len(LABELS),
            "confidence_threshold": 0.05,
            "nms_radius": 6.0,
        },
        "metrics": {"point_f1": 0.5, "note": "fake model for tests"},
        "training": {"command": "none", "data": "none", "seed": 0},
    }


def write_model(
    repo: Path,
    name: str = "landmark",
    version: str = "1",
    *,
    graph: bytes | None = None,
    config_changes: dict[str, Any] | None = None,
    file_bytes: bytes | None = None,
) -> Path:
    """Write ``repo/name/version/{model.onnx,config.json}``; ``file_bytes`` replaces the
    graph on disk after the digest was taken (a corrupt or swapped file)."""
    graph = landmark_graph() if graph is None else graph
    config = landmark_config(name, version, graph)
    config.update(config_changes or {})
    version_dir = repo / name / version
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(graph if file_bytes is None else file_bytes)
    (version_dir / "config.json").write_text(json.dumps(config, indent=2))
    return version_dir


def process_env(tmp: Path, **settings: str) -> dict[str, str]:
    """Environment for ``python -m service.serve`` over a fresh fake landmark repository in
    ``tmp``: CPU, one intra-op thread, its own feedback database, then ``settings``."""
    write_model(tmp / "repository")
    return {
        "VISION_MODEL_REPOSITORY": str(tmp / "repository"),
        "VISION_FEEDBACK_DB": str(tmp / "feedback.sqlite3"),
        "VISION_PROVIDERS": "cpu",
        "VISION_INTRA_OP_THREADS": "1",
        **settings,
    }
