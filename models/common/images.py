"""A user's own photographs, read the way the service reads uploads.

Training on pixels the service would never produce (an RGBA cut-out on black instead of
white, a 16-bit scan clipped instead of scaled, a phone photo not turned upright) teaches
the model another input than the one it serves, so every loader of real images decodes
with ``service.imaging.decode_image``, under the service's default pixel limits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from service.errors import InvalidImage, PayloadTooLarge
from service.imaging import SERVED_FORMATS, decode_image
from service.settings import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_SIDE

logger = logging.getLogger(__name__)

# The file names of the formats the service opens: Pillow's extensions for
# service.imaging.SERVED_FORMATS, so the two lists cannot drift apart.
IMAGE_SUFFIXES = frozenset(
    extension
    for extension, image_format in Image.registered_extensions().items()
    if image_format in SERVED_FORMATS
)


def read_image(path: Path) -> np.ndarray:
    """The image at ``path`` as ``(H, W, 3)`` uint8 RGB, upright (EXIF), alpha over white,
    deep images scaled: exactly what the service decodes from the same bytes."""
    return decode_image(
        path.read_bytes(), max_pixels=DEFAULT_MAX_IMAGE_PIXELS, max_side=DEFAULT_MAX_IMAGE_SIDE
    )


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted; hidden files (``.DS_Store``, macOS
    ``._name.jpg`` resource forks) are not images whatever their suffix."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def read_images(paths: list[Path]) -> Iterator[tuple[Path, np.ndarray]]:
    """``(path, image)`` for each path that decodes; one that does not (truncated, not an
    image after all, over the pixel limit, unreadable: permissions, a network share's I/O
    error, removed meanwhile) is skipped with a warning naming it, so one bad file does not
    end a load of thousands."""
    for path in paths:
        try:
            yield path, read_image(path)
        except (InvalidImage, PayloadTooLarge, OSError) as exc:
            logger.warning("skipped %s: %s", path, exc)
