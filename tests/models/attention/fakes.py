"""Tiny Fashion-MNIST look-alikes written in the real idx .gz format, for tests that must
not depend on the Debian package."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

CLASSES = 10


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def item(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 bright shape whose form depends on the class: a bar at a class-dependent
    angle, so a tiny network can learn the classes."""
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    angle = np.pi * label / CLASSES
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    shape = (np.abs(across) < 3 + label % 3) & (np.abs(along) < 11)
    noise = rng.integers(0, 40, (28, 28))
    return np.where(shape, 200 + noise, 0).astype(np.uint8)


def write_fake_fashion_mnist(root: Path, train: int = 5200, test: int = 200) -> Path:
    """``root`` with train/t10k idx files; labels cycle through the classes. The last
    5000 training items are the validation split, as with the real files."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % CLASSES
        images = np.stack([item(int(c), rng) for c in labels])
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root
