"""Landmark data sets: generated scenes, and real images with point annotations.

Every data set yields model-input-sized images with labels as ``(class_id, x, y, width)``
rows in model-input pixels. Real images are letterboxed exactly as the service does
(``models/repository/README.md``), so a point annotated on the original image lands where
the service would map it.

Supported real formats (a user's own data):
- CSV with a header ``file,class,x,y`` (optional ``width`` column, the landmark's width in
  pixels of the original image); ``file`` relative to the CSV; ``class`` a label name.
- COCO keypoints JSON: ``images`` (id, file_name), ``categories`` (id, name), and
  ``annotations`` (image_id, category_id, ``keypoints`` [x, y, v] with the reference point
  as the first keypoint, optional ``bbox`` [x, y, w, h] whose w gives the width).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from models.common.images import read_image
from models.landmark.scenes import GENERATOR_VERSION, LABELS, SceneConfig, generate
from service.imaging import LetterboxTransform, letterbox

# The service pads letterboxed uploads with this grey (config.json `pad_value`).
PAD_VALUE = (114, 114, 114)
# Width assumed for a point annotated without a width: a mid-sized landmark, in model pixels.
DEFAULT_WIDTH = 24.0


@dataclass
class LandmarkArrays:
    """A whole split in memory: images (N, S, S, 3) uint8 and per-image label arrays."""

    images: np.ndarray
    labels: list[np.ndarray]  # each (n, 4) float32: class_id, x, y, width
    hidden: list[np.ndarray]  # deliberately unlabelled landmarks (generated data only)


def _generate_one(args: tuple[SceneConfig, str, int, int]) -> tuple:
    scene = generate(*args)
    return scene.image, scene.labels, scene.hidden


def generate_split(
    config: SceneConfig,
    split: str,
    count: int,
    seed: int = 0,
    cache_dir: Path | None = None,
    workers: int = 2,
) -> LandmarkArrays:
    """Generate (or load from ``cache_dir``) ``count`` scenes of ``split``."""
    key = json.dumps([GENERATOR_VERSION, asdict(config), split, count, seed])
    key = hashlib.sha256(key.encode()).hexdigest()
    path = cache_dir / f"{split}-{count}-{key[:12]}.npz" if cache_dir else None
    if path is not None and path.exists():
        z = np.load(path, allow_pickle=False)
        bounds = z["bounds"]
        split_at = lambda a, b: np.split(a, b)[:-1] if len(a) else [a[:0]] * count  # noqa: E731
        return LandmarkArrays(
            z["images"], split_at(z["labels"], bounds[:, 0]), split_at(z["hidden"], bounds[:, 1])
        )
    jobs = [(config, split, i, seed) for i in range(count)]
    if workers > 1:
        with Pool(workers) as pool:
            rows = pool.map(_generate_one, jobs, chunksize=64)
    else:
        rows = [_generate_one(job) for job in jobs]
    arrays = LandmarkArrays(
        np.stack([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows]
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        bounds = np.stack(
            [
                np.cumsum([len(a) for a in arrays.labels]),
                np.cumsum([len(a) for a in arrays.hidden]),
            ],
            axis=1,
        )
        np.savez(
            path,
            images=arrays.images,
            labels=np.concatenate(arrays.labels),
            hidden=np.concatenate(arrays.hidden),
            bounds=bounds,
        )
    return arrays


def _load_image(path: Path, size: int) -> tuple[np.ndarray, LetterboxTransform]:
    """The image at ``path`` decoded and letterboxed into ``size x size`` by the service's
    own code, so training sees what the service feeds the graph."""
    return letterbox(read_image(path), size, size, PAD_VALUE)


def _from_points(
    root: Path, records: dict[str, list[tuple[str, float, float, float | None]]], size: int
) -> LandmarkArrays:
    index = {name: i for i, name in enumerate(LABELS)}
    images, labels = [], []
    for file, points in records.items():
        arr, transform = _load_image(root / file, size)
        rows = []
        for label, x, y, width in points:
            if label not in index:
                raise ValueError(f"{file}: unknown class {label!r}; expected one of {LABELS}")
            w = DEFAULT_WIDTH if width is None else width * transform.scale
            u, v = transform.to_model((x, y))
            rows.append((index[label], u, v, w))
        images.append(arr)
        labels.append(np.asarray(rows, np.float32).reshape(-1, 4))
    empty = [np.zeros((0, 4), np.float32) for _ in labels]
    return LandmarkArrays(np.stack(images), labels, empty)


def load_csv(path: Path, size: int) -> LandmarkArrays:
    """Images and points from a ``file,class,x,y[,width]`` CSV (see module docstring)."""
    records: dict[str, list[tuple[str, float, float, float | None]]] = {}
    # utf-8-sig: a CSV saved by a spreadsheet often starts with a byte-order mark.
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            width = row.get("width") or None
            records.setdefault(row["file"], []).append(
                (row["class"], float(row["x"]), float(row["y"]), float(width) if width else None)
            )
    return _from_points(path.parent, records, size)


def load_coco(path: Path, size: int, image_root: Path | None = None) -> LandmarkArrays:
    """Images and points from a COCO keypoints file (see module docstring)."""
    coco = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    records: dict[str, list[tuple[str, float, float, float | None]]] = {
        f: [] for f in files.values()
    }
    for ann in coco["annotations"]:
        x, y, *rest = ann["keypoints"][:3]
        if rest and rest[0] == 0:  # COCO v = 0: not labelled (x, y are 0, not a place)
            continue
        width = ann["bbox"][2] if ann.get("bbox") else None
        records[files[ann["image_id"]]].append((names[ann["category_id"]], x, y, width))
    return _from_points(image_root or path.parent, records, size)


# Share of a user's images held out for a split not given as its own file (validation,
# test): a tenth each, the usual hold-out for a few hundred to a few thousand images.
HOLDOUT_FRACTION = 0.1
# The order of the held-out slots in the seeded permutation of a user's images.
SLOTS = ("test", "val")


def holdout_split(
    arrays: LandmarkArrays, which: str, held_out: Sequence[str], seed: int
) -> LandmarkArrays:
    """Split ``which`` of ``arrays`` by image, seeded: each split named in ``held_out``
    ("val", "test") gets HOLDOUT_FRACTION of the images (at least one), "train" the rest.
    The same arrays, splits and seed always give the same disjoint partition."""
    n = len(arrays.images)
    per_split = max(1, round(n * HOLDOUT_FRACTION))
    if n - per_split * len(held_out) < 1:
        raise ValueError(
            f"{n} images are too few to hold out {' and '.join(held_out)} ({per_split} each) "
            "and keep any for training; give them as files (--val-data, --test-data)"
        )
    order = np.random.default_rng([seed, n]).permutation(n)
    # Each split has its own slot of the permutation whether the other is held out or not,
    # so runs that differ only in --val-data are scored on the same test images.
    slots = {name: order[i * per_split : (i + 1) * per_split] for i, name in enumerate(SLOTS)}
    parts = {name: slots[name] for name in held_out}
    parts["train"] = np.concatenate(
        [order[len(SLOTS) * per_split :], *(slots[s] for s in SLOTS if s not in held_out)]
    )
    keep = np.sort(parts[which])
    return LandmarkArrays(
        arrays.images[keep], [arrays.labels[i] for i in keep], [arrays.hidden[i] for i in keep]
    )


class LandmarkDataset(Dataset):
    """Torch view of ``LandmarkArrays`` with optional extra ignore points per image.

    Items are ``(image (3, S, S) float32 normalised, labels (n, 4), ignore (m, 2))``.
    """

    def __init__(self, arrays: LandmarkArrays, mean: Sequence[float], std: Sequence[float]):
        self.arrays = arrays
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.ignore: list[np.ndarray] = [np.zeros((0, 2), np.float32) for _ in arrays.labels]

    def __len__(self) -> int:
        return len(self.arrays.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.arrays.images[i]).permute(2, 0, 1).float() / 255.0
        image = (image - self.mean) / self.std
        return image, torch.from_numpy(self.arrays.labels[i]), torch.from_numpy(self.ignore[i])


def collate(batch: list) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    images, labels, ignore = zip(*batch, strict=True)
    return torch.stack(images), list(labels), list(ignore)
