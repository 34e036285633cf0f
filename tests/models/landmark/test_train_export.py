"""A tiny model trained end to end, checkpointed, exported, and checked against ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.landmark import export, operating_point
from models.landmark.data import generate_split
from models.landmark.net import LandmarkExport, LandmarkNet, LandmarkNetConfig, load_checkpoint
from models.landmark.scenes import SceneConfig
from models.landmark.train import TrainConfig, load_data, train

TINY = LandmarkNetConfig(input_size=64, widths=(8, 8, 16, 16), head_width=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        out=str(out),
        train_images=48,
        val_images=16,
        test_images=16,
        epochs=3,
        batch_size=16,
        class_only_epochs=1,
        loc_ramp_epochs=1,
        mine_from_epoch=1,
        mine_every=1,
        cache_dir=None,
        net=TINY,
        unlabelled_rate=0.3,
    )
    history = train(config, progress=False)
    return out, history


def test_net_shapes():
    net = LandmarkNet(TINY)
    out = net(torch.zeros(3, 3, 64, 64))
    assert out["class_logits"].shape == (3, 64, 2, 9)
    assert out["confidence_logits"].shape == (3, 64, 2)
    assert out["points"].shape == (3, 64, 2, 2)
    # A zero offset puts the point at the cell centre, row-major.
    assert net.centres[9].tolist() == [[12.0, 12.0]]


def test_training_runs_the_schedule_and_mining(trained):
    out, history = trained
    epochs = history["epochs"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[0]["loc_weight"] == 0.0 and epochs[-1]["loc_weight"] == 1.0  # claim 17
    assert [m["epoch"] for m in history["mining"]] == [1, 2]
    assert all(m["hidden_total"] > 0 for m in history["mining"])
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert json.loads((out / "history.json").read_text())["command"].startswith("python -m")


def test_checkpoint_rebuilds_the_network_from_the_file_alone(trained):
    out, _ = trained
    net, ckpt = load_checkpoint(out / "best.pt")
    assert net.config == TINY and ckpt["mean"] and ckpt["std"]
    again, _ = load_checkpoint(out / "best.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x)["points"], again(x)["points"])


def test_export_writes_a_checked_graph_that_matches_pytorch(trained, tmp_path):
    out, _ = trained
    config = export.main(
        [
            "--checkpoint",
            str(out / "best.pt"),
            "--repository",
            str(tmp_path),
            "--version",
            "3",
            "--history",
            str(out / "history.json"),
            "--test-images",
            "16",
        ]
    )
    version = tmp_path / "landmark" / "3"
    graph = version / "model.onnx"
    onnx.checker.check_model(onnx.load(str(graph)), full_check=True)
    assert config["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    assert json.loads((version / "config.json").read_text())["version"] == "3"
    assert config["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert [o["name"] for o in config["outputs"]] == ["class_probs", "confidence", "points"]
    assert config["outputs"][0]["shape"] == [-1, 64, 2, 9]
    assert config["training"]["parity_max_abs_diff"] <= 1e-4
    assert set(config["metrics"]["test"]) >= {"recall_at_precision_95", "class_accuracy"}
    # The threshold fixed on the validation split, and the test split measured at it.
    point = config["metrics"]["operating_point_from_validation"]
    assert point["chosen_on"] == "validation"
    # Re-measured from the version directory alone, on the validation scenes it was fixed on
    # (config.json records their number: 16 here, not the training default).
    assert config["training"]["val_images"] == 16
    again = operating_point.main(["--version-dir", str(version)])
    assert again["val_images"] == 16
    assert again["score"] == pytest.approx(point["score"])
    assert "synthetic" in (version / "MODEL_CARD.md").read_text().lower()
    # The generator's settings per split: the test scenes regenerate from config.json alone
    # (with its seed), and only the training scenes leave landmarks unlabelled (0.3 here).
    scenes = config["training"]["scenes"]
    assert [scenes[w]["unlabelled_rate"] for w in ("train", "val", "test")] == [0.3, 0.0, 0.0]
    test_scenes = SceneConfig(
        **{**scenes["test"], "distractors": tuple(scenes["test"]["distractors"])}
    )
    regenerated = generate_split(test_scenes, "test", 16, config["training"]["seed"])
    measured = load_data(TrainConfig(test_images=16, cache_dir=None, net=TINY), "test")
    assert np.array_equal(regenerated.images, measured.images)

    # Dynamic batch: a batch size the export never saw.
    net, _ = load_checkpoint(out / "best.pt")
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        want = LandmarkExport(net)(x)
    got = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()}
    )
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w.numpy()).max() <= 1e-4


def test_real_csv_data_trains(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (120, 90), (30 * i, 60, 90)).save(tmp_path / f"{i}.png")
    (tmp_path / "train.csv").write_text(
        "file,class,x,y\n" + "".join(f"{i}.png,stop,{20 + 10 * i},40\n" for i in range(4))
    )
    config = TrainConfig(
        out=str(tmp_path / "run"),
        data=f"csv:{tmp_path / 'train.csv'}",
        epochs=1,
        batch_size=64,  # more than the training images: one short batch (it was 0 steps)
        cache_dir=None,
        mining=False,
        net=replace(TINY),
    )
    history = train(config, progress=False)
    # Validation is one image held out of the four (it was all four: the training images).
    assert history["epochs"][0]["val"]["labels"] == 1
    assert np.isfinite(history["epochs"][0]["train_total"])
