"""What non-square uploads cost the attention model: ``python -m models.attention.nonsquare``.

    python -m models.attention.nonsquare --version 5 --split val --count 10000 --seed 7 \
        --out models/repository/attention/6/nonsquare-val.json
    python -m models.attention.nonsquare --version 5 --split test \
        --out models/repository/attention/6/nonsquare-test.json

Training shows the network full 64x64 canvases only, while the service letterboxes a
non-square upload, so the network sees bars it never saw. This takes the canvases whose
target item lies clear of the CROP rows at the top and bottom (or the CROP columns at each
side), cuts those away (a 64x48 or 48x64 upload with the same item), and letterboxes the
crop back to the input size with the service's own ``service.imaging.letterbox``: once with
bars of the version's ``pad_value`` (``pad constant``) and once repeating the crop's edge
(``pad edge``). The served prediction (the perception head with the model's own attention
map) is measured on the square canvas and on both, with the paired counts and McNemar's
exact p of edge against constant bars; "pooled" joins both cuts' crops, so an item clear
of both counts twice and its p and interval are approximate. ``--split test`` is the
export's test set (every test item once, seed ``TEST_SEED``); any other split draws
``--count`` canvases with ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.attention.data import Canvases
from models.attention.export import OnnxAttention, test_split
from models.attention.train import TrainConfig, make_split
from models.common.paired import mcnemar_exact, only_right, paired_difference_ci95
from service.imaging import PadMode, letterbox

# Pixels cut from each side: a 64x64 canvas becomes a 64x48 (4:3) or 48x64 (3:4) upload,
# the shapes of most photographs.
CROP = 8
PADS: tuple[PadMode, ...] = ("constant", "edge")


def clear_crops(canvases: Canvases, across: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the canvases whose target item lies clear of the cut, their crops):
    ``across`` "rows" cuts CROP rows at the top and bottom, "cols" CROP columns at each
    side. Crops are ``(n, H, W, 3)`` uint8."""
    size = canvases.images.shape[1]
    x0, y0, x1, y1 = canvases.boxes[:, 0].T  # the target's box, exclusive ends
    if across == "rows":
        keep = np.flatnonzero((y0 >= CROP) & (y1 <= size - CROP))
        return keep, canvases.images[keep, CROP : size - CROP]
    keep = np.flatnonzero((x0 >= CROP) & (x1 <= size - CROP))
    return keep, canvases.images[keep, :, CROP : size - CROP]


def letterboxed(crops: np.ndarray, size: int, pad_value: list[int], pad: PadMode) -> np.ndarray:
    """Each crop as the service fits it into the ``size x size`` input."""
    return np.stack([letterbox(crop, size, size, pad_value, pad=pad)[0] for crop in crops])


def compare(correct_edge: np.ndarray, correct_constant: np.ndarray) -> dict[str, float | int]:
    """Edge against constant bars on the same canvases (``(n,)`` bool correct each)."""
    only_edge, only_constant = only_right(correct_edge, correct_constant)
    low, high = paired_difference_ci95(only_edge, only_constant, len(correct_edge))
    return {
        "edge_only_right": only_edge,
        "constant_only_right": only_constant,
        "edge_minus_constant": float(correct_edge.mean() - correct_constant.mean()),
        "ci95": [low, high],
        "mcnemar_p": mcnemar_exact(only_edge, only_constant),
    }


def measure(
    canvases: Canvases, predict: Callable[[np.ndarray], np.ndarray], pad_value: list[int]
) -> dict[str, dict]:
    """Per cut ("rows", "cols") and pooled: accuracy square, with constant and edge bars."""
    size = canvases.images.shape[1]
    label = canvases.labels[:, 0]
    square = predict(canvases.images) == label
    results: dict[str, dict] = {}
    pooled: dict[str, list[np.ndarray]] = {"square": [], "constant": [], "edge": []}
    for across in ("rows", "cols"):
        keep, crops = clear_crops(canvases, across)
        correct = {"square": square[keep]}
        for pad in PADS:
            correct[pad] = predict(letterboxed(crops, size, pad_value, pad)) == label[keep]
        for key, value in correct.items():
            pooled[key].append(value)
        results[across] = {
            "canvases": len(keep),
            **{f"accuracy_{key}": float(value.mean()) for key, value in correct.items()},
            **compare(correct["edge"], correct["constant"]),
        }
    joined = {key: np.concatenate(value) for key, value in pooled.items()}
    results["pooled"] = {
        "canvases": len(joined["square"]),
        **{f"accuracy_{key}": float(value.mean()) for key, value in joined.items()},
        **compare(joined["edge"], joined["constant"]),
    }
    return results


def table(results: dict[str, dict]) -> str:
    """The results as a markdown table."""
    names = {"rows": "64x48 (rows cut)", "cols": "48x64 (columns cut)", "pooled": "both"}
    lines = [
        "| upload | canvases | square | black bars | edge bars | edge - black (95 % CI) | "
        "only edge / only black right, p |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        low, high = r["ci95"]
        lines.append(
            f"| {names[key]} | {r['canvases']} | {r['accuracy_square']:.4f} | "
            f"{r['accuracy_constant']:.4f} | {r['accuracy_edge']:.4f} | "
            f"{100 * r['edge_minus_constant']:+.2f} pt ({100 * low:+.2f} to {100 * high:+.2f}) | "
            f"{r['edge_only_right']} / {r['constant_only_right']}, {r['mcnemar_p']:.2g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("models/repository"))
    p.add_argument("--version", required=True)
    p.add_argument("--split", default="val", help="val (drawn with --seed) or test (fixed)")
    p.add_argument("--count", type=int, default=10_000, help="canvases drawn (not for test)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST directory (idx .gz files)")
    p.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    a = p.parse_args(argv)
    version_dir = a.repository / "attention" / a.version
    preprocess = json.loads((version_dir / "config.json").read_text())["preprocess"]
    config = TrainConfig(data_root=a.data_root)
    if a.split == "test":
        canvases, _ = test_split(config, pairs=0)
    else:
        canvases = make_split(config, a.split, a.count, "single", a.seed)
    model = OnnxAttention(version_dir)

    def predict(images: np.ndarray) -> np.ndarray:
        return model.run(images, [None])["perception_0"].argmax(1)

    results = measure(canvases, predict, list(preprocess["pad_value"]))
    report = {
        "version": a.version,
        "served_pad": preprocess.get("pad", "constant"),
        "split": a.split,
        "seed": None if a.split == "test" else a.seed,
        "crop_pixels": CROP,
        "command": "python -m models.attention.nonsquare "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": results,
    }
    print(table(results))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
