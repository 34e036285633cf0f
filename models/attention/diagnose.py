"""Is the held-out gap in the backgrounds or in the items? Place the same test items over
each split's background photographs and measure the perception branch on each.

    python -m models.attention.diagnose --checkpoint models/repository/attention/3/checkpoint.pt

Same items, same positions and scales (same seed); only the photographs differ. Equal
accuracies mean the held-out photographs are not what the model finds hard.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from models.attention.data import compose, load_fashion_mnist
from models.attention.net import AttentionNet, load_checkpoint
from models.attention.train import predict

SPLITS = ("train", "val", "test")


def accuracy_per_background(
    net: AttentionNet, items: np.ndarray, labels: np.ndarray, seed: int = 5
) -> dict[str, float]:
    """Perception accuracy of ``items (N, 28, 28) uint8`` with ``labels (N,)`` placed over
    each split's photographs, keyed by split."""
    result = {}
    for split in SPLITS:
        canvases = compose(items, labels, split, len(items), kind="single", seed=seed)
        probs = predict(net, canvases.images)["perception"]
        result[split] = float((probs.argmax(1) == canvases.labels[:, 0]).mean())
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--items", type=int, default=3000, help="the first N Fashion-MNIST test items")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    net, _ = load_checkpoint(a.checkpoint)
    items, labels = load_fashion_mnist("test")
    result = accuracy_per_background(net, items[: a.items], labels[: a.items])
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
