"""Export an attention checkpoint into the model repository, measured on the test split.

    python -m models.attention.export --checkpoint runs/attention/best.pt --version 1 \
        --history runs/attention/history.json --repository runs/repository

A version that exists is refused unless ``--overwrite``: the examples write to a scratch
``--repository`` to compare with the committed release.

Writes ``models/repository/attention/<version>/``: features.onnx (image -> feature map,
attention map, attention-branch probabilities), perception.onnx (feature map + attention
map -> perception probabilities), config.json (two-graph layout), MODEL_CARD.md and plots.
Every test figure is measured on the exported graphs run by ONNX Runtime, with masks
area-averaged to the map grid as the service does, on canvases made from the Fashion-MNIST
test items over test background photographs that training never saw.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image, ImageDraw

from models.attention.data import LABELS, Canvases, box_masks
from models.attention.net import AttentionNet, FeaturesExport, PerceptionExport, load_checkpoint
from models.attention.train import MEAN, STD, TrainConfig, make_split, to_tensor
from models.common.checkpoint import read_checkpoint
from models.common.export import (
    PARITY_TOLERANCE,
    add_overwrite_argument,
    check_parity,
    export_onnx,
    letterbox_preprocess,
    new_version_dir,
    read_extra_card,
    refuse_existing_version,
    write_config,
)

NAME = "attention"
TASK = "attention_classification"
FEATURES_FILE, PERCEPTION_FILE = "features.onnx", "perception.onnx"
FEATURES_IO = (("image",), ("feature_map", "attention_map", "attention_probs"))
PERCEPTION_IO = (("feature_map", "attention_map"), ("perception_probs",))
TOP_K = 5
TARGETS = {
    "perception_accuracy": 0.92,
    "correction_mask_on_a": 0.90,
    "correction_mask_on_b": 0.90,
}
TEST_SEED, PAIR_SEED = 1000, 1001  # fixed: every version is measured on the same canvases
DATA_NOTE = (
    "Synthetic composition of real data. Real: the Fashion-MNIST item images and their "
    "labels (Debian package dataset-fashion-mnist; train = first 55,000 training items, "
    "val = last 5,000, test = the official 10,000 test items), and the background "
    "photographs (scikit-image/matplotlib sample photographs, disjoint per split: "
    "models/common/backgrounds.py). Synthetic: the composition - each 28x28 item is "
    "resized to 26-38 px, tinted, and blended (alpha from its own brightness) at a random "
    "position onto a 64x64 random crop of a dimmed photograph (models/attention/data.py). "
    "Two-item test canvases put two items of different classes side by side. No real "
    "photograph of clothing was used: the figures say how the method does on these "
    "canvases, not on shop photographs."
)


class OnnxAttention:
    """The two exported graphs under ONNX Runtime (CPU), as the service runs them."""

    def __init__(self, version_dir: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.features = ort.InferenceSession(
            str(version_dir / FEATURES_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.perception = ort.InferenceSession(
            str(version_dir / PERCEPTION_FILE), options, providers=["CPUExecutionProvider"]
        )

    def run(
        self, images: np.ndarray, masks: list[np.ndarray | None], batch: int = 256
    ) -> dict[str, np.ndarray]:
        """Attention-branch probabilities, maps, and perception probabilities once with the
        model's own map and once per entry of ``masks`` (None = own map)."""
        out: dict[str, list] = {"attention": [], "maps": []}
        for k in range(len(masks)):
            out[f"perception_{k}"] = []
        for i in range(0, len(images), batch):
            x = to_tensor(images[i : i + batch]).numpy()
            fmap, amap, aprobs = self.features.run(None, {"image": x})
            out["attention"].append(aprobs)
            out["maps"].append(amap)
            for k, mask in enumerate(masks):
                used = amap if mask is None else mask[i : i + batch]
                (probs,) = self.perception.run(None, {"feature_map": fmap, "attention_map": used})
                out[f"perception_{k}"].append(probs)
        return {k: np.concatenate(v) for k, v in out.items()}


