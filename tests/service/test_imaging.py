from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from benchmarks.bombs import (
    gif_with_comments,
    jpeg_with_empty_segments,
    jpeg_with_stray_bytes,
    png_with_empty_chunks,
    scans_behind_stray_byte,
)
from service import imaging
from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from service.imaging import (
    JPEG_SCAN_BUDGET,
    MAX_GIF_BLOCKS,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_JPEG_SKIPPED_BYTES,
    MAX_PNG_CHUNKS,
    LetterboxTransform,
    centre_crop,
    check_content_type,
    configure_pillow,
    decode_image,
    decode_to_fit,
    fit_image,
    gif_blocks,
    jpeg_scans,
    jpeg_structure,
    letterbox,
    normalize,
    png_chunks,
    tiff_jpeg_streams,
)
from tests.service.images import encode, jpeg_tiff, repeated_scans

LIMITS = {"max_pixels": 40_000_000, "max_side": 16_384}
RED, BLUE = (255, 0, 0), (0, 0, 255)


def decode(data: bytes, **limits: int) -> np.ndarray:
    return decode_image(data, **{**LIMITS, **limits})


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` (RGB, 8-bit) and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


# --- bad input -------------------------------------------------------------------------


def test_zero_bytes_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode(b"")


def test_text_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="not an image"):
        decode(b"hello, this is not an image\n" * 10)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_invalid(fmt: str) -> None:
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), fmt)
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode(data[: len(data) // 2])


def test_png_with_bad_crc_is_invalid() -> None:
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first CRC byte of the IDAT chunk
    with pytest.raises(InvalidImage):
        decode(bytes(data))


def test_decompression_bomb_header_is_too_large() -> None:
    # Pillow's own guard fires first; the message quotes the configured limit, not Pillow's.
    with pytest.raises(PayloadTooLarge, match=f"at most {LIMITS['max_pixels']} pixels"):
        decode(png_header_only(100_000, 100_000))


def test_pillow_bomb_warning_becomes_too_large() -> None:
    # Between Pillow's limit and twice it, Pillow only warns; the warning must still stop it.
    configure_pillow(1_000)
    with pytest.raises(PayloadTooLarge):
        decode(encode(np.zeros((40, 40, 3), np.uint8)), max_pixels=10_000_000)


def test_pixel_and_side_limits() -> None:
    data = encode(np.zeros((50, 100, 3), np.uint8))
    with pytest.raises(PayloadTooLarge, match="100x50"):
        decode(data, max_pixels=4_999)
    with pytest.raises(PayloadTooLarge):
        decode(data, max_side=99)
    assert decode(data, max_pixels=5_000, max_side=100).shape == (50, 100, 3)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "text/html; charset=utf-8", "video/mp4"]
)
def test_non_image_content_type_is_unsupported(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        check_content_type(content_type)


@pytest.mark.parametrize(
    "content_type", [None, "", "application/octet-stream", "image/png", "IMAGE/JPEG", "image/x"]
)
def test_image_or_unknown_content_type_is_accepted(content_type: str | None) -> None:
    check_content_type(content_type)


# --- odd but valid -------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    # Stored 40 wide x 20 high, left half red; orientation 6 = rotate 90 degrees clockwise
    # to display, so the caller sees 20 wide x 40 high with red on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = RED
    stored[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = decode(encode(stored, "JPEG", exif=exif, quality=95))
    assert rgb.shape == (40, 20, 3)
    assert rgb[5, 10, 0] > 200 and rgb[5, 10, 2] < 60
    assert rgb[35, 10, 2] > 200 and rgb[35, 10, 0] < 60


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    rgb = decode(data)
    assert rgb.shape == (8, 16, 3) and rgb.dtype == np.uint8
    assert rgb[4, 8, 0] > 200 and rgb[4, 8, 1] < 60 and rgb[4, 8, 2] < 60


@pytest.mark.parametrize("value", [254, 255, 256, 257])
def test_16_bit_levels_scale_the_same_whatever_the_image_holds(value: int) -> None:
    # A rule keyed on the image's peak once read 255 as white and 256 as black.
    rgb = decode(encode(Image.fromarray(np.full((2, 2), value, np.uint16)), "PNG"))
    assert (rgb == round(value * 255 / 65535)).all()


def test_16_bit_png_is_scaled_to_8_bits() -> None:
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    rgb = decode(encode(image, "PNG"))
    assert rgb.shape == (1, 3, 3)
    assert rgb[0, :, 0].tolist() == [0, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("I", 65535, 255),  # 32-bit integers are 8-bit levels, clipped (as Pillow's L)
        ("I", 256, 255),
        ("I", 200, 200),
        ("F", 1.0, 255),
        ("F", 0.5, 128),
        ("F", 300.0, 255),
    ],
)
def test_deep_single_channel_modes(mode: str, value: float, expected: int) -> None:
    rgb = decode(encode(Image.new(mode, (3, 2), value), "TIFF"))
    assert rgb.shape == (2, 3, 3)
    assert (rgb == expected).all()


def test_palette_with_transparency_composites_over_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0
    rgb = decode(encode(image, "PNG", transparency=0))
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[3, 3].tolist() == [255, 255, 255]


def test_la_alpha_composites_over_white() -> None:
    image = Image.new("LA", (2, 1), (0, 255))
    image.putpixel((1, 0), (0, 0))
    rgb = decode(encode(image, "PNG"))
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [255, 255, 255]


def test_rgba_half_transparent() -> None:
    rgb = decode(encode(Image.new("RGBA", (2, 2), (0, 0, 0, 128)), "PNG"))
    assert np.abs(rgb.astype(int) - 127).max() <= 1


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    rgb = decode(data)
    assert rgb.shape == (8, 8, 3)
    assert rgb[4, 4].tolist() == list(RED)


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "PNG", "JPEG"])
def test_formats_and_one_pixel(fmt: str) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    rgb = decode(encode(Image.new("RGB", (1, 1), (10, 200, 30)), fmt, **params))
    assert rgb.shape == (1, 1, 3) and rgb.dtype == np.uint8


def test_bilevel_and_grey() -> None:
    assert decode(encode(Image.new("1", (3, 3), 1), "PNG"))[0, 0].tolist() == [255, 255, 255]
    assert decode(encode(Image.new("L", (3, 3), 7), "PNG"))[0, 0].tolist() == [7, 7, 7]


# --- letterbox and normalize ---------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "scale", "pad_x", "pad_y", "inner"),
    [
        (160, 320, 0.5, 0, 40, (80, 160)),  # wide: bands top and bottom
        (480, 160, 1 / 3, 53, 0, (160, 53)),  # tall: round(53.33) = 53, pad floor(107/2)
        (160, 160, 1.0, 0, 0, (160, 160)),  # exact fit: no resize
        (1, 1, 160.0, 0, 0, (160, 160)),
        # 0.48 rounds to 0 rows; kept at one row, so the (floored) pad is (160 - 1) // 2.
        (3, 1000, 0.16, 0, 79, (1, 160)),
    ],
)
def test_letterbox_geometry(
    height: int, width: int, scale: float, pad_x: int, pad_y: int, inner: tuple[int, int]
) -> None:
    image = np.full((height, width, 3), 200, np.uint8)
    boxed, transform = letterbox(image, 160, 160, (114, 114, 114))
    assert boxed.shape == (160, 160, 3) and boxed.dtype == np.uint8
    assert transform == LetterboxTransform(scale, pad_x, pad_y, width, height)
    inner_h = inner[0]
    assert (boxed[pad_y : pad_y + inner_h, pad_x : pad_x + inner[1]] == 200).all()
    assert (boxed[:pad_y] == 114).all() and (boxed[:, :pad_x] == 114).all()
    assert (boxed[pad_y + inner_h :] == 114).all()


@pytest.mark.parametrize(("height", "width"), [(100, 200), (200, 100), (160, 160), (3, 1000)])
def test_edge_padding_repeats_the_outermost_rows_and_columns(height: int, width: int) -> None:
    """pad="edge": the same geometry and interior as grey bars, each bar a copy of the
    resized image's nearest row or column."""
    image = np.random.default_rng(3).integers(0, 255, (height, width, 3), dtype=np.uint8)
    grey, transform = letterbox(image, 160, 160, (114, 114, 114))
    edge, same = letterbox(image, 160, 160, (114, 114, 114), pad="edge")
    assert same == transform and edge.shape == grey.shape and edge.dtype == np.uint8
    # The resized image's extent, as letterbox computes it.
    top, left = transform.pad_y, transform.pad_x
    bottom = top + min(160, max(1, round(height * transform.scale)))
    right = left + min(160, max(1, round(width * transform.scale)))
    np.testing.assert_array_equal(edge[top:bottom, left:right], grey[top:bottom, left:right])
    assert (edge[:top] == edge[top]).all() and (edge[bottom:] == edge[bottom - 1]).all()
    assert (edge[:, :left] == edge[:, left : left + 1]).all()
    assert (edge[:, right:] == edge[:, right - 1 : right]).all()
    assert np.array_equal(fit_image(image, 160, 160, (114,) * 3, pad="edge")[0], edge)
    # A crop pads nothing, so the mode changes nothing there.
    crop = fit_image(image, 160, 160, (114,) * 3, resize="crop")[0]
    assert np.array_equal(fit_image(image, 160, 160, (0,) * 3, resize="crop", pad="edge")[0], crop)


def test_letterbox_round_trip_non_square() -> None:
    _, transform = letterbox(np.zeros((480, 640, 3), np.uint8), 160, 160, (0, 0, 0))
    assert (transform.scale, transform.pad_x, transform.pad_y) == (0.25, 0, 20)
    image_points = np.array([[0.0, 0.0], [640.0, 480.0], [312.5, 140.0]])
    model_points = transform.to_model(image_points)
    np.testing.assert_allclose(model_points, [[0, 20], [160, 140], [78.125, 55]])
    np.testing.assert_allclose(transform.to_image(model_points), image_points)
    assert transform.to_image(np.zeros((2, 3, 2))).shape == (2, 3, 2)


def test_image_coordinates_carry_no_float_noise() -> None:
    # 96 / 0.21333... is 449.99999999999994 in float64; answers say 450.
    transform = LetterboxTransform(0.21333333333333335, 0, 0, 750, 600)
    assert transform.to_image([[96.0, 96.0]]).tolist() == [[450.0, 450.0]]


def test_letterbox_resizes_bilinear_with_pillow() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    boxed, _ = letterbox(image, 160, 160, (114, 114, 114))
    expected = np.asarray(Image.fromarray(image).resize((160, 80), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(boxed[40:120], expected)


def test_normalize_layout_and_values() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (2, 4, 5, 3), dtype=np.uint8)
    mean, std, scale = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255
    batch = normalize(images, scale=scale, mean=mean, std=std)
    assert batch.shape == (2, 3, 4, 5) and batch.dtype == np.float32 and batch.flags.c_contiguous
    expected = ((images * scale - np.array(mean)) / np.array(std)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(batch, expected, rtol=1e-5, atol=1e-5)
    assert normalize(images[0], scale=scale, mean=mean, std=std).shape == (1, 3, 4, 5)


def gradient_photo(width: int, height: int) -> np.ndarray:
    """Smooth colour ramps with a few hard edges: JPEG-friendly, like a photograph."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    image[height // 3 : height // 2, width // 4 : width // 2] = (250, 250, 20)
    return image.astype(np.uint8)


def test_draft_decodes_a_large_jpeg_reduced_with_the_full_geometry() -> None:
    data = encode(gradient_photo(640, 480), "JPEG", quality=90)
    reduced, full = decode_to_fit(data, 160, 160, **LIMITS)
    assert full == (640, 480)
    assert reduced.shape == (120, 160, 3)  # libjpeg's 1/4 scale: still covers 160 x 120
    drafted, transform = letterbox(reduced, 160, 160, (114, 114, 114), source_size=full)
    plain, plain_transform = letterbox(decode(data), 160, 160, (114, 114, 114))
    assert transform == plain_transform  # points map to the full image's pixels
    assert transform.image_width == 640 and transform.image_height == 480
    difference = np.abs(drafted.astype(int) - plain.astype(int))
    assert difference.mean() < 3.0  # an area average instead of bilinear: close, not equal


# The orientation that undoes each EXIF orientation (6 and 8 are quarter turns both ways).
INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("compression", ["raw", "tiff_lzw"])
def test_tiff_orientation_is_applied_once(orientation: int, compression: str) -> None:
    """Pillow's TIFF plugin turns the image itself; the size must not be swapped again."""
    shown = gradient_photo(60, 40)  # what the caller sees, 60 wide x 40 high
    undo = Image.Exif()
    undo[0x0112] = INVERSE_ORIENTATION[orientation]
    probe = Image.fromarray(shown)
    probe.info["exif"] = undo.tobytes()
    stored = ImageOps.exif_transpose(probe)  # the pixels ``orientation`` turns into ``shown``
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "TIFF", exif=exif, compression=compression)
    reduced, full = decode_to_fit(data, 32, 32, **LIMITS)
    assert full == (60, 40)
    np.testing.assert_array_equal(reduced, shown)
    np.testing.assert_array_equal(decode(data), shown)


def test_a_jpeg_with_more_scans_than_any_encoder_writes_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    assert decode(data).shape == (64, 64, 3)  # 6 scans: a normal progressive JPEG
    bomb = data[:end] + data[last_scan:end] * MAX_JPEG_SCANS + data[end:]
    with pytest.raises(PayloadTooLarge, match=r"JPEG with \d+ scans"):
        decode(bomb)
    with pytest.raises(PayloadTooLarge):
        decode_to_fit(bomb, 32, 32, **LIMITS)
    # Exactly the limit still decodes.
    allowed = data.count(b"\xff\xda")
    fits = data[:end] + data[last_scan:end] * (MAX_JPEG_SCANS - allowed) + data[end:]
    assert decode(fits).shape == (64, 64, 3)


@pytest.mark.parametrize(("mode", "scans"), [("L", 6), ("RGB", 10), ("CMYK", 18)])
def test_standard_progressions_fit_at_the_largest_size(mode: str, scans: int) -> None:
    """libjpeg's own progressive scripts, at the largest image accepted."""
    buffer = io.BytesIO()
    Image.new(mode, (64, 64)).save(buffer, "JPEG", progressive=True)
    assert jpeg_scans(buffer.getvalue()) == scans
    assert decode(buffer.getvalue(), max_pixels=64 * 64).shape == (64, 64, 3)


def test_only_the_jpeg_streams_own_scans_count() -> None:
    """Start-of-scan bytes inside a metadata segment or after the end of the image (a
    motion photo's video, a second MPO picture) are not scans of this image."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "JPEG")
    data = buffer.getvalue()
    payload = b"\xff\xda" * 1000
    app1 = b"\xff\xe1" + (2 + len(payload)).to_bytes(2, "big") + payload
    with_metadata = data[:2] + app1 + data[2:]
    motion_photo = data + payload * 10
    for upload in (with_metadata, motion_photo):
        assert jpeg_scans(upload) == 1
        assert decode(upload).shape == (32, 32, 3)


def test_a_large_jpeg_gets_fewer_scans() -> None:
    """Scan-pixels are capped at JPEG_SCAN_BUDGET scans of the largest image accepted: an
    image of the largest size (here MAX_IMAGE_PIXELS = 64 x 64) gets that many scans."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    extra = JPEG_SCAN_BUDGET - jpeg_scans(data)
    at_budget = data[:end] + data[last_scan:end] * extra + data[end:]
    assert decode(at_budget, max_pixels=64 * 64).shape == (64, 64, 3)
    over = data[:end] + data[last_scan:end] * (extra + 1) + data[end:]
    with pytest.raises(PayloadTooLarge, match=rf"at most {JPEG_SCAN_BUDGET} are decoded"):
        decode(over, max_pixels=64 * 64)
    assert decode(over).shape == (64, 64, 3)  # the same file, a larger limit: decoded


def test_stray_bytes_after_a_segment_do_not_hide_the_scans_behind_them() -> None:
    """libjpeg skips bytes where a marker belongs (with a warning) and decodes what follows,
    so the count must too: an empty APP0 segment and one stray byte once hid 500 repeated
    scans (a 47 kB file, 5.4 s of decoding at 3000x3000)."""
    for stray in (b"\x00", b"\x12\x34", b"\xff\xff\xff\x00"):
        bomb = scans_behind_stray_byte(64, MAX_JPEG_SCANS, stray)
        with Image.open(io.BytesIO(bomb)) as image:
            image.load()  # what the guard stands in front of decodes it whole
        assert jpeg_scans(bomb) == bomb.count(b"\xff\xda") == 6 + MAX_JPEG_SCANS
        with pytest.raises(PayloadTooLarge, match=rf"JPEG with {6 + MAX_JPEG_SCANS} scans"):
            decode(bomb)


def test_a_jpeg_of_more_marker_segments_than_encoders_write_is_refused() -> None:
    """Pillow parses each segment before the first scan in Python."""
    own = jpeg_structure(jpeg_with_empty_segments(0))[1]
    fits = jpeg_with_empty_segments(MAX_JPEG_SEGMENTS - own)
    assert jpeg_structure(fits)[1] == MAX_JPEG_SEGMENTS
    assert decode(fits).shape == (16, 16, 3)
    over = jpeg_with_empty_segments(MAX_JPEG_SEGMENTS - own + 1)
    with pytest.raises(PayloadTooLarge, match=rf"more than {MAX_JPEG_SEGMENTS} marker segments"):
        decode(over)


def test_stray_bytes_before_the_first_scan_are_capped() -> None:
    """Pillow steps over them one at a time; a few (a damaged file) still decode."""
    for stray in (b"\x00", b"\xff"):
        fits = jpeg_with_stray_bytes(MAX_JPEG_SKIPPED_BYTES, stray)
        assert jpeg_structure(fits)[2] == MAX_JPEG_SKIPPED_BYTES
        assert decode(fits).shape == (16, 16, 3)
        with pytest.raises(PayloadTooLarge, match="stray bytes"):
            decode(jpeg_with_stray_bytes(MAX_JPEG_SKIPPED_BYTES + 1, stray))


def test_a_png_of_more_chunks_than_encoders_write_is_refused() -> None:
    assert png_chunks(png_with_empty_chunks(0)) == 3  # IHDR, IDAT, IEND
    fits = png_with_empty_chunks(MAX_PNG_CHUNKS - 3)
    assert png_chunks(fits) == MAX_PNG_CHUNKS
    assert decode(fits).shape == (16, 16, 3)
    with pytest.raises(PayloadTooLarge, match=rf"PNG of more than {MAX_PNG_CHUNKS} chunks"):
        decode(png_with_empty_chunks(MAX_PNG_CHUNKS - 2))


def test_a_gif_of_more_extension_blocks_than_encoders_write_is_refused() -> None:
    assert gif_blocks(gif_with_comments(0)) == 0
    # Each comment extension is one sub-block and its terminator.
    fits = gif_with_comments(MAX_GIF_BLOCKS // 2)
    assert gif_blocks(fits) == MAX_GIF_BLOCKS
    assert decode(fits).shape == (16, 16, 3)
    with pytest.raises(PayloadTooLarge, match=rf"GIF of more than {MAX_GIF_BLOCKS}"):
        decode(gif_with_comments(MAX_GIF_BLOCKS // 2 + 1))


def streams_of(data: bytes) -> list[tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return tiff_jpeg_streams(image, data)


def test_a_jpeg_tiff_as_pillow_writes_it_decodes_and_its_strips_are_counted() -> None:
    data = encode(gradient_photo(64, 48), "TIFF", compression="jpeg")
    streams = streams_of(data)
    assert streams and all(scans >= 1 for scans, _ in streams)
    assert sum(pixels for _, pixels in streams) == 64 * 48
    assert decode(data).shape == (48, 64, 3)


def test_a_tiff_without_jpeg_has_no_streams() -> None:
    assert streams_of(encode(gradient_photo(16, 16), "TIFF", compression="tiff_deflate")) == []


@pytest.mark.parametrize("layout", [{}, {"tile": (64, 64)}])
def test_a_tiff_strip_or_tile_with_more_scans_than_any_encoder_writes_is_refused(
    layout: dict,
) -> None:
    """libtiff decodes up to 99 scans per strip or tile; the JPEG limit applies instead."""
    fits = jpeg_tiff([repeated_scans(64, 64, MAX_JPEG_SCANS)], 64, 64, **layout)
    assert streams_of(fits) == [(MAX_JPEG_SCANS, 64 * 64)]
    assert decode(fits).shape == (64, 64, 3)
    bomb = jpeg_tiff([repeated_scans(64, 64, MAX_JPEG_SCANS + 1)], 64, 64, **layout)
    with pytest.raises(
        PayloadTooLarge, match=rf"TIFF with a JPEG stream of {MAX_JPEG_SCANS + 1} scans"
    ):
        decode(bomb)
    with pytest.raises(PayloadTooLarge):
        decode_to_fit(bomb, 32, 32, **LIMITS)


def test_the_strips_of_a_tiff_share_one_scan_budget() -> None:
    """Two half-height strips of 25 scans each are 25 scans of the whole image: one more
    than JPEG_SCAN_BUDGET allows at the largest size (here MAX_IMAGE_PIXELS = 64 x 64)."""
    strip = repeated_scans(64, 32, JPEG_SCAN_BUDGET + 1)
    data = jpeg_tiff([strip, strip], 64, 64, rows_per_strip=32)
    assert streams_of(data) == [(JPEG_SCAN_BUDGET + 1, 64 * 32)] * 2
    with pytest.raises(PayloadTooLarge, match=rf"at most {JPEG_SCAN_BUDGET} are decoded"):
        decode(data, max_pixels=64 * 64)
    assert decode(data).shape == (64, 64, 3)  # the same file, a larger limit: decoded
    within = jpeg_tiff([strip, repeated_scans(64, 32, 10)], 64, 64, rows_per_strip=32)
    assert decode(within, max_pixels=64 * 64).shape == (64, 64, 3)


def test_an_old_style_jpeg_tiff_counts_its_one_stream_once() -> None:
    """Compression 6 names the stream as the whole frame's and as its strip."""
    data = jpeg_tiff([repeated_scans(64, 64, 10)], 64, 64, old_style=True)
    assert streams_of(data) == [(10, 64 * 64)]
    bomb = jpeg_tiff([repeated_scans(64, 64, MAX_JPEG_SCANS + 1)], 64, 64, old_style=True)
    with pytest.raises(PayloadTooLarge, match="TIFF with a JPEG stream of"):
        decode(bomb)


def test_overlapping_tiff_strips_are_refused_before_each_is_walked() -> None:
    """Two strips whose streams overlap (the first claims the second's bytes too): counting
    them would cost more than a pass over the file, and no encoder writes that."""
    stream = repeated_scans(64, 32, 10)
    both = 2 * len(stream)
    pointers = [(0, both), (len(stream), both)]  # the second runs to the file's end
    data = jpeg_tiff([stream, stream], 64, 64, rows_per_strip=32, pointers=pointers)
    with pytest.raises(ValueError, match="overlap"):
        streams_of(data)
    with pytest.raises(InvalidImage, match="overlap"):
        decode(data)


def test_old_style_strips_inside_the_whole_frame_stream_are_not_walked_again() -> None:
    """Compression 6 as old writers laid it out: one JPEG stream for the frame, the strips
    pointing into its scan data (not at an SOI): one stream counted, no overlap refused."""
    stream = repeated_scans(64, 64, 10)
    scan_data = stream.find(b"\xff\xda") + 12  # inside the first scan
    halves = [(scan_data, 8), (scan_data + 8, len(stream) - scan_data - 8)]
    assert all(stream[o : o + 2] != b"\xff\xd8" and n > 0 for o, n in halves)
    data = jpeg_tiff([stream], 64, 64, rows_per_strip=32, old_style=True, pointers=halves)
    assert streams_of(data) == [(10, 64 * 64), (0, 64 * 32), (0, 64 * 32)]


def test_strips_beyond_the_frames_size_are_not_read_and_shared_ones_count_each_time() -> None:
    stream = repeated_scans(64, 32, 10)
    # 1000 pointers where a 64-row frame of 32-row strips has 2; all name the same bytes.
    data = jpeg_tiff([stream], 64, 64, rows_per_strip=32, pointers=[(0, len(stream))] * 1000)
    assert streams_of(data) == [(10, 64 * 32)] * 2


def test_draft_respects_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 640 x 320, shown 320 x 640
    data = encode(gradient_photo(640, 320), "JPEG", exif=exif, quality=90)
    reduced, full = decode_to_fit(data, 64, 64, **LIMITS)
    assert full == (320, 640)
    assert reduced.shape[0] > reduced.shape[1] and reduced.shape[0] >= 64
    _, transform = letterbox(reduced, 64, 64, (0, 0, 0), source_size=full)
    _, plain = letterbox(decode(data), 64, 64, (0, 0, 0))
    assert transform == plain


@pytest.mark.parametrize(
    ("fmt", "size"), [("PNG", (640, 480)), ("JPEG", (200, 150)), ("WEBP", (640, 480))]
)
def test_no_draft_where_it_cannot_help_is_bit_exact(fmt: str, size: tuple[int, int]) -> None:
    # Only JPEG decodes reduced, and only at 1/2 or less of the stored size.
    data = encode(gradient_photo(*size), fmt, **({"quality": 90} if fmt != "PNG" else {}))
    reduced, full = decode_to_fit(data, 160, 160, **LIMITS)
    assert full == size
    np.testing.assert_array_equal(reduced, decode(data))


def test_draft_keeps_the_size_limits() -> None:
    data = encode(gradient_photo(640, 480), "JPEG", quality=90)
    with pytest.raises(PayloadTooLarge):
        decode_to_fit(data, 160, 160, max_pixels=100_000, max_side=16_384)


@pytest.mark.parametrize(
    ("height", "width", "scale", "pad_x", "pad_y"),
    [
        (100, 100, 1.12, -8, 0),  # a square face crop into the 112x96 face input: sides cut
        (96, 160, 1.1666666666666667, -45, 0),  # a wide photo: its sides cut
        (300, 100, 0.96, 0, -88),  # a tall one: top and bottom cut
        (112, 96, 1.0, 0, 0),  # already the input's size: untouched
    ],
)
def test_centre_crop_geometry(
    height: int, width: int, scale: float, pad_x: int, pad_y: int
) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    cropped, transform = centre_crop(image, 112, 96)
    assert cropped.shape == (112, 96, 3) and cropped.flags.c_contiguous
    assert transform == LetterboxTransform(scale, pad_x, pad_y, width, height)
    # As resizing the whole image and cutting the window out (only the window is resampled:
    # the same sample positions, a rounding step apart at most).
    resized = (max(96, round(width * scale)), max(112, round(height * scale)))
    full = np.asarray(Image.fromarray(image).resize(resized, Image.Resampling.BILINEAR))
    window = full[-pad_y : -pad_y + 112, -pad_x : -pad_x + 96].astype(int)
    assert np.abs(cropped.astype(int) - window).max() <= 1
    # The input's corners map inside the image: nothing in the input is padding.
    corners = transform.to_image([[0.0, 0.0], [96.0, 112.0]])
    assert corners.min() >= 0 and corners[1, 0] <= width and corners[1, 1] <= height


def test_fit_image_picks_the_configured_resize() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    boxed, _ = fit_image(image, 112, 96, (128, 128, 128), resize="letterbox")
    assert (boxed[:8] == 128).all()  # pad bars above and below the square
    cropped, _ = fit_image(image, 112, 96, (128, 128, 128), resize="crop")
    assert (cropped == 200).all()  # no pad anywhere


def test_draft_with_crop_keeps_enough_pixels_to_fill_the_input() -> None:
    data = encode(gradient_photo(800, 400), "JPEG", quality=90)
    reduced, full = decode_to_fit(data, 112, 96, resize="crop", **LIMITS)
    # Crop needs the 400-pixel side at 112 (scale 0.28): 1/2 is the most libjpeg may take.
    assert full == (800, 400) and reduced.shape[:2] == (200, 400)
    drafted, transform = centre_crop(reduced, 112, 96, source_size=full)
    plain, plain_transform = centre_crop(decode(data), 112, 96)
    assert transform == plain_transform
    assert np.abs(drafted.astype(int) - plain.astype(int)).mean() < 3.0
    letterboxed, _ = decode_to_fit(data, 112, 96, **LIMITS)
    assert letterboxed.shape[:2] == (50, 100)  # letterbox needs less: 1/8


def test_centre_crop_of_a_thin_strip_resamples_only_the_window() -> None:
    """A 1 x 16384 upload (150 bytes as a PNG) must not become a 96 x 1.5-million-pixel
    intermediate (1.4 GiB) on its way to a 112 x 96 input."""
    strip = np.full((1, 16384, 3), 90, np.uint8)
    tracemalloc.start()
    try:
        cropped, transform = centre_crop(strip, 112, 96)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cropped.shape == (112, 96, 3) and (cropped == 90).all()
    assert transform.scale == 112.0 and peak < 10 * 2**20


# --- JPEG through libjpeg-turbo's TurboJPEG API (simplejpeg) ---------------------------


def turbo_and_pillow(monkeypatch: pytest.MonkeyPatch, decode_fn, data: bytes):  # type: ignore[no-untyped-def]
    """``decode_fn(data)`` through simplejpeg (counted: it must have decoded) and through
    Pillow alone (no JPEG mode handed to simplejpeg)."""
    returned = []
    real = imaging.decode_jpeg_rgb

    def spied(*args, **kwargs):  # type: ignore[no-untyped-def]
        returned.append(real(*args, **kwargs))
        return returned[-1]

    with monkeypatch.context() as patched:
        patched.setattr(imaging, "decode_jpeg_rgb", spied)
        turbo = decode_fn(data)
    assert returned and all(r is not None for r in returned), "simplejpeg's pixels unused"
    with monkeypatch.context() as patched:
        patched.setattr(imaging, "TURBO_JPEG_MODES", frozenset())
        pillow = decode_fn(data)
    return turbo, pillow


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("size", "params"),
    [
        ((641, 479), {"quality": 90}),  # odd sides, 4:2:0
        ((640, 480), {"quality": 90, "progressive": True}),
        ((320, 200), {"quality": 95, "subsampling": 0}),  # 4:4:4
        ((333, 251), {"quality": 80, "subsampling": 1}),  # 4:2:2
        ((640, 480), {"quality": 90, "mpo": True}),
    ],
)
def test_turbo_jpeg_gives_pillows_pixels_in_full_and_reduced(
    monkeypatch: pytest.MonkeyPatch, orientation: int, size: tuple[int, int], params: dict
) -> None:
    """Bit for bit, for every EXIF orientation, whole (decode_image) and at libjpeg's
    reduced scales (decode_to_fit into 160 x 160 and 64 x 64); a multi-picture (MPO) file
    by its first picture."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    if params.pop("mpo", False):
        second = Image.fromarray(gradient_photo(size[0] // 2, size[1] // 2))
        data = encode(
            gradient_photo(*size), "MPO", exif=exif, save_all=True, append_images=[second], **params
        )
        assert Image.open(io.BytesIO(data)).format == "MPO"
    else:
        data = encode(gradient_photo(*size), "JPEG", exif=exif, **params)
    for decode_fn in (
        decode,
        lambda d: decode_to_fit(d, 160, 160, **LIMITS),
        lambda d: decode_to_fit(d, 64, 64, **LIMITS),
        lambda d: decode_to_fit(d, 64, 64, **LIMITS, resize="crop"),
    ):
        turbo, pillow = turbo_and_pillow(monkeypatch, decode_fn, data)
        if isinstance(turbo, tuple):
            assert turbo[1] == pillow[1]  # the full image's oriented size
            turbo, pillow = turbo[0], pillow[0]
        assert turbo.flags.c_contiguous and turbo.dtype == np.uint8
        np.testing.assert_array_equal(turbo, pillow)


def test_turbo_jpeg_decodes_greyscale_as_pillow_does(monkeypatch: pytest.MonkeyPatch) -> None:
    grey = Image.fromarray(gradient_photo(200, 120)).convert("L")
    turbo, pillow = turbo_and_pillow(monkeypatch, decode, encode(grey, "JPEG", quality=90))
    assert turbo.shape == (120, 200, 3)
    np.testing.assert_array_equal(turbo, pillow)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_short_with_an_end_marker_is_invalid(progressive: bool) -> None:
    """libjpeg fills the missing part grey and only warns; Pillow decoded it whole."""
    data = encode(gradient_photo(640, 480), "JPEG", quality=90, progressive=progressive)
    cut = data[: len(data) * 6 // 10] + b"\xff\xd9"
    with pytest.raises(InvalidImage, match="ends before the picture does"):
        decode(cut)
    with pytest.raises(InvalidImage, match="ends before the picture does"):
        decode_to_fit(cut, 160, 160, **LIMITS)


def test_stray_bytes_before_the_end_marker_still_decode_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libjpeg's other warnings leave the picture whole: simplejpeg decodes it once more
    without stopping at them (not Pillow on top), to the pixels of the clean file."""
    data = encode(gradient_photo(640, 480), "JPEG", quality=90, progressive=True)
    stray = data[:-2] + b"\x00\x11\x22\xff\xd9"
    turbo, pillow = turbo_and_pillow(monkeypatch, decode, stray)
    np.testing.assert_array_equal(turbo, decode(data))
    np.testing.assert_array_equal(turbo, pillow)


@pytest.mark.parametrize("progressive", [False, True])
def test_stray_bytes_in_the_header_decode_whole_and_do_not_hide_a_cut(
    monkeypatch: pytest.MonkeyPatch, progressive: bool
) -> None:
    """libjpeg skips stray bytes between header segments with a warning, and with them
    TurboJPEG gives up even without stopping at warnings: decoded without them, the picture
    is the clean file's (simplejpeg, not Pillow), and a cut after them is still found."""
    data = encode(gradient_photo(640, 480), "JPEG", quality=90, progressive=progressive)
    end_of_app0 = 4 + int.from_bytes(data[4:6], "big")
    stray = data[:end_of_app0] + b"\x00\x11\x22" + data[end_of_app0:]
    assert imaging.without_header_junk(data) is None
    assert imaging.without_header_junk(stray) == data
    turbo, pillow = turbo_and_pillow(monkeypatch, decode, stray)
    np.testing.assert_array_equal(turbo, decode(data))
    np.testing.assert_array_equal(turbo, pillow)
    cut = stray[: len(stray) * 6 // 10] + b"\xff\xd9"
    with pytest.raises(InvalidImage, match="ends before the picture does"):
        decode(cut)
    with pytest.raises(InvalidImage, match="ends before the picture does"):
        decode_to_fit(cut, 160, 160, **LIMITS)


def tiff_orientation(kind: int, value: bytes) -> bytes:
    """A little-endian EXIF block whose one entry is the orientation, of TIFF type ``kind``
    (``value``: its bytes, at most 4, or stored after the IFD)."""
    header = b"II*\x00" + struct.pack("<I", 8)
    if len(value) <= 4:
        entry = struct.pack("<HHI", 0x0112, kind, 1) + value.ljust(4, b"\x00")
        return header + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    entry = struct.pack("<HHII", 0x0112, kind, 1, 8 + 2 + 12 + 4)
    return header + struct.pack("<H", 1) + entry + struct.pack("<I", 0) + value


ODD_ORIENTATIONS = {
    "short": tiff_orientation(3, struct.pack("<H", 6)),
    "long": tiff_orientation(4, struct.pack("<I", 6)),
    "rational": tiff_orientation(5, struct.pack("<II", 6, 1)),
    "float": tiff_orientation(11, struct.pack("<f", 6.0)),
    "double": tiff_orientation(12, struct.pack("<d", 6.0)),
    "ascii": tiff_orientation(2, b"6\x00"),
    "damaged": b"II*\x00" + struct.pack("<I", 9999),
}


@pytest.mark.parametrize("exif", ODD_ORIENTATIONS.values(), ids=ODD_ORIENTATIONS.keys())
def test_an_orientation_of_any_type_turns_a_jpeg_as_pillow_does(
    monkeypatch: pytest.MonkeyPatch, exif: bytes
) -> None:
    """6 as a rational or a float turns the picture like a SHORT 6 (exif_transpose matches
    by equality); what Pillow ignores, the turbo path ignores too."""
    data = encode(gradient_photo(40, 24), "JPEG", quality=90, exif=exif)
    turbo, pillow = turbo_and_pillow(monkeypatch, decode, data)
    np.testing.assert_array_equal(turbo, pillow)


@pytest.mark.parametrize("kind", ["rational", "float", "double"])
def test_the_full_size_of_a_png_turned_by_an_odd_orientation_is_the_turned_one(kind: str) -> None:
    data = encode(gradient_photo(40, 24), "PNG", exif=ODD_ORIENTATIONS[kind])
    rgb, full = decode_to_fit(data, 640, 640, **LIMITS)
    assert rgb.shape[:2] == (40, 24) and full == (24, 40)


def test_cmyk_jpeg_is_left_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a CMYK JPEG reached simplejpeg")

    monkeypatch.setattr(imaging.simplejpeg, "decode_jpeg", refuse)
    data = encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    assert decode(data).shape == (8, 16, 3)
