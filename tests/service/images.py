"""Encoders for test uploads (the crafted files that stress the decoder's guards live in
benchmarks/bombs.py, which measures them; re-exported here)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.bombs import jpeg_tiff, repeated_scans

__all__ = ["encode", "jpeg_tiff", "repeated_scans", "scene"]


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **params: Any) -> bytes:
    """Bytes of ``image`` saved as ``fmt``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def scene(width: int = 320, height: int = 160, box: tuple[int, int, int, int] = (80, 80, 96, 96)):
    """Black RGB image with a white box ``(x0, y0, x1, y1)`` in image pixels."""
    array = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = 255
    return array
