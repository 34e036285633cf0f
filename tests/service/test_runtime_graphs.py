"""Multi-graph versions (config.json ``graphs``): every graph verified, checked and warmed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from service.errors import ModelLoadError
from service.main import create_app
from service.runtime import DEFAULT_GRAPH, ModelState, load_model, read_config
from tests.service.conftest import make_settings
from tests.service.fakes import IR_VERSION, OPSET, SIZE, landmark_config, landmark_graph
from tests.service.images import encode, scene

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"


def identity_graph() -> bytes:
    """image (N, 3, SIZE, SIZE) -> mid, the same tensor: the first of two chained graphs."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["mid"])],
        "front",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("mid", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def write_two_graph_model(repo: Path, *, head_file_bytes: bytes | None = None) -> Path:
    """landmark/1 as two graphs: ``front`` (identity) then ``head`` (the fake landmark net)."""
    front, head = identity_graph(), landmark_graph(input_name="mid")
    config: dict[str, Any] = landmark_config("landmark", "1", head)
    single = {key: config.pop(key) for key in ("file", "sha256", "inputs", "outputs")}
    config["graphs"] = {
        "front": {
            "file": "front.onnx",
            "sha256": hashlib.sha256(front).hexdigest(),
            "inputs": single["inputs"],
            "outputs": [{"name": "mid", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
        },
        "head": {
            "file": "head.onnx",
            "sha256": single["sha256"],
            "inputs": [{"name": "mid", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
            "outputs": single["outputs"],
        },
    }
    version_dir = repo / "landmark" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "front.onnx").write_bytes(front)
    (version_dir / "head.onnx").write_bytes(head if head_file_bytes is None else head_file_bytes)
    (version_dir / "config.json").write_text(json.dumps(config))
    return version_dir


def test_every_graph_is_loaded_and_runs_by_name(tmp_path: Path) -> None:
    write_two_graph_model(tmp_path)
    model = load_model("landmark", make_settings(tmp_path))
    assert model.state is ModelState.READY, model.error
    assert sorted(model.sessions) == ["front", "head"]
    assert model.session is None  # no single graph to pick
    mid = model.run({"image": np.full((2, 3, SIZE, SIZE), 0.25, np.float32)}, graph="front")
    assert mid["mid"].shape == (2, 3, SIZE, SIZE)
    out = model.run({"mid": mid["mid"]}, graph="head")
    assert out["confidence"].shape == (2, 400, 2)
    with pytest.raises(RuntimeError, match="no loaded graph"):
        model.run({"image": mid["mid"]})
    assert model.providers == ["CPUExecutionProvider"]


def test_single_graph_is_also_served_by_its_default_name(repo: Path) -> None:
    model = load_model("landmark", make_settings(repo))
    assert model.ready and list(model.sessions) == [DEFAULT_GRAPH]
    assert model.graph() is model.session is model.graph(DEFAULT_GRAPH)


def test_a_bad_digest_in_any_graph_fails_the_version(tmp_path: Path) -> None:
    write_two_graph_model(tmp_path, head_file_bytes=landmark_graph(input_name="mid") + b"x")
    model = load_model("landmark", make_settings(tmp_path))
    assert model.state is ModelState.FAILED
    assert "graph 'head'" in (model.error or "") and "sha256" in (model.error or "")
    assert model.sessions == {}


def test_graph_shapes_are_checked(tmp_path: Path) -> None:
    version_dir = write_two_graph_model(tmp_path)
    config = json.loads((version_dir / "config.json").read_text())
    config["graphs"]["front"]["outputs"][0]["shape"] = [-1, 3, SIZE, SIZE + 1]
    (version_dir / "config.json").write_text(json.dumps(config))
    model = load_model("landmark", make_settings(tmp_path))
    assert not model.ready and "graph 'front'" in (model.error or "")


@pytest.mark.parametrize(
    "change",
    [
        {"file": "model.onnx"},  # both layouts at once
        {"graphs": {}},
    ],
)
def test_layouts_are_exclusive_and_complete(tmp_path: Path, change: dict[str, Any]) -> None:
    version_dir = write_two_graph_model(tmp_path)
    config = json.loads((version_dir / "config.json").read_text())
    config.update(change)
    (version_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not a valid config"):
        read_config(version_dir)


def test_single_graph_config_without_file_is_refused(repo: Path) -> None:
    version_dir = repo / "landmark" / "1"
    config = json.loads((version_dir / "config.json").read_text())
    del config["file"]
    (version_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="needs"):
        read_config(version_dir)


def test_models_endpoint_lists_each_graph(tmp_path: Path) -> None:
    write_two_graph_model(tmp_path)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        (info,) = client.get("/models").json()["models"]
        assert client.get("/health/ready").status_code == 200
    assert info["state"] == "ready"
    assert [t["name"] for t in info["inputs"]] == ["image"]
    assert [t["name"] for t in info["outputs"]] == ["mid", "class_probs", "confidence", "points"]
    assert sorted(info["graphs"]) == ["front", "head"]
    assert info["graphs"]["head"]["inputs"][0]["name"] == "mid"
    assert info["graphs"]["front"]["file"] == "front.onnx"


def test_fake_graphs_are_valid_onnx() -> None:
    onnx.checker.check_model(onnx.load_from_string(identity_graph()))


@pytest.mark.parametrize(
    ("decode_change", "message"),
    [
        ({"perception_graph": "head"}, "which config.json does not have"),
        ({"features_graph": "backbone"}, "which config.json does not have"),
        ({"feature_map": "logits_of_features"}, "lacks the inputs"),
    ],
)
def test_attention_graph_roles_are_checked_at_load(
    tmp_path: Path, decode_change: dict[str, Any], message: str
) -> None:
    # Before the check such a version loaded as ready and failed on every request.
    target = tmp_path / "repository" / "attention" / "5"
    shutil.copytree(REPOSITORY / "attention" / "5", target)
    config = json.loads((target / "config.json").read_text())
    config["decode"].update(decode_change)
    if "feature_map" in decode_change:  # the features graph must still have the output
        for graph in config["graphs"].values():
            for spec in graph["outputs"]:
                if spec["name"] == "feature_map":
                    spec["name"] = decode_change["feature_map"]
    (target / "config.json").write_text(json.dumps(config))
    model = load_model("attention", make_settings(tmp_path / "repository", models=["attention"]))
    assert not model.ready
    assert message in (model.error or "")


def test_an_attention_model_must_list_its_features_graph_first(tmp_path: Path) -> None:
    """The first graph is the one that takes the image (/models lists its inputs, V2 serves
    it as the model's own name): listed second, the version is refused at load."""
    target = tmp_path / "repository" / "attention" / "5"
    shutil.copytree(REPOSITORY / "attention" / "5", target)
    config = json.loads((target / "config.json").read_text())
    config["graphs"] = dict(reversed(list(config["graphs"].items())))
    (target / "config.json").write_text(json.dumps(config))
    model = load_model("attention", make_settings(tmp_path / "repository", models=["attention"]))
    assert not model.ready
    assert "must list the features graph 'features' first" in (model.error or "")


def test_an_image_endpoint_refuses_a_model_of_several_graphs(tmp_path: Path) -> None:
    # /recognize runs one graph; a two-graph landmark version is ready (V2 serves each
    # graph) but not something this endpoint can run: 503 saying so, not a 500.
    write_two_graph_model(tmp_path)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        png = encode(scene())
        response = client.post("/recognize", files={"image": ("a.png", png, "image/png")})
    assert response.status_code == 503
    assert "several graphs" in response.json()["detail"]


def test_an_attention_model_served_with_crop_is_refused_at_load(tmp_path: Path) -> None:
    """Edited masks are mapped onto the letterboxed input: a crop config would fail every
    correction with a 500 instead of failing the load with the reason."""
    target = tmp_path / "repository" / "attention" / "5"
    shutil.copytree(REPOSITORY / "attention" / "5", target)
    config = json.loads((target / "config.json").read_text())
    config["preprocess"]["resize"] = "crop"
    (target / "config.json").write_text(json.dumps(config))
    model = load_model("attention", make_settings(tmp_path / "repository", models=["attention"]))
    assert not model.ready
    assert "needs preprocess resize 'letterbox'" in (model.error or "")
