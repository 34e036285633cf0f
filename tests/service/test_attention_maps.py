"""service/attention.py: mask decoding, area-averaged resampling, map PNGs, feature cache."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.attention import (
    FeatureCache,
    ImageFeatures,
    area_average,
    decode_mask,
    image_key,
    map_to_png,
    mask_covers_image,
    mask_to_grid,
    png_base64,
)
from service.errors import InvalidMask, PayloadTooLarge
from service.imaging import letterbox
from service.metrics import create_metrics
from tests.service.images import encode

LIMITS = {"max_pixels": 10_000_000, "max_side": 10_000}


def test_grey_mask_luminance_is_attention() -> None:
    grey = np.array([[0, 255], [51, 102]], np.uint8)
    got = decode_mask(encode(Image.fromarray(grey, "L")), **LIMITS)
    np.testing.assert_allclose(got, grey / 255.0, atol=1e-6)
    assert got.dtype == np.float32


def test_colour_mask_uses_luminance_and_transparency_is_no_attention() -> None:
    white_opaque = np.zeros((2, 2, 4), np.uint8)
    white_opaque[..., :3] = 255
    white_opaque[0, 0, 3] = 255  # only this pixel is opaque
    got = decode_mask(encode(Image.fromarray(white_opaque, "RGBA")), **LIMITS)
    np.testing.assert_allclose(got, [[1.0, 0.0], [0.0, 0.0]], atol=1e-6)
    red = decode_mask(encode(Image.new("RGB", (1, 1), (255, 0, 0)), "JPEG"), **LIMITS)
    assert 0.25 < red[0, 0] < 0.35  # ITU-R 601 luma of red: 0.299


def test_a_lab_mask_is_read_by_its_luma_like_any_image() -> None:
    """Pillow has no LAB -> L conversion: a LAB TIFF mask was a 400 "could not be decoded"
    though the same file is a valid upload."""
    rgb = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255], [200, 40, 40]]], np.uint8))
    lab = io.BytesIO()
    rgb.convert("LAB").save(lab, "TIFF")
    got = decode_mask(lab.getvalue(), **LIMITS)
    want = decode_mask(encode(rgb), **LIMITS)
    assert got.shape == (1, 3)
    np.testing.assert_allclose(got, want, atol=0.02)  # LAB's round trip through RGB


def test_sixteen_bit_mask_is_scaled() -> None:
    deep = Image.fromarray(np.array([[0, 65535]], np.uint16))
    got = decode_mask(encode(deep), **LIMITS)
    np.testing.assert_allclose(got, [[0.0, 1.0]], atol=1e-6)
    # Level 255 of 65535 is nearly no attention, whatever the rest of the mask holds.
    flat = decode_mask(encode(Image.fromarray(np.full((8, 8), 255, np.uint16))), **LIMITS)
    np.testing.assert_allclose(flat, 255 / 65535, atol=1e-6)


@pytest.mark.parametrize("data", [b"", b"not an image", encode(Image.new("L", (8, 8)))[:30]])
def test_undecodable_masks_are_invalid_mask(data: bytes) -> None:
    with pytest.raises(InvalidMask):
        decode_mask(data, **LIMITS)


def test_huge_mask_is_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_mask(encode(Image.new("L", (200, 200))), max_pixels=1000, max_side=10_000)


def test_area_average_is_the_block_mean() -> None:
    values = np.zeros((8, 8), np.float32)
    values[0, 0] = 1.0  # one of four pixels of cell (0, 0)
    values[4:, 4:] = 1.0
    got = area_average(values, 4, 4)
    assert got[0, 0] == pytest.approx(0.25) and got[3, 3] == 1.0 and got[2, 2] == 1.0
    assert got.sum() == pytest.approx(0.25 + 4)
    # Sizes that do not divide: still the area-weighted mean (Pillow BOX), mass preserved.
    odd = area_average(np.ones((10, 7), np.float32), 4, 4)
    np.testing.assert_allclose(odd, 1.0, atol=1e-6)


def test_mask_follows_the_letterbox_and_is_area_averaged() -> None:
    """A 64x32 upload in a 64x64 input: rows 16-47 hold the image, the pad has no
    attention; a mask over the image's left half lands on map columns 0-7."""
    image = np.zeros((32, 64, 3), np.uint8)
    _, transform = letterbox(image, 64, 64, (0, 0, 0))
    assert transform.pad_y == 16 and transform.scale == 1.0
    mask = np.zeros((32, 64), np.float32)
    mask[:, :32] = 1.0
    grid = mask_to_grid(mask, transform, 64, 64, 16, 16)
    assert grid.shape == (1, 1, 16, 16)
    expected = np.zeros((16, 16), np.float32)
    expected[4:12, :8] = 1.0
    np.testing.assert_allclose(grid[0, 0], expected, atol=1e-6)


