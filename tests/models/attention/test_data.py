from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.attention.data import (
    FASHION_MNIST_DIR,
    LABELS,
    VAL_ITEMS,
    CanvasConfig,
    box_masks,
    compose,
    load_fashion_mnist,
)
from tests.models.attention.fakes import write_fake_fashion_mnist


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def test_idx_loader_and_splits(fake_root: Path) -> None:
    train, train_labels = load_fashion_mnist("train", fake_root)
    val, val_labels = load_fashion_mnist("val", fake_root)
    test, test_labels = load_fashion_mnist("test", fake_root)
    assert train.shape == (200, 28, 28) and val.shape == (VAL_ITEMS, 28, 28)
    assert test.shape == (200, 28, 28) and train.dtype == np.uint8
    assert train_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert val_labels[0] == 200 % 10 and test_labels.max() == 9
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", fake_root / "missing")


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.exists(),
    reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)",
)
def test_real_fashion_mnist_is_read() -> None:
    items, labels = load_fashion_mnist("test")
    assert items.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    assert len(LABELS) == 10


def _inside(boxes: np.ndarray, size: int) -> bool:
    return bool((boxes[..., :2] >= 0).all() and (boxes[..., 2:] <= size).all())


def test_single_canvases_place_the_item_inside_with_its_label(fake_root: Path) -> None:
    items, labels = load_fashion_mnist("test", fake_root)
    config = CanvasConfig()
    c = compose(items, labels, "test", 30, seed=1, every_item=True)
    assert c.images.shape == (30, 64, 64, 3) and c.images.dtype == np.uint8
    assert c.labels[:, 0].tolist() == labels[:30].tolist()  # every item, in order
    sides = c.boxes[:, 0, 2] - c.boxes[:, 0, 0]
    assert (sides == c.boxes[:, 0, 3] - c.boxes[:, 0, 1]).all()
    assert sides.min() >= config.min_item and sides.max() <= config.max_item
    assert _inside(c.boxes, 64)
    # The bright item is where its box says: brighter inside than the (dimmed) background.
    for image, (x0, y0, x1, y1) in zip(c.images, c.boxes[:, 0], strict=True):
        inside = image[y0:y1, x0:x1].max()
        assert inside >= 150
    again = compose(items, labels, "test", 30, seed=1, every_item=True)
    assert np.array_equal(c.images, again.images)  # deterministic in the seed


def test_pairs_are_two_classes_that_do_not_overlap(fake_root: Path) -> None:
    items, labels = load_fashion_mnist("test", fake_root)
    c = compose(items, labels, "test", 40, kind="pair", seed=2)
    assert c.labels.shape == (40, 2) and (c.labels[:, 0] != c.labels[:, 1]).all()
    assert _inside(c.boxes, 64)
    a, b = c.boxes[:, 0], c.boxes[:, 1]
    overlap_x = np.minimum(a[:, 2], b[:, 2]) > np.maximum(a[:, 0], b[:, 0])
    overlap_y = np.minimum(a[:, 3], b[:, 3]) > np.maximum(a[:, 1], b[:, 1])
    assert not (overlap_x & overlap_y).any()


def test_distractor_canvases_have_a_larger_target(fake_root: Path) -> None:
    items, labels = load_fashion_mnist("test", fake_root)
    config = CanvasConfig()
    c = compose(items, labels, "test", 40, kind="distractor", seed=3)
    target = c.boxes[:, 0, 2] - c.boxes[:, 0, 0]
    other = c.boxes[:, 1, 2] - c.boxes[:, 1, 0]
    assert (target >= config.target_item[0]).all() and (other <= config.distractor_item[1]).all()
    assert (target > other).all() and _inside(c.boxes, 64)
    assert (c.labels[:, 0] != c.labels[:, 1]).all()


def test_box_masks_are_area_averages() -> None:
    boxes = np.array([[0, 0, 4, 4], [2, 0, 6, 4], [0, 0, 64, 64]])
    m = box_masks(boxes, 64, 16)
    assert m.shape == (3, 1, 16, 16) and m.dtype == np.float32
    assert m[0, 0, 0, 0] == 1.0 and m[0].sum() == 1.0
    # Columns 2-5: half of cell 0 and half of cell 1.
    assert m[1, 0, 0, 0] == 0.5 and m[1, 0, 0, 1] == 0.5 and m[1].sum() == 1.0
    assert (m[2] == 1.0).all()
