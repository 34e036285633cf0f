"""Attention maps for the seed 002 model: edited masks in, map PNGs out, cached features.

Pure numpy/Pillow. A *mask* is any image the caller uploads; its luminance 0..255 is
attention 0..1. What it covers is read from its shape (``mask_covers_image``): a mask with
the upload's aspect ratio covers the uploaded image and is placed on the model input exactly
as the image was (same letterbox; padding = no attention); any other mask covers the
attention map's grid, the model's whole input, as API.md has it ("any size, resampled to
the attention map grid"), so the ``attention_map`` of ``/attention`` goes back unchanged
whatever the upload's shape. Either way it is then area-averaged to the grid: each map cell
is the mean attention of the model-input pixels it covers.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from prometheus_client import Counter

from service.errors import InvalidMask
from service.imaging import LetterboxTransform, deep_to_unit, has_alpha, is_deep, open_upload


def decode_mask(data: bytes, *, max_pixels: int, max_side: int) -> npt.NDArray[np.float32]:
    """An uploaded mask as ``(H, W)`` float32 attention in 0..1 (luminance / 255).

    EXIF orientation is applied; transparent pixels count as no attention (composited over
    black). Raises InvalidMask (400) when the bytes are not a decodable image and
    PayloadTooLarge (413) above the pixel limits.
    """
    attention = open_upload(
        data,
        _mask_attention,
        max_pixels=max_pixels,
        max_side=max_side,
        what="mask",
        invalid=InvalidMask,
    )
    if attention.ndim != 2 or attention.size == 0:
        raise InvalidMask(f"the mask decoded to an unusable shape {attention.shape}")
    return attention


def _mask_attention(image: Image.Image) -> npt.NDArray[np.float32]:
    """A decoded mask as ``(H, W)`` float32 attention in 0..1."""
    if is_deep(image):
        return deep_to_unit(image).astype(np.float32)
    if has_alpha(image):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    if image.mode == "LAB":
        # Pillow converts LAB to RGB but not to L; through RGB, the luma is every mode's.
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)


def mask_covers_image(
    mask_height: int, mask_width: int, transform: LetterboxTransform, grid_aspect: float
) -> bool:
    """Whether a ``mask_height x mask_width`` mask covers the uploaded image (True) or the
    map grid, which spans the model's input (False): whichever of the two it is closer to
    in aspect ratio (width / height, compared as log ratios), so the map ``/attention``
    returns always reads as the grid unless the image has the grid's own shape. A tie goes
    to the image. ``grid_aspect``: the map grid's width / height."""
    mask_aspect = math.log(mask_width / mask_height)
    image_aspect = math.log(transform.image_width / transform.image_height)
    return abs(mask_aspect - image_aspect) <= abs(mask_aspect - math.log(grid_aspect))


def mask_to_grid(
    mask: npt.NDArray[np.float32],
    transform: LetterboxTransform,
    input_height: int,
    input_width: int,
    grid_height: int,
    grid_width: int,
) -> npt.NDArray[np.float32]:
    """Resample an ``(H, W)`` mask to a ``(1, 1, gh, gw)`` map of the grid.

    A mask over the uploaded image (``mask_covers_image``) is stretched over the image
    (whatever its own size), placed in the model input with the image's letterbox
    (area-averaging resize, Pillow BOX), padding 0; any other mask is stretched over the
    whole model input. Then each grid cell takes the mean of the model-input pixels it
    covers.
    """
    mask_height, mask_width = mask.shape
    if not mask_covers_image(mask_height, mask_width, transform, grid_width / grid_height):
        # The grid covers the model input evenly: averaging the mask straight to the grid
        # is the same area mean, without a model-input-sized canvas.
        return area_average(mask, grid_height, grid_width)[None, None]
    content_w = max(1, min(input_width, round(transform.image_width * transform.scale)))
    content_h = max(1, min(input_height, round(transform.image_height * transform.scale)))
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32), mode="F").resize(
            (content_w, content_h), Image.Resampling.BOX
        ),
        dtype=np.float32,
    )
    canvas = np.zeros((input_height, input_width), np.float32)
    x0, y0 = transform.pad_x, transform.pad_y
    canvas[y0 : y0 + content_h, x0 : x0 + content_w] = resized
    return area_average(canvas, grid_height, grid_width)[None, None]


def area_average(
    values: npt.NDArray[np.float32], grid_height: int, grid_width: int
) -> npt.NDArray[np.float32]:
    """``(H, W)`` -> ``(gh, gw)``: each cell the area-weighted mean of what it covers
    (exact block means when the sizes divide, Pillow's BOX filter otherwise)."""
    height, width = values.shape
    if height % grid_height == 0 and width % grid_width == 0:
        blocks = values.reshape(grid_height, height // grid_height, grid_width, -1)
        means: npt.NDArray[np.float32] = blocks.mean(axis=(1, 3), dtype=np.float32)
        return np.clip(means, 0.0, 1.0)
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    out = np.asarray(image.resize((grid_width, grid_height), Image.Resampling.BOX), np.float32)
    return np.clip(out, 0.0, 1.0)


def map_to_png(attention: npt.NDArray[Any]) -> bytes:
    """An ``(h, w)`` map in 0..1 as an 8-bit grey PNG, value = round(255 * M)."""
    grey = np.rint(np.clip(np.asarray(attention, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def image_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageFeatures:
    """What the features graph (and the perception graph with the model's own map) said
    about one upload; enough to answer a correction with only the perception graph."""

    feature_map: npt.NDArray[np.float32]  # (1, K, h, w)
    attention_map: npt.NDArray[np.float32]  # (1, 1, h, w)
    attention_probs: npt.NDArray[np.float32]  # (K,)
    perception_probs: npt.NDArray[np.float32]  # (K,)
    transform: LetterboxTransform


class FeatureCache:
    """A bounded, thread-safe LRU of ImageFeatures keyed by (model, version, sha256)."""

    def __init__(self, capacity: int, lookups: Counter | None = None) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str, str], ImageFeatures] = OrderedDict()
        self._lock = threading.Lock()
        # Lookups by result ("hit" / "miss"): the app's Prometheus counter, if given.
        self._lookups = lookups

    def get(self, key: tuple[str, str, str]) -> ImageFeatures | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
        if self._lookups is not None:
            self._lookups.labels("miss" if found is None else "hit").inc()
        return found

    def put(self, key: tuple[str, str, str], value: ImageFeatures) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