def measure(onnx_model: OnnxAttention, net: AttentionNet, single: Canvases, pairs: Canvases):
    """Test metrics of the exported graphs; returns (metrics, single outputs, pair outputs)."""
    grid, size = net.config.map_size, net.config.input_size
    s = onnx_model.run(single.images, [None])
    masks_a = box_masks(pairs.boxes[:, 0], size, grid)
    masks_b = box_masks(pairs.boxes[:, 1], size, grid)
    p = onnx_model.run(pairs.images, [None, masks_a, masks_b])
    label = single.labels[:, 0]
    own = p["perception_0"].argmax(1)
    metrics = {
        "test_items": len(single),
        "perception_accuracy": float((s["perception_0"].argmax(1) == label).mean()),
        "attention_branch_accuracy": float((s["attention"].argmax(1) == label).mean()),
        "per_class_perception_accuracy": {
            LABELS[c]: float((s["perception_0"].argmax(1)[label == c] == c).mean())
            for c in range(len(LABELS))
        },
        "two_item_canvases": len(pairs),
        "correction_mask_on_a": float((p["perception_1"].argmax(1) == pairs.labels[:, 0]).mean()),
        "correction_mask_on_b": float((p["perception_2"].argmax(1) == pairs.labels[:, 1]).mean()),
        "own_map_answers_a_or_b": float(
            ((own == pairs.labels[:, 0]) | (own == pairs.labels[:, 1])).mean()
        ),
        "attention_mass_on_item": attention_mass(s["maps"], single.boxes[:, 0], size),
    }
    return metrics, s, p


def attention_mass(maps: np.ndarray, boxes: np.ndarray, size: int) -> float:
    """Mean share of the map's total attention that falls inside the item's box."""
    grid = maps.shape[-1]
    inside = box_masks(boxes, size, grid)
    total = maps.reshape(len(maps), -1).sum(1) + 1e-9
    return float(((maps * inside).reshape(len(maps), -1).sum(1) / total).mean())


def overlay(image: np.ndarray, attention: np.ndarray, scale: int = 3) -> Image.Image:
    """A canvas with its map (bilinear to the canvas) blended in red."""
    size = image.shape[0]
    big = (
        np.asarray(
            Image.fromarray((attention * 255).astype(np.uint8)).resize(
                (size, size), Image.BILINEAR
            ),
            np.float32,
        )[..., None]
        / 255.0
    )
    red = np.array([255.0, 40.0, 0.0])
    blended = image.astype(np.float32) * (1 - 0.55 * big) + red * 0.55 * big
    out = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    return out.resize((size * scale, size * scale), Image.NEAREST)


def _caption(tile: Image.Image, text: str, ok: bool | None = None) -> Image.Image:
    canvas = Image.new("RGB", (tile.width, tile.height + 28), "white")
    canvas.paste(tile, (0, 28))
    colour = "black" if ok is None else ("darkgreen" if ok else "red")
    ImageDraw.Draw(canvas).multiline_text((3, 1), text, fill=colour, spacing=1)
    return canvas


