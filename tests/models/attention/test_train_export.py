"""Tiny end-to-end run: train, export two graphs (parity <= 1e-4), serve them, simulate
teacher records, fine-tune into the next version, serve that."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.attention import compare, finetune
from models.attention import export as exporter
from models.attention.export import training_commands
from models.attention.net import AttentionNet, AttentionNetConfig, load_checkpoint
from models.attention.train import TrainConfig, to_tensor, train
from models.common.export import PARITY_TOLERANCE
from service.feedback import open_store
from service.runtime import load_model
from service.settings import Settings
from tests.models.attention.fakes import write_fake_fashion_mnist
from tests.service.conftest import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.train]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("attention")
    data = write_fake_fashion_mnist(root / "fmnist")
    config = TrainConfig(
        out=str(root / "run"),
        train_images=256,
        val_images=64,
        val_pairs=32,
        epochs=2,
        batch_size=64,
        data_root=str(data),
        recompose=True,  # epoch 2 trains on freshly composed canvases
        net=AttentionNetConfig(stem_width=8, feature_width=16, perception_width=16),
    )
    history = train(config, progress=False)
    repo = root / "repository"
    common = ["--repository", str(repo), "--data-root", str(data)]
    exporter.main(
        [
            "--checkpoint",
            str(root / "run" / "best.pt"),
            "--version",
            "1",
            "--history",
            str(root / "run" / "history.json"),
            "--test-pairs",
            "32",
            "--test-items",
            "64",
            *common,
        ]
    )
    feedback = root / "feedback.sqlite3"
    finetune.main(["simulate", "--feedback", str(feedback), "--count", "48", *common])
    finetune.main(
        [
            "--feedback",
            str(feedback),
            "--select",
            "all",
            "--epochs",
            "1",
            "--held-out",
            "32",
            "--test-pairs",
            "32",
            "--test-items",
            "64",
            *common,
        ]
    )
    return {"root": root, "repo": repo, "history": history, "feedback": feedback, "data": data}


def test_training_records_history_and_checkpoints(pipeline: dict) -> None:
    history = pipeline["history"]
    assert len(history["epochs"]) == 2
    row = history["epochs"][-1]
    assert {"train_attention", "train_perception", "train_total"} <= set(row)
    assert row["train_total"] == pytest.approx(row["train_attention"] + row["train_perception"])
    run = pipeline["root"] / "run"
    assert (run / "best.pt").exists() and (run / "loss_curves.png").exists()
    # Either checkpoint exports with the command that trained it.
    for name in ("best.pt", "last.pt"):
        _, ckpt = load_checkpoint(run / name)
        assert training_commands(ckpt) == [history["command"]], name


def test_compare_measures_checkpoints_and_averages_on_one_validation_set(pipeline: dict) -> None:
    run, data = pipeline["root"] / "run", str(pipeline["data"])
    best, last = str(run / "best.pt"), str(run / "last.pt")
    saved = pipeline["root"] / "averages"
    small = ["--val-images", "32", "--val-pairs", "16", "--bn-canvases", "64", "--data-root", data]
    results = compare.main(
        [best, last, "--average", f"{best},{last}", "--save-averages", str(saved), *small]
    )
    assert list(results) == [best, last, f"{best},{last}"]
    for figures in results.values():
        assert set(figures) == {
            "perception_accuracy",
            "attention_accuracy",
            "correction_mask_on_a",
            "correction_mask_on_b",
        }
        assert all(0.0 <= v <= 1.0 for v in figures.values())
    # The average's weights are the mean of the two; its batch-norm statistics are new.
    (path,) = saved.iterdir()
    averaged, ckpt = load_checkpoint(path)
    assert ckpt["averaged_from"] == [best, last]
    a, b = load_checkpoint(best)[0].state_dict(), load_checkpoint(last)[0].state_dict()
    for name, value in averaged.state_dict().items():
        if name.endswith("weight") and value.dtype.is_floating_point:
            torch.testing.assert_close(value, (a[name] + b[name]) / 2, msg=name)


def test_export_writes_two_graphs_with_parity(pipeline: dict) -> None:
    version_dir = pipeline["repo"] / "attention" / "1"
    config = json.loads((version_dir / "config.json").read_text())
    assert "file" not in config and set(config["graphs"]) == {"features", "perception"}
    parity = config["training"]["parity_max_abs_diff"]
    assert max(parity.values()) <= PARITY_TOLERANCE
    for name in ("features.onnx", "perception.onnx", "MODEL_CARD.md", "checkpoint.pt"):
        assert (version_dir / name).exists(), name
    assert config["decode"]["map"] == {"height": 16, "width": 16}
    assert 0.0 <= config["metrics"]["test"]["perception_accuracy"] <= 1.0
    # The card describes the network it was exported from (one block each here).
    card = (version_dir / "MODEL_CARD.md").read_text()
    assert "stride 4, 1 residual block at the feature map, K = 16 channels" in card
    assert "perception branch (stride-2 conv, 1 residual block," in card

    # Independent parity check: ONNX Runtime on fresh inputs and an edited map.
    net, _ = load_checkpoint(version_dir / "checkpoint.pt")
    onnx_model = exporter.OnnxAttention(version_dir)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    edited = rng.random((5, 1, 16, 16), dtype=np.float32)
    got = onnx_model.run(images, [None, edited])
    with torch.no_grad():
        own = net(to_tensor(images))
        with_edit = net(to_tensor(images), attention=torch.from_numpy(edited))
    assert np.abs(got["perception_0"] - own["perception_logits"].softmax(-1).numpy()).max() <= 1e-4
    assert (
        np.abs(got["perception_1"] - with_edit["perception_logits"].softmax(-1).numpy()).max()
        <= 1e-4
    )
    assert np.abs(got["maps"] - own["attention_map"].numpy()).max() <= 1e-4


def test_service_loads_both_versions(pipeline: dict) -> None:
    settings = make_settings(pipeline["repo"])
    for version in ("1", "2"):
        model = load_model("attention", replace_versions(settings, version))
        assert model.ready, model.error
        assert sorted(model.sessions) == ["features", "perception"]


def replace_versions(settings: Settings, version: str) -> Settings:
    return settings.model_copy(update={"model_versions": {"attention": version}})


def test_finetune_reads_the_records_and_writes_the_next_version(pipeline: dict) -> None:
    store = open_store(pipeline["feedback"])
    assert store.counts().total == 48
    config = json.loads((pipeline["repo"] / "attention" / "2" / "config.json").read_text())
    info = config["metrics"]["finetune"]
    assert info["records_selected"] == 48 and info["selection"] == "all"
    assert info["trained_parts"] == ["attention", "perception"]
    assert set(info["held_out_before"]) == set(info["held_out_after"])
    assert (
        "Fine-tuning from teacher maps"
        in (pipeline["repo"] / "attention" / "2" / "MODEL_CARD.md").read_text()
    )


def test_finetune_freezes_the_parts_not_chosen(pipeline: dict) -> None:
    net, _ = load_checkpoint(pipeline["repo"] / "attention" / "1" / "checkpoint.pt")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = finetune.teacher_set(open_store(pipeline["feedback"]).records()[:16], net)
    finetune.finetune(net, data, parts=("attention",), gamma=0.1, epochs=1, lr=1e-2, progress=False)
    after = net.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"attention_block", "attention_head", "map_head"}


def test_simulate_and_finetune_use_postgresql_by_url(pipeline: dict, postgres_url: str) -> None:
    """--feedback takes what VISION_FEEDBACK_URL takes: simulate writes to PostgreSQL,
    fine-tuning reads from it, and the card names the database without its password."""
    common = ["--repository", str(pipeline["repo"]), "--data-root", str(pipeline["data"])]
    counts = finetune.main(["simulate", "--feedback", postgres_url, "--count", "12", *common])
    assert counts["total"] == 12
    small = ["--epochs", "1", "--replay", "0", "--held-out", "16", "--test-pairs", "16"]
    finetune.main(
        ["--feedback", postgres_url, "--select", "all", "--version", "3", *small, *common]
    )
    version_dir = pipeline["repo"] / "attention" / "3"
    info = json.loads((version_dir / "config.json").read_text())["metrics"]["finetune"]
    assert info["records_stored"] == 12 and info["records_selected"] == 12
    assert info["feedback_db"].startswith("postgresql://vision:***@127.0.0.1:")
    assert "test-password" not in (version_dir / "MODEL_CARD.md").read_text()


def test_finetune_from_a_rereleased_version_takes_its_source_s_weights_and_keeps_its_bars(
    pipeline: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version re-released with edge bars (as the served attention version 6 is version
    5's graphs) has no checkpoint: fine-tuning it starts from its source's weights, letterboxes
    the teacher records with its edge bars, and the new version serves with them too."""
    from models.common import rerelease

    repo = pipeline["repo"]
    source = ["--repository", str(repo), "--model", "attention", "--from", "1"]
    rerelease.main([*source, "--version", "4", "--pad", "edge", "--note", "test"])
    assert not (repo / "attention" / "4" / "checkpoint.pt").exists()
    base = finetune.base_version(repo, "4")
    assert base.checkpoint_version == "1" and base.preprocess["pad"] == "edge"
    common = ["--repository", str(repo), "--data-root", str(pipeline["data"])]
    small = ["--epochs", "1", "--replay", "0", "--held-out", "16", "--test-pairs", "16"]
    records = ["--feedback", str(pipeline["feedback"]), "--select", "all"]
    seen: list[dict | None] = []
    teacher_set = finetune.teacher_set

    def spy(chosen: list, net: object, preprocess: dict | None = None) -> object:
        seen.append(preprocess)  # the simulated records are square: no bar would show
        return teacher_set(chosen, net, preprocess)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune, "teacher_set", spy)
    finetune.main([*records, "--base-version", "4", "--version", "5", *small, *common])
    assert seen == [base.preprocess]
    config = json.loads((repo / "attention" / "5" / "config.json").read_text())
    assert config["preprocess"] == base.preprocess
    assert config["metrics"]["finetune"]["checkpoint_version"] == "1"
    rereleased = json.loads((repo / "attention" / "4" / "config.json").read_text())
    commands = config["training"]["commands"]
    assert commands[-2] == rereleased["released_from"]["command"]  # the recipe rebuilds v5
    assert commands[-1].startswith("python -m models.attention.finetune")
    card = (repo / "attention" / "5" / "MODEL_CARD.md").read_text()
    assert "Version 4 has no checkpoint of its own" in card and "edge-repeating bars" in card
    with pytest.raises(SystemExit, match="no base version"):
        finetune.base_version(repo, "9")


