"""The export's parity gate: ``check_parity`` measures a real difference between ONNX
Runtime and PyTorch, and the model exports refuse (SystemExit) a graph that differs.

The end-to-end export tests only read back the ``parity_max_abs_diff`` that
``check_parity`` itself wrote, so a ``check_parity`` that always said 0.0, or a gate that
never fired, would pass them. Here the graph and the module are made to disagree for real:
weights are changed after the graph was written, as a graph exported from another
checkpoint, or an exporter that mistranslated an operator, would disagree.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from models.common import export as common_export
from models.common.export import PARITY_TOLERANCE, check_parity, export_onnx

# A shift much larger than the tolerance, added to one output only.
SHIFT = 0.5


class TwoHeads(nn.Module):
    """Image -> (a map, a vector): two outputs, so a parity check that compared only the
    first would be caught."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, 4, 3, padding=1)
        self.map_head = nn.Conv2d(4, 1, 1)
        self.vector_head = nn.Linear(4, 3)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.trunk(image))
        return self.map_head(features), self.vector_head(features.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[TwoHeads, Path]:
    torch.manual_seed(0)
    module = TwoHeads().eval()
    path = tmp_path_factory.mktemp("parity") / "model.onnx"
    export_onnx(module, (torch.zeros(2, 3, 8, 8),), path, ["image"], ["map", "vector"])
    return module, path


def batch(count: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randn(count, 3, 8, 8, generator=generator)}


def test_check_parity_is_within_tolerance_for_the_module_it_exported(
    exported: tuple[TwoHeads, Path],
) -> None:
    """The positive control: the graph of a module agrees with that module (on a batch
    size other than the example's, through the dynamic axis), so the gate passes what it
    should pass."""
    module, path = exported
    difference = check_parity(module, path, batch())
    assert 0.0 <= difference <= PARITY_TOLERANCE


def test_check_parity_reports_a_module_changed_after_export(
    exported: tuple[TwoHeads, Path],
) -> None:
    """Guards the measurement itself: with the second output's bias moved by SHIFT after
    the graph was written, check_parity must report that difference (about SHIFT, far above
    the tolerance), not 0.0 and not only the first output's agreement."""
    module, path = exported
    changed = copy.deepcopy(module)
    with torch.no_grad():
        changed.vector_head.bias.add_(SHIFT)
    difference = check_parity(changed, path, batch())
    assert difference > PARITY_TOLERANCE
    assert difference == pytest.approx(SHIFT, abs=1e-4)


def test_check_parity_sees_a_change_in_the_first_output_too(
    exported: tuple[TwoHeads, Path],
) -> None:
    """The same with the first output moved: every output counts, whichever it is."""
    module, path = exported
    changed = copy.deepcopy(module)
    with torch.no_grad():
        changed.map_head.bias.add_(SHIFT)
    assert check_parity(changed, path, batch()) == pytest.approx(SHIFT, abs=1e-4)


# ---- the gates in the model exports --------------------------------------------------------
def perturb_after_export(monkeypatch: pytest.MonkeyPatch, exporter: ModuleType) -> list[Path]:
    """Make ``exporter``'s export_onnx change the module's weights right after writing
    each graph, so the graph and the module it is checked against really disagree; the
    real check_parity stays in place. Returns the paths written."""
    written: list[Path] = []

    def export_then_perturb(module: nn.Module, *args: Any) -> Any:
        model = common_export.export_onnx(module, *args)
        written.append(args[1])
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.mul_(1.5).add_(0.05)
        return model

    monkeypatch.setattr(exporter, "export_onnx", export_then_perturb)
    return written


DIFFER = r"ONNX Runtime and PyTorch differ by \S+"


def assert_refused(refusal: pytest.ExceptionInfo[SystemExit]) -> None:
    """The SystemExit is the parity gate's and names a difference above the tolerance."""
    message = str(refusal.value.code)
    assert message.startswith("ONNX Runtime and PyTorch differ by "), message
    assert float(message.split()[6]) > PARITY_TOLERANCE, message


def test_the_attention_export_refuses_graphs_that_differ_from_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards models/attention/export.py's gate in export_graphs: a features or perception
    graph that disagrees with the network must stop the export before a version is written,
    since the service would serve figures measured on one network with another's graph."""
    from models.attention import export as exporter
    from models.attention.net import AttentionNet, AttentionNetConfig

    torch.manual_seed(0)
    net = AttentionNet(AttentionNetConfig(stem_width=8, feature_width=16, perception_width=16))
    written = perturb_after_export(monkeypatch, exporter)
    sample = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    folder = tmp_path / "attention" / "1"
    with pytest.raises(SystemExit, match=DIFFER) as refusal:
        exporter.export_graphs(net.eval(), folder, sample)
    assert_refused(refusal)
    assert written == [folder / "features.onnx", folder / "perception.onnx"]


def test_the_gender_export_refuses_a_graph_that_differs_from_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards models/gender/export.py's gate in export_graph (see the attention test)."""
    from models.gender import export as exporter
    from models.gender.net import ContourNetConfig, GenderNet, GenderNetConfig

    torch.manual_seed(0)
    contour = ContourNetConfig(input_size=64, widths=(8, 8, 12, 16), unified_channels=4)
    config = GenderNetConfig(contour=contour, semantic_widths=(8, 8, 16, 16), fusion_width=16)
    net = GenderNet(config)
    written = perturb_after_export(monkeypatch, exporter)
    probe = np.random.default_rng(3).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    folder = tmp_path / "gender" / "1"
    folder.mkdir(parents=True)
    with pytest.raises(SystemExit, match=DIFFER) as refusal:
        exporter.export_graph(net.eval(), folder, probe)
    assert_refused(refusal)
    assert written == [folder / "model.onnx"]


def test_the_occlusion_export_refuses_a_graph_that_differs_from_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards models/occlusion/export.py's gate in export_graph (see the attention test)."""
    from models.occlusion import export as exporter
    from models.occlusion.net import OcclusionNet, OcclusionNetConfig

    torch.manual_seed(0)
    net = OcclusionNet(OcclusionNetConfig(widths=(4, 8, 8, 16), pattern_width=4, embedding_dim=16))
    written = perturb_after_export(monkeypatch, exporter)
    sample = torch.randn(5, 3, 112, 96, generator=torch.Generator().manual_seed(4))
    folder = tmp_path / "occlusion" / "1"
    folder.mkdir(parents=True)
    with pytest.raises(SystemExit, match=DIFFER) as refusal:
        exporter.export_graph(net.eval(), folder, sample)
    assert_refused(refusal)
    assert written == [folder / "model.onnx"]


def test_the_landmark_export_refuses_a_graph_that_differs_from_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards models/landmark/export.py's gate in main (see the attention test): an
    untrained tiny network's checkpoint, four generated test scenes, and the export must
    stop at the parity check, before it measures anything or writes config.json."""
    from models.landmark import export as exporter
    from models.landmark.net import LandmarkNet, LandmarkNetConfig, save_checkpoint
    from models.landmark.train import MEAN, STD

    torch.manual_seed(0)
    net = LandmarkNet(LandmarkNetConfig(input_size=64, widths=(8, 8, 16, 16), head_width=16))
    checkpoint = tmp_path / "tiny.pt"
    train_config = {"test_images": 4, "val_images": 4, "cache_dir": None}
    save_checkpoint(checkpoint, net, mean=MEAN, std=STD, train_config=train_config)
    written = perturb_after_export(monkeypatch, exporter)

    def past_the_gate(*args: Any) -> None:  # the first step after the gate: measuring
        raise AssertionError("the export went past its parity gate and measured the graph")

    monkeypatch.setattr(exporter, "onnx_predict", past_the_gate)
    repository = tmp_path / "repository"
    argv = ["--checkpoint", str(checkpoint), "--repository", str(repository), "--version", "1"]
    with pytest.raises(SystemExit, match=DIFFER) as refusal:
        exporter.main(argv)
    assert_refused(refusal)
    folder = repository / "landmark" / "1"
    assert written == [folder / "model.onnx"]
    assert not (folder / "config.json").exists()
