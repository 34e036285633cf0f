"""write_config: both layouts are read back by the service's loader; version folders are
not overwritten unless asked."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from models.common.export import new_version_dir, read_extra_card, write_config
from service.runtime import read_config


def _graph(name_in: str, name_out: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", [name_in], [name_out])],
        "g",
        [helper.make_tensor_value_info(name_in, TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info(name_out, TensorProto.FLOAT, ["N", 3, 4, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


COMMON = {
    "name": "m",
    "task": "t",
    "preprocess": {
        "height": 4,
        "width": 4,
        "resize": "letterbox",
        "pad_value": [0, 0, 0],
        "scale": 1.0,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    },
    "labels": ["a"],
    "decode": {},
    "metrics": {},
    "training": {"command": "test"},
}


def test_single_and_multi_graph_configs_read_back(tmp_path: Path) -> None:
    one = tmp_path / "m" / "1"
    one.mkdir(parents=True)
    model = _graph("image", "out")
    onnx.save(model, one / "model.onnx")
    config = write_config(one, model, **COMMON)
    assert config["file"] == "model.onnx" and "graphs" not in config
    assert read_config(one).graph_configs()["model"].outputs[0].name == "out"

    two = tmp_path / "m" / "2"
    two.mkdir(parents=True)
    first, second = _graph("image", "mid"), _graph("mid", "out")
    onnx.save(first, two / "a.onnx")
    onnx.save(second, two / "b.onnx")
    config = write_config(
        two, None, graphs={"a": ("a.onnx", first), "b": ("b.onnx", second)}, **COMMON
    )
    assert "file" not in config and set(config["graphs"]) == {"a", "b"}
    graphs = read_config(two).graph_configs()
    assert graphs["b"].inputs[0].name == "mid" and graphs["a"].file == "a.onnx"

    with pytest.raises(ValueError, match="either"):
        write_config(two, first, graphs={"a": ("a.onnx", first)}, **COMMON)


def test_a_released_version_is_refused_unless_overwrite_is_asked(tmp_path: Path) -> None:
    fresh = new_version_dir(tmp_path, "m", "1", overwrite=False)
    assert fresh == tmp_path / "m" / "1" and fresh.is_dir() and not any(fresh.iterdir())
    kept = fresh / "RULE.txt"  # a hand-kept file no export writes
    kept.write_text("written before the run")
    with pytest.raises(SystemExit, match="not overwritten"):
        new_version_dir(tmp_path, "m", "1", overwrite=False)
    assert kept.read_text() == "written before the run"
    replaced = new_version_dir(tmp_path, "m", "1", overwrite=True)
    assert replaced == fresh and not any(replaced.iterdir())


def test_an_extra_card_is_read_before_anything_is_written(tmp_path: Path) -> None:
    """A missing --extra-card stops an export before its version folder exists: it used to
    stop after the graphs and config.json were written, leaving a card-less version the
    service would load and a re-export would refuse."""
    extra = tmp_path / "extra_card.md"
    extra.write_text("## History\n")
    assert read_extra_card(extra) == "## History\n"
    assert read_extra_card(None) == ""
    with pytest.raises(SystemExit, match="not committed"):
        read_extra_card(tmp_path / "missing.md")


@pytest.mark.parametrize("model", ["attention", "gender"])
def test_exports_refuse_a_missing_extra_card_first(tmp_path: Path, model: str) -> None:
    """Both exports that take --extra-card check it before they load anything (the
    checkpoint and run named here do not exist either) or create the version folder."""
    import importlib

    export = importlib.import_module(f"models.{model}.export")
    source = ["--checkpoint", str(tmp_path / "none.pt")] if model == "attention" else []
    source = source or ["--run", str(tmp_path / "no-run")]
    argv = [*source, "--repository", str(tmp_path / "repo"), "--version", "9"]
    with pytest.raises(SystemExit, match="--extra-card"):
        export.main([*argv, "--extra-card", str(tmp_path / "missing.md")])
    assert not (tmp_path / "repo").exists()
