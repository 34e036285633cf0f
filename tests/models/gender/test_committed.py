"""The committed gender graphs are their committed checkpoints: ONNX Runtime matches PyTorch.

The export checks parity once when it writes a version; this keeps checking the files as
they are in the repository (a graph replaced by hand, or a checkpoint from another run,
would fail here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.common.export import PARITY_TOLERANCE
from models.common.tensors import to_tensor
from models.gender.data import GarmentConfig, generate
from models.gender.net import GenderExport, GenderNet, load_checkpoint
from service.runtime import read_config

GENDER = Path(__file__).resolve().parents[3] / "models" / "repository" / "gender"
# Every version whose own trained network is committed beside its graph (version 6 reuses
# version 5's graph and has no checkpoint of its own).
TRAINED = sorted(
    (p.parent.name for p in GENDER.glob("*/checkpoint.pt")),
    key=int,
)


def test_the_served_version_has_its_checkpoint() -> None:
    highest = max((p.name for p in GENDER.iterdir() if p.name.isdigit()), key=int)
    assert highest in TRAINED


@pytest.mark.parametrize("version", TRAINED[-2:])
def test_committed_graph_matches_its_checkpoint(version: str) -> None:
    folder = GENDER / version
    net, _ = load_checkpoint(folder / "checkpoint.pt")
    assert isinstance(net, GenderNet)
    preprocess = read_config(folder).preprocess
    size = preprocess.height
    images = generate(4, "test", seed=11, config=GarmentConfig(size=size)).images
    x = to_tensor(images, preprocess.mean, preprocess.std)  # (4, 3, S, S), as served
    with torch.no_grad():
        logits, contour = GenderExport(net).eval()(x)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got_logits, got_contour = session.run(["logits", "contour_map"], {"image": x.numpy()})
    assert got_logits.shape == (4, 2) and got_contour.shape == (4, 1, size, size)
    assert np.abs(got_logits - logits.numpy()).max() <= PARITY_TOLERANCE
    assert np.abs(got_contour - contour.numpy()).max() <= PARITY_TOLERANCE