def _grid(tiles: list[Image.Image], columns: int) -> Image.Image:
    w, h = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (w * columns, h * rows), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * w, (i // columns) * h))
    return sheet


def draw_overlays(single: Canvases, s: dict, path: Path, count: int = 16) -> None:
    tiles = []
    for i in range(count):
        pred = int(s["perception_0"][i].argmax())
        truth = int(single.labels[i, 0])
        text = f"true {LABELS[truth]}\npred {LABELS[pred]}"
        tiles.append(_caption(overlay(single.images[i], s["maps"][i, 0]), text, pred == truth))
    _grid(tiles, 8).save(path)


def draw_corrections(pairs: Canvases, p: dict, net: AttentionNet, path: Path, count: int = 6):
    """Per row: own map, mask on A, mask on B, each with the perception answer."""
    grid, size = net.config.map_size, net.config.input_size
    tiles = []
    for i in range(count):
        a, b = (int(v) for v in pairs.labels[i])
        rows = [
            (p["maps"][i, 0], int(p["perception_0"][i].argmax()), "own map", None),
            (box_masks(pairs.boxes[i : i + 1, 0], size, grid)[0, 0], None, "mask on A", a),
            (box_masks(pairs.boxes[i : i + 1, 1], size, grid)[0, 0], None, "mask on B", b),
        ]
        for k, (amap, pred, name, want) in enumerate(rows):
            pred = int(p[f"perception_{k}"][i].argmax()) if pred is None else pred
            text = f"{name}: {LABELS[pred]}\nA={LABELS[a]} B={LABELS[b]}"
            tiles.append(
                _caption(
                    overlay(pairs.images[i], amap), text, None if want is None else pred == want
                )
            )
    _grid(tiles, 6).save(path)


def export_graphs(net: AttentionNet, version_dir: Path, sample: torch.Tensor) -> dict:
    """Write both graphs into ``version_dir``; returns their ONNX protos and parity."""
    version_dir.mkdir(parents=True, exist_ok=True)
    features, perception = FeaturesExport(net).eval(), PerceptionExport(net).eval()
    size = net.config.input_size
    f_model = export_onnx(
        features,
        (torch.zeros(2, 3, size, size),),
        version_dir / FEATURES_FILE,
        *FEATURES_IO,
    )
    with torch.no_grad():
        fmap, amap, _ = features(sample)
    p_model = export_onnx(
        perception, (fmap[:2], amap[:2]), version_dir / PERCEPTION_FILE, *PERCEPTION_IO
    )
    # Parity of the perception graph with the model's own maps and with edited ones.
    edited = torch.rand_like(amap)
    parity = {
        "features": check_parity(features, version_dir / FEATURES_FILE, {"image": sample}),
        "perception": max(
            check_parity(
                perception,
                version_dir / PERCEPTION_FILE,
                {"feature_map": fmap, "attention_map": m},
            )
            for m in (amap, edited)
        ),
    }
    worst = max(parity.values())
    if worst > PARITY_TOLERANCE:
        raise SystemExit(f"ONNX Runtime and PyTorch differ by {worst:.2e} > {PARITY_TOLERANCE}")
    return {"features": f_model, "perception": p_model, "parity": parity}


def write_version(
    net: AttentionNet,
    version_dir: Path,
    graphs: dict,
    metrics: dict,
    training: dict,
    preprocess: dict | None = None,
) -> dict:
    """config.json for the two graphs (models/repository/README.md). ``preprocess``: the
    block to serve with (a fine-tune keeps its base version's); default black letterbox
    bars at the network's input size."""
    size, grid = net.config.input_size, net.config.map_size
    protos: dict[str, tuple[str, onnx.ModelProto]] = {
        "features": (FEATURES_FILE, graphs["features"]),
        "perception": (PERCEPTION_FILE, graphs["perception"]),
    }
    return write_config(
        version_dir,
        None,
        graphs=protos,
        name=NAME,
        task=TASK,
        preprocess=preprocess or letterbox_preprocess(size, size, [0, 0, 0], MEAN, STD),
        labels=LABELS,
        decode={
            "map": {"height": grid, "width": grid},
            "top_k": TOP_K,
            "features_graph": "features",
            "perception_graph": "perception",
            "feature_map": "feature_map",
            "attention_map": "attention_map",
            "attention_probs": "attention_probs",
            "perception_probs": "perception_probs",
            "synthesis": net.config.synthesis,
        },
        metrics=metrics,
        training={
            **training,
            "onnx_bytes": {
                name: (version_dir / file).stat().st_size for name, (file, _) in protos.items()
            },
            "parity_max_abs_diff": graphs["parity"],
        },
    )


def fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def test_split(
    config: TrainConfig, pairs: int, single: int | None = None, seed: int = TEST_SEED
) -> tuple[Canvases, Canvases]:
    """The fixed test canvases: every test item once (or the first ``single``), and pairs;
    another ``seed`` places the same items afresh (models/attention/fresh_test.py)."""
    from models.attention.data import compose, load_fashion_mnist

    root = Path(config.data_root) if config.data_root else None
    items, labels = load_fashion_mnist("test", root) if root else load_fashion_mnist("test")
    count = single or len(items)
    one = compose(items, labels, "test", count, seed=seed, config=config.canvas, every_item=True)
    two = make_split(config, "test", pairs, "pair", PAIR_SEED)
    return one, two


SYNTHESIS_TEXT = {"multiply": "f x M, the seed's product", "residual": "(1 + M) x f, ABN's form"}


def _blocks(count: int) -> str:
    return "1 residual block" if count == 1 else f"{count} residual blocks"


def bars(preprocess: dict) -> str:
    """How the service fills the letterbox bars, in words: "letterboxed, pad 0" or
    "letterboxed, edge-repeating bars"."""
    if preprocess.get("pad", "constant") == "edge":
        return "letterboxed, edge-repeating bars"
    value = [int(v) for v in preprocess["pad_value"]]
    return f"letterboxed, pad {value[0] if len(set(value)) == 1 else tuple(value)}"


def main_card(config: dict) -> str:
    """The model card's common part: method, data, commands, test figures."""
    m, t = config["metrics"]["test"], config["training"]
    grid = config["decode"]["map"]
    size = config["preprocess"]["width"]
    net = t["net"]
    # Checkpoints from before the block counts were options have one block each.
    feature_blocks = net.get("feature_blocks", 1)
    perception_blocks = net.get("perception_blocks", 1)
    lines = [
        f"# Attention-editable classification, version {config['version']}",
        "",
        "Seed 002: an Attention Branch Network whose attention map a person can edit. Feature "
        f"extractor (stride 4, {_blocks(feature_blocks)} at the feature map, K = "
        f"{net['feature_width']} channels at {grid['height']}x"
        f"{grid['width']}) -> attention branch (residual conv block, 1x1 conv K -> C = 10 + BN + "
        "ReLU, then (a) 1x1 conv C -> C + global average pooling = attention-branch class, "
        "(b) 1x1 conv C -> 1 + BN + sigmoid = attention map M in 0..1) -> synthesis "
        f"({SYNTHESIS_TEXT[net['synthesis']]}"
        f") -> perception branch (stride-2 conv, {_blocks(perception_blocks)}, global average "
        "pooling, FC). "
        "Loss L = Latt + Lper (softmax cross-entropy, equal weights). Code: "
        "`models/attention/`.",
        "",
        "Synthesis: the seed's product f x M, not ABN's residual (1 + M) x f: with the "
        "product a cell a person erases contributes nothing to the perception branch, which is "
        "what makes a mask on one item answer for that item; with (1 + M) x f the erased item "
        "would still be seen at weight 1. The residual form is available (`--synthesis "
        "residual`) but was not trained or measured here.",
        "",
        "Training detail: with probability `mask_substitution` (0.25) per sample, the "
        "perception branch is given the item's box, area-averaged to the map grid like an "
        "edited mask, instead of the model's own M (the loss stays Latt + Lper); this teaches "
        "the perception branch the kind of map people draw.",
        "",
        "Served as two ONNX graphs (config.json `graphs`): `features.onnx` (image -> feature "
        "map, attention map, attention-branch probabilities) and `perception.onnx` (feature map "
        "+ attention map -> perception probabilities), so that an edited map is applied by "
        "running the perception graph only (POST /attention/correct, with the feature map "
        "cached per image).",
        "",
        "## Data",
        "",
        t["data"],
        "",
        "## Commands",
        "",
        "```",
        *t["commands"],
        "```",
        "",
        f"Input {size}x{size} RGB ({bars(config['preprocess'])}), ImageNet mean/std. ONNX "
        "files: "
        + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in t["onnx_bytes"].items())
        + "; ONNX Runtime vs PyTorch max abs difference: "
        + ", ".join(f"{k} {v:.1e}" for k, v in t["parity_max_abs_diff"].items())
        + f" (tolerance {PARITY_TOLERANCE:g}).",
        "",
        "## Test figures (exported graphs, ONNX Runtime)",
        "",
        "| metric | value | target |",
        "|---|---|---|",
        f"| perception-branch accuracy, {m['test_items']} test items placed on canvases | "
        f"{fmt(m['perception_accuracy'])} | >= 0.92 |",
        f"| attention-branch accuracy, same canvases | {fmt(m['attention_branch_accuracy'])} | |",
        f"| share of attention inside the item's box | {fmt(m['attention_mass_on_item'])} | |",
        f"| correction: mask on item A gives A ({m['two_item_canvases']} two-item canvases) | "
        f"{fmt(m['correction_mask_on_a'])} | >= 0.90 |",
        f"| correction: mask on item B gives B (same canvases) | "
        f"{fmt(m['correction_mask_on_b'])} | >= 0.90 |",
        f"| own map on two-item canvases answers one of the two items | "
        f"{fmt(m['own_map_answers_a_or_b'])} | |",
        "",
        "A correction mask is the item's box (1 inside, 0 outside) at canvas resolution, "
        "area-averaged to the map grid exactly as the service resamples an uploaded mask; it "
        "replaces M, the network's parameters do not change (the first embodiment).",
        "",
        "Per-class perception accuracy: "
        + ", ".join(f"{k} {v:.3f}" for k, v in m["per_class_perception_accuracy"].items())
        + ".",
        "",
        "![attention overlays](attention_overlays.png)",
        "",
        "Test canvases with the attention map in red; caption green when the perception "
        "branch is right.",
        "",
        "![corrections](correction_examples.png)",
        "",
        "Two-item test canvases: the model's own map, then a mask on item A, then on item B, "
        "each with the perception branch's answer.",
        "",
        "",
    ]
    return "\n".join(lines)