def test_teacher_records_are_letterboxed_with_the_base_version_s_bars() -> None:
    """A wide upload gets bars above and below: black by default, its edge rows with edge."""
    from service.feedback import TeacherRecord
    from tests.service.images import encode

    net = AttentionNetConfig(stem_width=8, feature_width=16, perception_width=16)
    model = AttentionNet(net)
    size = net.input_size
    wide = np.full((size // 2, size, 3), 200, np.uint8)
    wide[0], wide[-1] = 10, 250  # distinct edge rows: edge bars must repeat them
    record = TeacherRecord(
        "attention",
        "1",
        "x",
        0,
        0,
        0,
        -1,
        encode(wide),
        encode(np.zeros((4, 4), np.uint8)),
        b"",
        4,
        4,
    )
    black = finetune.teacher_set([record], model).images[0]
    edge = finetune.teacher_set([record], model, {"pad_value": [0, 0, 0], "pad": "edge"}).images[0]
    top = size // 4  # the image's first row in the input; bars above and below it
    assert black[0].max() == 0 and black[top + 1].min() == 200
    assert (edge[:top] == edge[top]).all() and (edge[-1] == edge[top + size // 2 - 1]).all()
    assert 5 <= edge[0].mean() <= 60 and edge[-1].mean() >= 200  # the top and bottom rows


def write_version_config(root: Path, version: str, **fields: object) -> None:
    folder = root / "attention" / version
    folder.mkdir(parents=True)
    config = {"preprocess": {"pad": "edge", "height": 8, "width": 8}, "graphs": GRAPHS}
    (folder / "config.json").write_text(json.dumps(config | fields))


GRAPHS = {"features": {"sha256": "aa"}, "perception": {"sha256": "bb"}}


def released(version: str) -> dict:
    return {"released_from": {"version": version, "command": f"rerelease to from {version}"}}


def test_base_version_follows_re_releases_and_refuses_what_it_cannot_trust(
    tmp_path: Path,
) -> None:
    write_version_config(tmp_path, "5")
    (tmp_path / "attention" / "5" / "checkpoint.pt").write_bytes(b"weights")
    write_version_config(tmp_path, "6", **released("5"))
    write_version_config(tmp_path, "7", **released("6"))
    base = finetune.base_version(tmp_path, "7")
    assert base.checkpoint == tmp_path / "attention" / "5" / "checkpoint.pt"
    assert base.checkpoint_version == "5"
    assert base.rerelease_commands == ("rerelease to from 5", "rerelease to from 6")
    assert finetune.base_version(tmp_path, "5").rerelease_commands == ()
    cases = {
        "8": (released("9"), "loop"),
        "9": (released("8"), "loop"),
        "10": (released("4"), "copy version 4 into the repository"),
        "11": ({"released_from": "5"}, "names no version it was re-released from"),
        "12": ({**released("5"), "graphs": {"features": {"sha256": "cc"}}}, "sha256 differ"),
    }
    for version, (fields, _) in cases.items():
        write_version_config(tmp_path, version, **fields)
    for version, (_, message) in cases.items():
        with pytest.raises(SystemExit, match=message):
            finetune.base_version(tmp_path, version)


def test_selection_follows_the_seed() -> None:
    from service.feedback import TeacherRecord

    def record(label: int, per: int, att: int) -> TeacherRecord:
        return TeacherRecord("attention", "1", "x", label, per, att, -1, b"", b"", b"", 2, 2)

    records = [record(0, 0, 0), record(0, 1, 0), record(0, 0, 1), record(0, 1, 1)]
    assert finetune.select(records, "misrecognised") == [records[1], records[3]]
    assert finetune.select(records, "attention") == [records[2], records[3]]
    assert finetune.select(records, "either") == records[1:]
    assert finetune.select(records, "all") == records
    with pytest.raises(ValueError):
        finetune.select(records, "some")
