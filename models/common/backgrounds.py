"""Real photographs available offline, split so held-out scenes use held-out photographs.

No traffic-scene data set can be had on these machines (see SPEC), so generated scenes are
pasted onto random crops of the photographs that ship inside scikit-image's and
matplotlib's wheels. Each photograph belongs to exactly one split, so the test metrics are
measured on backgrounds the model never saw.
"""

from __future__ import annotations

from functools import cache

import numpy as np

# ImageNet channel statistics (RGB, 0..1): the models see real photographs as backgrounds,
# so the usual photographic normalisation suits them; each export writes them to config.json.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Which photographs feed which split. `chelsea` and `cat` are the same photograph, so only
# one is used. Grey-level photos are stacked to RGB.
BACKGROUND_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut",
        "camera",
        "brick",
        "gravel",
        "hubble_deep_field",
        "immunohistochemistry",
        "coins",
        "moon",
        "text",
        "page",
        "retina",
        "colorwheel",
        "grace_hopper",
    ),
    "val": ("chelsea", "clock"),
    "test": ("rocket", "coffee", "grass"),
}


def _load(name: str) -> np.ndarray:
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            image = np.asarray(Image.open(f).convert("RGB"))
    else:
        import skimage.data

        image = np.asarray(getattr(skimage.data, name)())
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) / max(float(image.max()), 1.0) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


@cache
def backgrounds(split: str) -> tuple[np.ndarray, ...]:
    """Photographs of one split as (H, W, 3) uint8 RGB arrays."""
    return tuple(_load(name) for name in BACKGROUND_SPLITS[split])


def random_crop(rng: np.random.Generator, photos: tuple[np.ndarray, ...], size: int) -> np.ndarray:
    """A random square crop of a random photograph (side between ``size`` and the photo's
    shorter side), resized to ``size`` (bilinear), flipped left-right half the time;
    float32 ``(size, size, 3)`` in 0..255."""
    from PIL import Image

    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(size, h, w), min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop, np.float32)