def training_section(history: dict | None) -> str:
    if not history:
        return ""
    rows = history["epochs"]
    last = rows[-1]["val"]
    return "\n".join(
        [
            "## Training",
            "",
            f"{len(rows)} epochs in {history.get('seconds', 0) / 60:.1f} min on this machine's "
            "CPU; best validation perception accuracy "
            f"{max(r['val']['perception_accuracy'] for r in rows):.4f} (last epoch: perception "
            f"{last['perception_accuracy']:.4f}, attention branch "
            f"{last['attention_accuracy']:.4f}). Hyper-parameters: "
            f"`{json.dumps({k: v for k, v in history['config'].items() if k != 'canvas'})}`.",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
    )


def training_commands(ckpt: dict) -> list[str]:
    """The training commands that made a checkpoint, oldest first: a run started with
    ``--init`` is preceded by the run(s) that made its starting weights."""
    config = ckpt.get("train_config") or {}
    chain = [config.get("command", "(unknown)")]
    init = config.get("init")
    while init and Path(init).exists():
        config = read_checkpoint(init).get("train_config") or {}
        chain.insert(0, config.get("command", "(unknown)"))
        init = config.get("init")
    return chain


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repository", type=Path, default=Path("models/repository"))
    p.add_argument("--version", default="1")
    p.add_argument("--history", type=Path, default=None)
    p.add_argument("--test-pairs", type=int, default=2000)
    p.add_argument("--test-items", type=int, default=None, help="default: all 10,000")
    p.add_argument("--data-root", default=None)
    p.add_argument("--extra-card", type=Path, default=None, help="markdown appended to the card")
    add_overwrite_argument(p)
    a = p.parse_args(argv)
    refuse_existing_version(a.repository / NAME / a.version, a.overwrite)
    extra_card = read_extra_card(a.extra_card)

    net, ckpt = load_checkpoint(a.checkpoint)
    config = TrainConfig(data_root=a.data_root, net=net.config)
    single, pairs = test_split(config, a.test_pairs, a.test_items)
    version_dir = new_version_dir(a.repository, NAME, a.version, a.overwrite)
    graphs = export_graphs(net, version_dir, to_tensor(single.images[:16]))
    metrics, s, pr = measure(OnnxAttention(version_dir), net, single, pairs)
    history = json.loads(a.history.read_text()) if a.history else None
    chain = training_commands(ckpt)
    train_command = chain[-1]
    export_command = "python -m models.attention.export " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    cfg = write_version(
        net,
        version_dir,
        graphs,
        {"test": metrics, "targets": TARGETS},
        {
            "command": train_command,
            "commands": [*chain, export_command],
            "data": DATA_NOTE,
            "seed": (ckpt.get("train_config") or {}).get("seed", 0),
            "epochs_trained": ckpt.get("epoch"),
            "net": ckpt["config"],
        },
    )
    draw_overlays(single, s, version_dir / "attention_overlays.png")
    draw_corrections(pairs, pr, net, version_dir / "correction_examples.png")
    # The PyTorch weights, so that fine-tuning (models/attention/finetune.py) can start from
    # this version; the service does not read it.
    shutil.copy(a.checkpoint, version_dir / "checkpoint.pt")
    if a.history and (a.history.parent / "loss_curves.png").exists():
        shutil.copy(a.history.parent / "loss_curves.png", version_dir / "loss_curves.png")
    card = main_card(cfg) + training_section(history)
    if extra_card:
        card += "\n" + extra_card
    (version_dir / "MODEL_CARD.md").write_text(card)
    print(json.dumps(metrics, indent=1))
    return cfg


if __name__ == "__main__":
    main()
