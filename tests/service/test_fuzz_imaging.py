"""Property-based fuzzing (hypothesis) of upload decoding (service/imaging.py) and the
attention-mask functions (service/attention.py).

Properties: any bytes either decode to a well-formed array or raise one of the service's
client errors (400 InvalidImage/InvalidMask, 413 PayloadTooLarge), never anything else;
every Pillow mode a served format can hold decodes; masks and maps stay finite in [0, 1]
with the documented shapes; letterbox geometry round-trips. ``FUZZ_EXAMPLES`` scales the
number of examples (default 40 per property, what CI runs).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.attention import (
    area_average,
    decode_mask,
    map_to_png,
    mask_covers_image,
    mask_to_grid,
)
from service.errors import InvalidImage, PayloadTooLarge
from service.imaging import configure_pillow, decode_image, letterbox

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
LIMITS = {"max_pixels": 1_000_000, "max_side": 4096}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# (Pillow mode, formats that store it) for the seed images the byte mutations start from.
MODE_FORMATS = {
    "1": ["PNG", "BMP", "TIFF", "GIF"],
    "L": ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "GIF", "BMP", "TIFF"],
    "RGB": ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP", "GIF"],
    "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
}


@pytest.fixture(autouse=True)
def _pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    configure_pillow(LIMITS["max_pixels"])


@st.composite
def images(draw: st.DrawFn) -> tuple[Image.Image, str]:
    """A small image in any mode, with the format it is saved in."""
    mode = draw(st.sampled_from(sorted(MODE_FORMATS)))
    fmt = draw(st.sampled_from(MODE_FORMATS[mode]))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "F":
        values = rng.normal(0.5, 2.0, (height, width)).astype(np.float32)
        values[rng.random((height, width)) < 0.05] = np.nan
        image = Image.fromarray(values, "F")
    elif mode in ("I;16", "I"):
        top = 65535 if mode == "I;16" else 2**31 - 1
        values = rng.integers(0, top, (height, width), dtype=np.int64)
        image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
        assert image.mode == mode
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        raw = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
        image = Image.frombytes(mode, (width, height), raw.tobytes())
    return image, fmt


def save(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    params = {"lossless": True} if fmt == "WEBP" else {}
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoded image with bytes flipped, cut, inserted or spliced."""
    image, fmt = draw(images())
    data = bytearray(save(image, fmt))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


def decodes_or_refuses_cleanly(data: bytes) -> None:
    try:
        rgb = decode_image(data, **LIMITS)
    except (InvalidImage, PayloadTooLarge):
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] >= 1 and rgb.shape[1] >= 1


def mask_decodes_or_refuses_cleanly(data: bytes) -> None:
    try:
        mask = decode_mask(data, **LIMITS)
    except (InvalidImage, PayloadTooLarge):  # InvalidMask is an InvalidImage
        return
    assert mask.dtype == np.float32 and mask.ndim == 2 and mask.size >= 1
    assert np.isfinite(mask).all() and mask.min() >= 0.0 and mask.max() <= 1.0


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_are_refused_as_client_errors(data: bytes) -> None:
    decodes_or_refuses_cleanly(data)
    mask_decodes_or_refuses_cleanly(data)


@FUZZ
@given(mutated())
def test_damaged_images_decode_or_are_refused_as_client_errors(data: bytes) -> None:
    decodes_or_refuses_cleanly(data)
    mask_decodes_or_refuses_cleanly(data)


@FUZZ
@given(images())
def test_every_mode_of_every_served_format_decodes(drawn: tuple[Image.Image, str]) -> None:
    image, fmt = drawn
    data = save(image, fmt)
    rgb = decode_image(data, **LIMITS)
    assert rgb.shape == (image.height, image.width, 3) and rgb.dtype == np.uint8
    mask = decode_mask(data, **LIMITS)
    assert mask.shape == (image.height, image.width)
    assert np.isfinite(mask).all() and 0.0 <= mask.min() <= mask.max() <= 1.0


@FUZZ
@given(
    image_size=st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
    mask_size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    input_size=st.sampled_from([(64, 64), (160, 160), (96, 128), (128, 96)]),
    grid=st.sampled_from([(16, 16), (8, 8), (7, 5), (1, 1)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_mask_becomes_a_bounded_map_of_the_grid(
    image_size: tuple[int, int],
    mask_size: tuple[int, int],
    input_size: tuple[int, int],
    grid: tuple[int, int],
    seed: int,
) -> None:
    (width, height), (mask_w, mask_h) = image_size, mask_size
    input_h, input_w = input_size
    _, transform = letterbox(np.zeros((height, width, 3), np.uint8), input_h, input_w, (0, 0, 0))
    mask = np.random.default_rng(seed).random((mask_h, mask_w), dtype=np.float32)
    grid_map = mask_to_grid(mask, transform, input_h, input_w, *grid)
    assert grid_map.shape == (1, 1, *grid) and grid_map.dtype == np.float32
    assert np.isfinite(grid_map).all() and 0.0 <= grid_map.min() <= grid_map.max() <= 1.0
    full = mask_to_grid(np.ones_like(mask), transform, input_h, input_w, *grid)
    grid_aspect = grid[1] / grid[0]
    if mask_covers_image(mask_h, mask_w, transform, grid_aspect):
        # Attention never exceeds the fraction of the cell the image covers (padding is 0).
        assert (grid_map <= full + 1e-5).all()
    else:  # over the grid: the mask's own area means, cell by cell
        np.testing.assert_allclose(grid_map[0, 0], area_average(mask, *grid), atol=1e-6)
    # Decided from outside the function: a mask of the image's exact shape covers the image;
    # one of the grid's shape covers the grid unless the image has the grid's aspect.
    assert mask_covers_image(height, width, transform, grid_aspect)
    assert mask_covers_image(*grid, transform, grid_aspect) == (width * grid[0] == height * grid[1])
    png = map_to_png(grid_map[0, 0])
    assert Image.open(io.BytesIO(png)).size == (grid[1], grid[0])


@FUZZ
@given(
    size=st.tuples(st.integers(1, 200), st.integers(1, 200)),
    grid=st.tuples(st.integers(1, 32), st.integers(1, 32)),
    seed=st.integers(0, 2**32 - 1),
)
def test_area_average_keeps_values_in_range(
    size: tuple[int, int], grid: tuple[int, int], seed: int
) -> None:
    values = np.random.default_rng(seed).random(size, dtype=np.float32)
    out = area_average(values, *grid)
    assert out.shape == grid and np.isfinite(out).all()
    assert values.min() - 1e-5 <= out.min() <= out.max() <= values.max() + 1e-5


@FUZZ
@given(
    width=st.integers(1, 2000),
    height=st.integers(1, 2000),
    target=st.sampled_from([(160, 160), (64, 96), (96, 64)]),
    points=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=8),
)
def test_letterbox_points_round_trip(
    width: int, height: int, target: tuple[int, int], points: list[tuple[float, float]]
) -> None:
    boxed, transform = letterbox(np.zeros((height, width, 3), np.uint8), *target, (1, 2, 3))
    assert boxed.shape == (*target, 3)
    xy = np.asarray(points) * np.array([width, height])
    assert np.allclose(
        transform.to_image(transform.to_model(xy)), xy, atol=1e-6 * max(width, height)
    )
