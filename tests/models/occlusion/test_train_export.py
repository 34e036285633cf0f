"""A tiny training run on an image folder, its export, and ONNX Runtime vs PyTorch parity."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
import torch
from PIL import Image

from models.occlusion import export, faces
from models.occlusion.data import SynthConfig
from models.occlusion.net import OcclusionExport, OcclusionNetConfig, load_checkpoint
from models.occlusion.patterns import pattern_table
from models.occlusion.train import TrainConfig, train
from service.decoding import OcclusionDecoder, build_decoder
from service.imaging import LetterboxTransform

pytestmark = [pytest.mark.train, pytest.mark.slow]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """20 lfw_subset faces as 20 identities, trained a few steps without dlib (the faces
    tests cover alignment), exported into a temporary repository."""
    root = tmp_path_factory.mktemp("occlusion")
    folder = root / "faces"
    for i, face in enumerate(skimage.data.lfw_subset()[:20]):
        (folder / f"p{i:02d}").mkdir(parents=True)
        image = Image.fromarray((face * 255).astype(np.uint8)).resize((96, 112))
        image.convert("RGB").save(folder / f"p{i:02d}" / "0.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(faces, "dlib", None)
        config = TrainConfig(
            out=str(root / "run"),
            faces=str(folder),
            steps=6,
            stop_after_step=4,
            batch_size=16,
            train_sprites=16,
            val_sprites=16,
            val_per_face=4,
            eval_every=2,
            threads=1,
            net=OcclusionNetConfig(widths=(4, 8, 8, 16), pattern_width=4, embedding_dim=16),
            synth=SynthConfig(),
        )
        history = train(config, f"python -m models.occlusion.train --faces {folder}")
        mp.setattr(export, "TEST_SPRITES", 16)
        ckpt = root / "run" / "best.pt"
        result = export.main(
            ["--checkpoint", str(ckpt), "--version", "3", "--repository", str(root / "repo")]
        )
    return {"root": root, "history": history, "config": result, "ckpt": ckpt}


def test_training_writes_history_checkpoints_and_curves(exported: dict) -> None:
    run = exported["root"] / "run"
    assert {"best.pt", "last.pt", "history.json", "loss_curves.png"} <= {
        p.name for p in run.iterdir()
    }
    evals = exported["history"]["evals"]
    assert [row["step"] for row in evals] == [2, 4]
    assert exported["history"]["stopped_early_at_step"] == 4
    assert all(np.isfinite(row["train_total"]) for row in evals)


def test_export_writes_the_version(exported: dict) -> None:
    version = exported["root"] / "repo" / "occlusion" / "3"
    assert {"model.onnx", "config.json", "MODEL_CARD.md", "examples.png"} <= {
        p.name for p in version.iterdir()
    }
    config = json.loads((version / "config.json").read_text())
    assert config["task"] == "occlusion_embedding"
    assert config["preprocess"]["height"] == 112 and config["preprocess"]["width"] == 96
    table = pattern_table(5)
    assert config["decode"]["patterns"] == [list(b) if b else None for b in table]
    assert len(config["labels"]) == 226
    assert [o["name"] for o in config["outputs"]] == ["pattern_logits", "embedding"]
    assert config["outputs"][0]["shape"] == [-1, 226]
    assert {"pattern_exact", "mean_iou_occluded", "occluded_vs_not"} <= set(config["metrics"])
    card = (version / "MODEL_CARD.md").read_text()
    assert "python -m models.occlusion.train" in card and "--faces" in card
    # The run stopped early: the card's command reproduces where it stopped.
    assert "--stop-after-step 4" in card
    assert config["training"]["command"].endswith("--stop-after-step 4")


def test_onnx_matches_pytorch_on_a_dynamic_batch(exported: dict) -> None:
    net, _ = load_checkpoint(exported["ckpt"])
    module = OcclusionExport(net).eval()
    path = exported["root"] / "repo" / "occlusion" / "3" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 7):
        x = torch.randn(batch, 3, 112, 96)
        got = session.run(None, {"face": x.numpy()})
        with torch.no_grad():
            want = module(x)
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4)


def test_the_service_decoder_accepts_the_config(exported: dict) -> None:
    config = exported["config"]
    shapes = {o["name"]: o["shape"] for o in config["outputs"]}
    decoder = build_decoder(config["task"], config["decode"], config["labels"], shapes)
    assert isinstance(decoder, OcclusionDecoder)
    logits = np.full((1, 226), -10.0, np.float32)
    pid = pattern_table(5).index((2, 4, 0, 4))
    logits[0, pid] = 10.0
    outputs = {"pattern_logits": logits, "embedding": np.ones((1, 16), np.float32)}
    # A 192 x 224 upload: twice the model input, no letterbox band.
    result = decoder.decode(outputs, LetterboxTransform(0.5, 0, 0, 192, 224), (112, 96))
    assert result.occluded and result.pattern_id == pid and result.blocks == (2, 4, 0, 4)
    assert result.box == pytest.approx((0.0, 89.6, 153.6, 179.2))
    assert np.linalg.norm(result.embedding) == pytest.approx(1.0)