def test_mask_of_another_size_is_stretched_over_the_image() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    _, transform = letterbox(image, 64, 64, (0, 0, 0))
    small = np.zeros((2, 2), np.float32)
    small[0, 1] = 1.0  # top-right quarter
    grid = mask_to_grid(small, transform, 64, 64, 16, 16)[0, 0]
    assert grid[:8, 8:].min() == pytest.approx(1.0) and grid.sum() == pytest.approx(64)


def test_a_mask_not_shaped_like_the_upload_covers_the_grid() -> None:
    """API.md: a mask of any size is resampled to the attention map grid. On a 64x32
    upload a square mask covers the whole square input, letterbox bars included."""
    _, transform = letterbox(np.zeros((32, 64, 3), np.uint8), 64, 64, (0, 0, 0))
    grid_mask = np.random.default_rng(3).random((16, 16), dtype=np.float32)
    np.testing.assert_array_equal(
        mask_to_grid(grid_mask, transform, 64, 64, 16, 16)[0, 0], grid_mask
    )
    coarse = np.zeros((2, 2), np.float32)
    coarse[0, 1] = 1.0  # the input's top-right quarter, a bar row included
    grid = mask_to_grid(coarse, transform, 64, 64, 16, 16)[0, 0]
    assert grid[:8, 8:].min() == 1.0 and grid.sum() == pytest.approx(64)


@pytest.mark.parametrize(
    ("mask_size", "covers_image"),
    [
        ((64, 32), True),
        ((500, 251), True),
        ((32, 32), False),
        ((30, 28), False),
        ((46, 32), True),
        ((45, 32), False),
    ],
)
def test_what_a_mask_covers_follows_its_aspect_ratio(
    mask_size: tuple[int, int], covers_image: bool
) -> None:
    """The nearer aspect ratio wins: 2:1 image, 1:1 input, the boundary at sqrt(2) (log mean):
    46x32 (1.44) covers the image, 45x32 (1.41) the grid."""
    _, transform = letterbox(np.zeros((32, 64, 3), np.uint8), 64, 64, (0, 0, 0))
    width, height = mask_size
    assert mask_covers_image(height, width, transform, 1.0) is covers_image


def test_map_png_is_8_bit_grey_round_255_m() -> None:
    attention = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)
    png = map_to_png(attention)
    decoded = Image.open(io.BytesIO(base64.b64decode(png_base64(png))))
    assert decoded.mode == "L" and decoded.size == (2, 2)
    assert np.asarray(decoded).tolist() == [[0, 128], [255, 51]]


def _features(tag: float) -> ImageFeatures:
    _, transform = letterbox(np.zeros((4, 4, 3), np.uint8), 4, 4, (0, 0, 0))
    one = np.full((1,), tag, np.float32)
    return ImageFeatures(one, one, one, one, transform)


def test_feature_cache_is_a_bounded_lru() -> None:
    metrics = create_metrics()
    cache = FeatureCache(2, metrics.feature_cache)
    keys = [("m", "1", image_key(bytes([i]))) for i in range(3)]
    cache.put(keys[0], _features(0))
    cache.put(keys[1], _features(1))
    assert cache.get(keys[0]) is not None  # 0 is now the most recent
    cache.put(keys[2], _features(2))  # evicts 1
    assert cache.get(keys[1]) is None and len(cache) == 2
    assert cache.get(keys[2]) is not None
    lookups = "vision_feature_cache_lookups_total"
    assert metrics.registry.get_sample_value(lookups, {"result": "hit"}) == 2
    assert metrics.registry.get_sample_value(lookups, {"result": "miss"}) == 1
    # The version is part of the key: a reloaded model never sees the old features.
    assert cache.get(("m", "2", keys[0][2])) is None


def test_feature_cache_of_size_zero_keeps_nothing() -> None:
    cache = FeatureCache(0)
    cache.put(("m", "1", "k"), _features(0))
    assert len(cache) == 0 and cache.get(("m", "1", "k")) is None
