"""Canvases: real Fashion-MNIST items composed over clutter from real photographs.

Fashion-MNIST (Debian package ``dataset-fashion-mnist``, 28x28 grey items on black) has
no clutter and no place for attention to point, so each item is placed on a larger canvas
at a random position and scale over a random crop of a real photograph
(models/common/backgrounds.py: train/val/test photographs are disjoint). What is
synthetic: the composition (position, scale, tint, background crop, dimming); what is
real: the item pixels and their labels, and the background photographs.

* single-item canvases (training, the perception-accuracy test);
* two-item canvases of two different classes, side by side (the correction test);
* "distractor" canvases: a large target item and a small item of another class (the
  fine-tuning experiment: the label is the large one; the pretrained model, trained on one
  item at a time, often looks at the wrong one).

Item boxes are kept so that masks and teacher maps can be made from them.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.common.backgrounds import backgrounds, random_crop

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
LABELS = (
    "t_shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
VAL_ITEMS = 5000  # the last 5000 training items are the validation split
ITEM = 28
# Item pixels brighter than this are fully opaque; darker ones blend into the background,
# so the item's own black surround disappears.
ALPHA_FULL_AT = 24.0


@dataclass(frozen=True)
class CanvasConfig:
    size: int = 64
    min_item: int = 26  # side of the placed item in canvas pixels
    max_item: int = 38
    background_gain: tuple[float, float] = (0.25, 0.7)  # photographs are dimmed by this
    item_gain: tuple[float, float] = (0.75, 1.0)  # item brightness
    tint: float = 0.3  # per-channel random colour cast of the item, 0 = grey
    # Distractor canvases: the target item's and the distractor's sides (inclusive ranges).
    target_item: tuple[int, int] = (32, 36)
    distractor_item: tuple[int, int] = (24, 28)


@dataclass
class Canvases:
    """``images (N, S, S, 3) uint8``, ``labels (N, k)`` and ``boxes (N, k, 4)`` (x0, y0,
    x1, y1 in canvas pixels, exclusive ends) for k items per canvas; item 0 is the target."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """``(items (N, 28, 28) uint8, labels (N,) int64)`` of train, val or test.

    train/val are the official training file split at ``-VAL_ITEMS``; test is the official
    test file.
    """
    prefix = "t10k" if split == "test" else "train"
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"{images_path} not found: install the Debian package dataset-fashion-mnist "
            "(make train-attention does)"
        )
    items = _read_idx(images_path)
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if split == "train":
        return items[:-VAL_ITEMS], labels[:-VAL_ITEMS]
    if split == "val":
        return items[-VAL_ITEMS:], labels[-VAL_ITEMS:]
    if split == "test":
        return items, labels
    raise ValueError(f"unknown split {split!r}")


def background(rng: np.random.Generator, photos: tuple[np.ndarray, ...], size: int, gain: float):
    """A random square crop of a random photograph, resized to ``size``, dimmed (float32)."""
    return random_crop(rng, photos, size) * gain


def paste(
    canvas: np.ndarray,
    item: np.ndarray,
    box: tuple[int, int, int, int],
    rng: np.random.Generator,
    config: CanvasConfig,
) -> None:
    """Blend a 28x28 item into ``canvas`` (float32 H x W x 3) over ``box`` in place."""
    x0, y0, x1, y1 = box
    resized = np.asarray(
        Image.fromarray(item).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR), np.float32
    )
    alpha = np.clip(resized / ALPHA_FULL_AT, 0.0, 1.0)[..., None]
    colour = rng.uniform(*config.item_gain) * (1.0 - config.tint * rng.random(3))
    value = resized[..., None] * colour[None, None, :]
    region = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = alpha * value + (1.0 - alpha) * region


def _place(rng: np.random.Generator, side: int, lo: tuple[int, int], hi: tuple[int, int]):
    """A ``side`` box with its top-left in [lo, hi] (inclusive)."""
    x0 = int(rng.integers(lo[0], max(lo[0], hi[0]) + 1))
    y0 = int(rng.integers(lo[1], max(lo[1], hi[1]) + 1))
    return x0, y0, x0 + side, y0 + side


def compose(
    items: np.ndarray,
    labels: np.ndarray,
    split: str,
    count: int,
    *,
    kind: str = "single",
    seed: int = 0,
    config: CanvasConfig | None = None,
    every_item: bool = False,
) -> Canvases:
    """``count`` canvases of ``kind`` (single | pair | distractor) from ``items``/``labels``.

    Deterministic in ``seed``; backgrounds come from ``split``'s photographs. With
    ``every_item`` canvas n's (first) item is item ``n % len(items)``, so ``count =
    len(items)`` places each item exactly once (the test split); otherwise items are drawn
    at random.
    """
    config = config or CanvasConfig()
    rng = np.random.default_rng(seed)
    photos = backgrounds(split)
    size = config.size
    per = 1 if kind == "single" else 2
    images = np.empty((count, size, size, 3), np.uint8)
    out_labels = np.empty((count, per), np.int64)
    boxes = np.empty((count, per, 4), np.int64)
    for n in range(count):
        canvas = background(rng, photos, size, rng.uniform(*config.background_gain))
        first = n % len(items) if every_item else int(rng.integers(len(items)))
        chosen = [first]
        if per == 2:
            # Another item of a different class.
            while True:
                other = int(rng.integers(len(items)))
                if labels[other] != labels[first]:
                    break
            chosen.append(other)
        if kind == "single":
            side = int(rng.integers(config.min_item, config.max_item + 1))
            placed = [_place(rng, side, (0, 0), (size - side, size - side))]
        elif kind == "pair":
            # Side by side (left/right or top/bottom, random order), no overlap.
            side = int(rng.integers(config.min_item, min(config.max_item, size // 2) + 1))
            half = size // 2
            slack = half - side
            a = _place(rng, side, (0, 0), (slack, size - side))
            b = _place(rng, side, (half, 0), (half + slack, size - side))
            if rng.random() < 0.5:  # top/bottom instead: transpose the boxes
                a = (a[1], a[0], a[3], a[2])
                b = (b[1], b[0], b[3], b[2])
            placed = [a, b] if rng.random() < 0.5 else [b, a]
        elif kind == "distractor":
            # The target is large, the distractor small, in opposite halves.
            big = int(rng.integers(config.target_item[0], config.target_item[1] + 1))
            small = int(rng.integers(config.distractor_item[0], config.distractor_item[1] + 1))
            if rng.random() < 0.5:
                target = _place(rng, big, (0, 0), (size - big - small, size - big))
                other = _place(rng, small, (target[2], 0), (size - small, size - small))
            else:
                target = _place(rng, big, (small, 0), (size - big, size - big))
                other = _place(rng, small, (0, 0), (target[0] - small, size - small))
            if rng.random() < 0.5:
                target = (target[1], target[0], target[3], target[2])
                other = (other[1], other[0], other[3], other[2])
            placed = [target, other]
        else:
            raise ValueError(f"unknown kind {kind!r}")
        for index, box in zip(chosen, placed, strict=True):
            paste(canvas, items[index], box, rng, config)
        images[n] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        out_labels[n] = labels[chosen]
        boxes[n] = placed
    return Canvases(images, out_labels, boxes)


def box_masks(boxes: np.ndarray, canvas: int, grid: int) -> np.ndarray:
    """``(N, 1, grid, grid)`` float32 maps: the fraction of each cell a box covers.

    This is the area average of a 0/1 canvas-resolution box mask, as the service resamples
    an uploaded mask; used for teacher maps and for correction tests.
    """
    n = len(boxes)
    full = np.zeros((n, canvas, canvas), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        full[i, y0:y1, x0:x1] = 1.0
    cell = canvas // grid
    return full.reshape(n, grid, cell, grid, cell).mean(axis=(2, 4))[:, None]
