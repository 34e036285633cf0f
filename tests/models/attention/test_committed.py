"""The committed attention graphs are their committed checkpoints: ONNX Runtime on
features.onnx and perception.onnx matches PyTorch on the network the checkpoint rebuilds.

The export checks parity once when it writes a version; this keeps checking the files as
they are in the repository (a graph replaced by hand, or a checkpoint from another run,
would fail here). A re-released version (``released_from`` in its config.json, as the
served version 6 is version 5's graphs with edge-repeating letterbox bars) has no
checkpoint of its own: its graph files must be its source's, byte for byte, so that the
source's checkpoint (and the source's measured figures) stand for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.attention.data import box_masks
from models.attention.net import AttentionNet, FeaturesExport, PerceptionExport, load_checkpoint
from models.common.export import PARITY_TOLERANCE
from models.common.tensors import to_tensor
from service.runtime import read_config
from tests.models.attention.fakes import item

ATTENTION = Path(__file__).resolve().parents[3] / "models" / "repository" / "attention"
VERSIONS = sorted((p.name for p in ATTENTION.iterdir() if p.name.isdigit()), key=int)
# Every version whose own trained network is committed beside its graphs.
TRAINED = sorted((p.parent.name for p in ATTENTION.glob("*/checkpoint.pt")), key=int)
FEATURE_OUTPUTS = ["feature_map", "attention_map", "attention_probs"]


def config_of(version: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ATTENTION / version / "config.json").read_text())
    return config


def file_digests(version: str) -> dict[str, str]:
    """Each graph's name -> sha256 of its file's bytes as committed."""
    folder = ATTENTION / version
    return {
        name: hashlib.sha256((folder / graph.file).read_bytes()).hexdigest()
        for name, graph in read_config(folder).graph_configs().items()
    }


def checkpoint_source(version: str) -> str:
    """The version whose checkpoint stands for ``version``'s graphs: itself if it has one,
    else (following ``released_from``) the source it was re-released from."""
    seen = [version]
    while not (ATTENTION / version / "checkpoint.pt").is_file():
        source = config_of(version).get("released_from", {}).get("version")
        assert source is not None, f"version {version} has no checkpoint and no source"
        assert source not in seen, f"released_from loops: {[*seen, source]}"
        seen.append(source)
        version = source
    return version


def canvases(size: int, count: int = 5) -> np.ndarray:
    """``(count, size, size, 3)`` uint8: noise, and Fashion-MNIST-like items (a bright
    class-dependent bar, tests/models/attention/fakes.py) on dark and on noisy canvases."""
    rng = np.random.default_rng(17)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    for k in range(1, count):
        if k % 2:
            images[k] //= 4  # a dim background, as the training canvases' photographs are
        shape = item(k, rng)
        top, left = rng.integers(0, size - 28, 2)
        patch = images[k, top : top + 28, left : left + 28]
        patch[shape > 0] = shape[shape > 0, None]
    return images


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    assert got.shape == tuple(want.shape), what
    difference = float(np.abs(got - want.numpy()).max())
    assert difference <= PARITY_TOLERANCE, f"{what}: ONNX Runtime vs PyTorch {difference:.2e}"


def test_the_served_version_s_graphs_have_a_checkpoint() -> None:
    """The highest version (the one served by default) must trace, through re-releases of
    identical graph files, to a version whose checkpoint is committed; else nothing in the
    repository says which network its graphs are."""
    highest = VERSIONS[-1]
    source = checkpoint_source(highest)
    assert source in TRAINED
    assert file_digests(highest) == file_digests(source)


def test_version_6_is_version_5_s_graphs_rereleased() -> None:
    """Version 6 is served as version 5's graphs with other letterbox bars (README, its
    card): its features.onnx and perception.onnx must be version 5's bytes (so version 5's
    checkpoint, checked below, and its figures stand for it), the digests its config.json
    records must be those bytes' (the service verifies them at load), and the only change
    in how it is served must be the bars."""
    v5, v6 = config_of("5"), config_of("6")
    assert v6["released_from"]["version"] == "5"
    assert not (ATTENTION / "6" / "checkpoint.pt").exists()
    digests = file_digests("5")
    assert set(digests) == {"features", "perception"}
    assert file_digests("6") == digests
    for config in (v5, v6):
        assert {name: g["sha256"] for name, g in config["graphs"].items()} == digests
    assert v6["graphs"] == v5["graphs"]
    assert v6["preprocess"] == {**v5["preprocess"], "pad": "edge"}
    assert v5["preprocess"].get("pad", "constant") == "constant"
    assert v6["labels"] == v5["labels"] and v6["decode"] == v5["decode"]


@pytest.mark.parametrize("version", TRAINED)
def test_committed_graphs_match_their_checkpoint(version: str) -> None:
    """Guards each committed version's two graphs against its own checkpoint: ONNX Runtime
    on features.onnx (feature map, attention map, attention-branch probabilities) and on
    perception.onnx (with the model's own map, a box mask as a correction sends, and an
    arbitrary edited map) must match the rebuilt PyTorch network within the export's
    tolerance, on inputs normalised as the service normalises them."""
    folder = ATTENTION / version
    net, _ = load_checkpoint(folder / "checkpoint.pt")
    assert isinstance(net, AttentionNet)
    config = read_config(folder)
    preprocess, graphs = config.preprocess, config.graph_configs()
    size, grid = preprocess.height, config.decode["map"]["height"]
    assert (size, grid) == (net.config.input_size, net.config.map_size)
    images = canvases(size)
    x = to_tensor(images, preprocess.mean, preprocess.std)  # (N, 3, S, S), as served

    features = session(folder / graphs["features"].file)
    got = features.run(FEATURE_OUTPUTS, {"image": x.numpy()})
    with torch.no_grad():
        want = FeaturesExport(net).eval()(x)
    for name, g, w in zip(FEATURE_OUTPUTS, got, want, strict=True):
        assert_close(g, w, f"version {version} {name}")
    feature_map, own_map = want[0], want[1]
    assert own_map.shape == (len(images), 1, grid, grid)

    perception = session(folder / graphs["perception"].file)
    boxes = np.array([[8, 8, 40, 40], [0, 0, size, size // 2]] * 3)[: len(images)]
    maps = {
        "own map": own_map,
        "box mask": torch.from_numpy(box_masks(boxes, size, grid)),
        "edited map": torch.rand(own_map.shape, generator=torch.Generator().manual_seed(5)),
    }
    for what, attention_map in maps.items():
        (probs,) = perception.run(
            ["perception_probs"],
            {"feature_map": feature_map.numpy(), "attention_map": attention_map.numpy()},
        )
        with torch.no_grad():
            expected = PerceptionExport(net).eval()(feature_map, attention_map)
        assert_close(probs, expected, f"version {version} perception with the {what}")
    # The two graphs chained as the service chains them answer what the network answers.
    (chained,) = perception.run(
        ["perception_probs"], {"feature_map": got[0], "attention_map": got[1]}
    )
    with torch.no_grad():
        answer = net(x)["perception_logits"].softmax(-1)
    assert_close(chained, answer, f"version {version} features -> perception")
