"""One version on a fresh placement of the test items: ``python -m models.attention.fresh_test``.

    python -m models.attention.fresh_test --version 6 --seed 2000 \
        --out models/repository/attention/6/fresh-test.json

Every version is measured on the same canvases (``export.TEST_SEED``): each of the 10 000
Fashion-MNIST test items once, placed on a crop of a test photograph. Eight networks have
been scored on them, and the best of several looks carries some selection. This composes
every test item once again with another ``--seed`` (new positions, scales, tints and
background crops; the same items, on which no network trained) and measures the served
prediction (the perception head with the model's own attention map) once on each placement.
Both canvases of an item are paired, so the report also gives the items only one placement
gets right and McNemar's exact p.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from models.attention.export import TEST_SEED, OnnxAttention, test_split
from models.attention.train import TrainConfig
from models.common.paired import mcnemar_exact, only_right, paired_difference_ci95

# z for a two-sided 95 % interval.
Z95 = 1.959964


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``correct / n``."""
    p = correct / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return centre - half, centre + half


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("models/repository"))
    p.add_argument("--version", required=True)
    p.add_argument(
        "--seed", type=int, required=True, help=f"the placement's seed (not {TEST_SEED})"
    )
    p.add_argument("--count", type=int, default=None, help="first N test items (default: all)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST directory (idx .gz files)")
    p.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    a = p.parse_args(argv)
    if a.seed == TEST_SEED:
        raise SystemExit(f"--seed {TEST_SEED} is the export's own placement, not a fresh one")
    version_dir = a.repository / "attention" / a.version
    config = TrainConfig(data_root=a.data_root)
    original, _ = test_split(config, pairs=0, single=a.count)
    fresh, _ = test_split(config, pairs=0, single=a.count, seed=a.seed)
    # The same item in the same place of both sets: the pairing below relies on it.
    if not np.array_equal(original.labels[:, 0], fresh.labels[:, 0]):
        raise SystemExit("the two placements do not hold the items in the same order")
    model = OnnxAttention(version_dir)
    label = original.labels[:, 0]
    right = {
        name: model.run(canvases.images, [None])["perception_0"].argmax(1) == label
        for name, canvases in (("original", original), ("fresh", fresh))
    }
    n = len(label)
    placements = {}
    for name, ok in right.items():
        low, high = wilson_interval(int(ok.sum()), n)
        placements[name] = {
            "seed": TEST_SEED if name == "original" else a.seed,
            "correct": int(ok.sum()),
            "perception_accuracy": float(ok.mean()),
            "wilson_95": [low, high],
        }
    only_fresh, only_original = only_right(right["fresh"], right["original"])
    report = {
        "version": a.version,
        "test_items": n,
        "command": "python -m models.attention.fresh_test "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "placements": placements,
        "paired_by_item": {
            "only_fresh_right": only_fresh,
            "only_original_right": only_original,
            "mcnemar_p": mcnemar_exact(only_fresh, only_original),
            "difference_ci95": list(paired_difference_ci95(only_fresh, only_original, n)),
        },
    }
    for name, row in placements.items():
        low, high = row["wilson_95"]
        print(
            f"{name:>8} placement (seed {row['seed']}): {row['perception_accuracy']:.4f} "
            f"({row['correct']} of {n}; 95 % {low:.4f}-{high:.4f})"
        )
    print(
        f"only fresh right {only_fresh}, only original right {only_original}, "
        f"McNemar p {report['paired_by_item']['mcnemar_p']:.3g}"
    )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
