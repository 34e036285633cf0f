"""A repository for the V2 tests: the fake landmark model plus a two-graph model ``chain``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tests.service.fakes import SIZE, STRIDE, write_model
from tests.service.test_runtime_graphs import write_two_graph_model

SQUARE_AT = (40, 64)  # (top, left) of a white stride-sized square, in model-input pixels


def write_v2_repository(root: Path) -> Path:
    """``landmark`` (one graph) and ``chain`` (graphs ``front`` then ``head``)."""
    write_model(root)
    scratch = root.parent / "scratch"
    write_two_graph_model(scratch)
    shutil.move(scratch / "landmark", root / "chain")
    shutil.rmtree(scratch)
    config_path = root / "chain" / "1" / "config.json"
    config = json.loads(config_path.read_text())
    config["name"] = "chain"
    config_path.write_text(json.dumps(config))
    return root


def square_tensor(batch: int = 1) -> np.ndarray:
    """(batch, 3, SIZE, SIZE) float32: black with one white stride-sized square."""
    tensor = np.zeros((batch, 3, SIZE, SIZE), np.float32)
    top, left = SQUARE_AT
    tensor[:, :, top : top + STRIDE, left : left + STRIDE] = 1.0
    return tensor


def square_cell() -> int:
    """Row-major index of the grid cell the square covers."""
    top, left = SQUARE_AT
    return (top // STRIDE) * (SIZE // STRIDE) + left // STRIDE
