"""Fashion-MNIST pretraining of the semantic CNN: the canvases, that the network learns, and
that its checkpoint rebuilds (the Debian data set is not needed: items are drawn here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gender.net import GenderNet, load_checkpoint, save_checkpoint
from models.gender.pretrain import FASHION_CLASSES, PretrainConfig, canvases, pretrain_net

pytestmark = [pytest.mark.train]

SIZE = 64
WIDTHS = (8, 8, 8, 16)


def test_canvases_tint_the_item_over_a_plain_backdrop() -> None:
    items = np.zeros((3, 28, 28), np.uint8)
    items[:, 4:24, 4:24] = 255  # an opaque square
    out = canvases(items, np.random.default_rng(0), SIZE, (0.5, 0.9))
    assert out.shape == (3, SIZE, SIZE, 3) and out.dtype == np.uint8
    for canvas in out:
        corner_colour = canvas[0, 0]
        backdrop = (canvas == corner_colour).all(axis=2)
        # The square covers 20/28 of an item scaled to 0.5-0.9 of the canvas.
        share = 1.0 - backdrop.mean()
        assert (0.5 * 20 / 28) ** 2 * 0.8 < share < (0.9 * 20 / 28) ** 2 * 1.2
        centre = canvas[~backdrop]
        # Inside the square one colour (its edges blend with the backdrop).
        _, counts = np.unique(centre.reshape(-1, 3), axis=0, return_counts=True)
        assert counts.max() > 0.7 * len(centre)


def two_kinds(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvases of two item types that differ in shape only: a bar and a ring."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    items = np.zeros((count, 28, 28), np.uint8)
    items[labels == 0, 2:26, 11:17] = 255  # a vertical bar
    ring = np.zeros((28, 28), bool)
    ring[3:25, 3:25] = True
    ring[8:20, 8:20] = False
    items[labels == 1] = np.where(ring, 255, 0)
    return canvases(items, rng, SIZE, (0.55, 0.9)), labels.astype(np.int64)


@pytest.mark.slow
def test_pretraining_learns_the_item_types_and_its_checkpoint_rebuilds(tmp_path) -> None:
    config = PretrainConfig(epochs=6, batch_size=16, semantic_widths=WIDTHS, lr=1e-2)
    net, history = pretrain_net(config, two_kinds(320, 0), two_kinds(64, 1), progress=False)
    assert len(history["epochs"]) == 6
    assert history["epochs"][-1]["test"] >= 0.8  # chance is 0.5
    assert net.config.num_classes == FASHION_CLASSES and not net.config.use_contour
    save_checkpoint(tmp_path / "semantic-pretrained.pt", net)
    loaded, _ = load_checkpoint(tmp_path / "semantic-pretrained.pt")
    assert isinstance(loaded, GenderNet) and loaded.semantic is not None
    for name, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
