from __future__ import annotations

import numpy as np

from models.attention.diagnose import SPLITS, accuracy_per_background
from models.attention.net import AttentionNet, AttentionNetConfig

SMALL = AttentionNetConfig(stem_width=8, feature_width=16, perception_width=16)


def test_every_split_is_measured_on_the_same_items() -> None:
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    net = AttentionNet(SMALL).eval()
    result = accuracy_per_background(net, items, labels)
    assert tuple(result) == SPLITS
    assert all(value * 12 == round(value * 12) and 0.0 <= value <= 1.0 for value in result.values())
    assert accuracy_per_background(net, items, labels) == result  # same seed, same canvases
