"""Write the hostile / odd upload corpus into ``tests/data/bad/`` (deterministic).

``python -m tests.data.make_bad_corpus [--out DIR]`` writes every file and
``manifest.json``, which documents, per file, the multipart field it is sent as
(``image``: every image field of an endpoint; ``mask``: the mask field of endpoints that
have one), the declared content type, the status every such endpoint must answer and why.
Request-shaped cases (wrong or missing field, empty multipart, huge body) are in the
manifest's ``requests`` list; ``tests/service/test_bad_corpus.py`` builds and sends them.

Nothing is downloaded: every file is made here with Pillow, numpy and hand-written bytes,
and the same code always writes the same bytes (no clocks, fixed seeds).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CORPUS_DIR = Path(__file__).resolve().parent / "bad"
MANIFEST = "manifest.json"
SEED = 7
# Side of the ordinary test pictures: big enough for every model's letterbox to resample.
SIDE = 96


@dataclass(frozen=True)
class Entry:
    """One corpus file and what the service must answer for it."""

    file: str
    field: str  # "image" or "mask"
    content_type: str
    status: int
    why: str
    # For 200s on endpoints that report the image size: (width, height) after EXIF.
    image_size: tuple[int, int] | None = None
    problem_type: str | None = None  # suffix of the problem+json `type`, when fixed


@dataclass(frozen=True)
class RequestCase:
    """A malformed request rather than a malformed file; built by the test."""

    name: str
    status: int
    why: str
    extra: dict[str, Any] = field(default_factory=dict)


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _picture(width: int = SIDE, height: int = SIDE) -> Image.Image:
    """A deterministic RGB picture: a gradient with a bright square."""
    ys, xs = np.mgrid[0:height, 0:width]
    array = np.stack(
        [xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1), np.full_like(xs, 64)],
        axis=-1,
    ).astype(np.uint8)
    array[height // 4 : height // 2, width // 4 : width // 2] = 255
    return Image.fromarray(array, "RGB")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB and carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _png_deflate_bomb(side: int) -> bytes:
    """A real, complete grey PNG of ``side x side`` zeros: tiny on disk, huge decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + samples
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _png_bad_crc() -> bytes:
    good = _save(_picture(), "PNG")
    # The IDAT chunk's CRC is its last four bytes before IEND's 12: flip one bit in it.
    at = len(good) - 12 - 1
    return good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1 :]


def _png_text_bomb() -> bytes:
    """A small PNG with a zTXt chunk that inflates to 16 MiB of text (Pillow's cap: 1 MiB)."""
    good = _save(_picture(16, 16), "PNG")
    compressor = zlib.compressobj(9)
    text = b"".join(compressor.compress(b"A" * (1 << 20)) for _ in range(16)) + compressor.flush()
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + text)
    return good[:33] + ztxt + good[33:]  # right after the 33-byte signature + IHDR


def _png_zero_width() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _gif_huge_screen() -> bytes:
    """A GIF whose logical screen is 65535 x 65535 around a 1 x 1 frame."""
    tiny = _save(Image.new("P", (1, 1)), "GIF")
    return tiny[:6] + struct.pack("<HH", 65535, 65535) + tiny[10:]


def _tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF that declares ``width x height`` grey and one 1-byte strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 1),  # StripByteCounts
    ]
    ifd_offset = 16
    header = b"II*\x00" + struct.pack("<I", ifd_offset) + b"\x00" * 8
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return header + ifd + struct.pack("<I", 0)


def _bmp_huge_header() -> bytes:
    """A BMP whose info header claims 50000 x 50000 at 24 bits with 54 bytes of file."""
    info = struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


def _animated_gif() -> bytes:
    frames = [Image.new("P", (SIDE, SIDE), color) for color in (1, 2, 3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _multiframe_tiff() -> bytes:
    frames = [_picture(), _picture().rotate(90), Image.new("RGB", (SIDE, SIDE), "red")]
    return _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def _exif_rotated(width: int = 120, height: int = 80) -> bytes:
    """A JPEG stored landscape ``width x height`` with EXIF orientation 6 (rotate 90 CW)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(_picture(width, height), "JPEG", quality=90, exif=exif.tobytes())


def _exif_bad_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 9  # not one of 1..8
    return _save(_picture(), "JPEG", quality=90, exif=exif.tobytes())


def _grey16() -> bytes:
    ramp = (np.arange(SIDE * SIDE, dtype=np.uint32).reshape(SIDE, SIDE) * 7) % 65536
    return _save(Image.fromarray(ramp.astype(np.uint16)), "PNG")


def _palette_transparency() -> bytes:
    image = Image.new("P", (SIDE, SIDE), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (SIDE // 4, SIDE // 4, SIDE // 2, SIDE // 2))
    return _save(image, "PNG", transparency=0)


def _float_tiff_with_nan() -> bytes:
    values = np.linspace(0.0, 1.0, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)
    values[0, :8] = np.nan
    values[1, :8] = np.inf
    values[2, :8] = -np.inf
    return _save(Image.fromarray(values, "F"), "TIFF")


def _eps() -> bytes:
    # Pillow hands EPS to Ghostscript; the service must never decode it (not a served format).
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
        b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )


def _ico() -> bytes:
    return _save(_picture(32, 32), "ICO")


def _mask(width: int, height: int) -> Image.Image:
    array = np.zeros((height, width), np.uint8)
    array[height // 4 : height // 2, width // 4 : width // 2] = 255
    return Image.fromarray(array, "L")


def _picture_jpeg(**params: Any) -> bytes:
    return _save(_picture(), "JPEG", quality=85, **params)


def _with_header_junk(jpeg: bytes) -> bytes:
    """``jpeg`` with three stray bytes after its first marker segment (SOI, then APP0)."""
    end = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:end] + b"\x00\x11\x22" + jpeg[end:]


JPEG, PNG, GIF, TIFF = "image/jpeg", "image/png", "image/gif", "image/tiff"
OCTET = "application/octet-stream"

# (entry, maker) for every file; the makers take no arguments and are deterministic.
FILES: list[tuple[Entry, Callable[[], bytes]]] = [
    (Entry("zero_bytes.png", "image", PNG, 400, "empty upload", problem_type="invalid-image"),
     lambda: b""),
    (Entry("text.txt", "image", "text/plain", 415, "declared text/plain"),
     lambda: b"hello, this is not an image\n" * 20),
    (Entry("text_as_octet.bin", "image", OCTET, 400, "text sniffed as no image"),
     lambda: b"hello, this is not an image\n" * 20),
    (Entry("page.html", "image", "text/html", 415, "declared text/html"),
     lambda: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"),
    (Entry("html_claiming_png.png", "image", PNG, 400, "HTML bytes sent as image/png"),
     lambda: b"<!doctype html><html><body>not a png</body></html>"),
    (Entry("svg.svg", "image", "image/svg+xml", 400, "SVG is not a raster format served"),
     lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
    (Entry("random_bytes.bin", "image", OCTET, 400, "4 KiB of noise"),
     lambda: _rng().integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    (Entry("truncated.jpg", "image", JPEG, 400, "JPEG cut at half its bytes"),
     lambda: _picture_jpeg()[: len(_picture_jpeg()) // 2]),
    (Entry("truncated_with_end_marker.jpg", "image", JPEG, 400,
           "JPEG cut at half its bytes, end-of-image marker appended (libjpeg would fill the "
           "rest grey and decode on)"),
     lambda: _picture_jpeg()[: len(_picture_jpeg()) // 2] + b"\xff\xd9"),
    (Entry("stray_bytes_before_end_marker.jpg", "image", JPEG, 200,
           "three stray bytes before the end-of-image marker: libjpeg warns, the picture is "
           "whole", image_size=(SIDE, SIDE)),
     lambda: _picture_jpeg()[:-2] + b"\x00\x11\x22\xff\xd9"),
    (Entry("stray_bytes_in_header.jpg", "image", JPEG, 200,
           "three stray bytes after the first header segment: libjpeg warns and skips them, "
           "the picture is whole", image_size=(SIDE, SIDE)),
     lambda: _with_header_junk(_picture_jpeg())),
    (Entry("stray_bytes_in_header_then_truncated.jpg", "image", JPEG, 400,
           "stray bytes in the header, then cut at half its bytes with an end marker appended "
           "(the first warning used to hide the second)"),
     lambda: _with_header_junk(_picture_jpeg())[: len(_picture_jpeg()) // 2] + b"\xff\xd9"),
    (Entry("truncated.png", "image", PNG, 400, "PNG cut inside IDAT"),
     lambda: _save(_picture(), "PNG")[:200]),
    (Entry("jpeg_header_then_noise.jpg", "image", JPEG, 400, "SOI marker then noise"),
     lambda: b"\xff\xd8\xff\xe0" + _rng().integers(0, 256, 2048, dtype=np.uint8).tobytes()),
    (Entry("png_bad_crc.png", "image", PNG, 400, "one bit flipped in the IDAT CRC"), _png_bad_crc),
    (Entry("png_zero_width.png", "image", PNG, 400, "IHDR declares width 0"), _png_zero_width),
    (Entry("png_text_bomb.png", "image", PNG, 400,
           "zTXt chunk inflating to 16 MiB (Pillow's MAX_TEXT_CHUNK refuses it)"),
     _png_text_bomb),
    (Entry("bomb_header_100000x100000.png", "image", PNG, 413,
           "header declares 10^10 pixels", problem_type="payload-too-large"),
     lambda: _png_header_only(100_000, 100_000)),
    (Entry("bomb_deflate_7000x7000.png", "image", PNG, 413,
           "a complete 49 MP PNG of zeros, 50 KB compressed"),
     lambda: _png_deflate_bomb(7000)),
    (Entry("strip_1x20000.png", "image", PNG, 413, "20000 px side, few pixels"),
     lambda: _save(Image.new("L", (1, 20_000), 128), "PNG")),
    (Entry("gif_screen_65535.gif", "image", GIF, 413, "GIF logical screen 65535x65535"),
     _gif_huge_screen),
    (Entry("tiff_header_100000x100000.tif", "image", TIFF, 413, "TIFF declares 10^10 pixels"),
     lambda: _tiff_header_only(100_000, 100_000)),
    (Entry("bmp_header_50000x50000.bmp", "image", "image/bmp", 413,
           "BMP declares 2.5e9 pixels in 54 bytes"), _bmp_huge_header),
    (Entry("eps.eps", "image", OCTET, 400, "EPS (Ghostscript) is not a served format"), _eps),
    (Entry("icon.ico", "image", "image/x-icon", 400, "ICO is not a served format"), _ico),
    (Entry("one_pixel.png", "image", PNG, 200, "1x1 is odd but valid", image_size=(1, 1)),
     lambda: _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
    (Entry("one_pixel.jpg", "image", JPEG, 200, "1x1 JPEG", image_size=(1, 1)),
     lambda: _save(Image.new("RGB", (1, 1), (200, 10, 10)), "JPEG")),
    (Entry("thin_3x900.png", "image", PNG, 200, "300:1 aspect", image_size=(3, 900)),
     lambda: _save(_picture(3, 900), "PNG")),
    (Entry("animated.gif", "image", GIF, 200, "3 frames; the first is used",
           image_size=(SIDE, SIDE)), _animated_gif),
    (Entry("multiframe.tif", "image", TIFF, 200, "3 pages; the first is used",
           image_size=(SIDE, SIDE)), _multiframe_tiff),
    (Entry("cmyk.jpg", "image", JPEG, 200, "CMYK JPEG", image_size=(SIDE, SIDE)),
     lambda: _save(_picture().convert("CMYK"), "JPEG", quality=90)),
    (Entry("grey16.png", "image", PNG, 200, "16-bit greyscale", image_size=(SIDE, SIDE)),
     _grey16),
    (Entry("palette_transparency.png", "image", PNG, 200, "palette with a transparent index",
           image_size=(SIDE, SIDE)), _palette_transparency),
    (Entry("rgba.png", "image", PNG, 200, "half-transparent RGBA", image_size=(SIDE, SIDE)),
     lambda: _save(_picture().convert("RGBA"), "PNG")),
    (Entry("bilevel.bmp", "image", "image/bmp", 200, "1-bit BMP", image_size=(SIDE, SIDE)),
     lambda: _save(_picture().convert("1"), "BMP")),
    (Entry("float_nan.tif", "image", TIFF, 200, "32-bit float TIFF with NaN and inf",
           image_size=(SIDE, SIDE)), _float_tiff_with_nan),
    (Entry("exif_rotated.jpg", "image", JPEG, 200, "stored 120x80, EXIF orientation 6",
           image_size=(80, 120)), _exif_rotated),
    (Entry("exif_orientation_9.jpg", "image", JPEG, 200, "EXIF orientation outside 1..8",
           image_size=(SIDE, SIDE)), _exif_bad_orientation),
    (Entry("progressive.jpg", "image", OCTET, 200, "progressive JPEG sent as octet-stream",
           image_size=(SIDE, SIDE)), lambda: _picture_jpeg(progressive=True)),
    (Entry("lossless.webp", "image", "image/webp", 200, "WebP", image_size=(SIDE, SIDE)),
     lambda: _save(_picture(), "WEBP", lossless=True)),
    # Masks: sent as `mask` with a good image (endpoints that take a mask only).
    (Entry("mask_other_aspect.png", "mask", PNG, 200, "10x300 mask over a square image"),
     lambda: _save(_mask(10, 300), "PNG")),
    (Entry("mask_larger.png", "mask", PNG, 200, "mask 4x the image's size"),
     lambda: _save(_mask(SIDE * 4, SIDE * 4), "PNG")),
    (Entry("mask_one_pixel.png", "mask", PNG, 200, "1x1 mask"),
     lambda: _save(Image.new("L", (1, 1), 255), "PNG")),
    (Entry("mask_rgba.png", "mask", PNG, 200, "RGBA mask (alpha = no attention)"),
     lambda: _save(_picture().convert("RGBA"), "PNG")),
    (Entry("mask_grey16.png", "mask", PNG, 200, "16-bit mask"), _grey16),
    (Entry("mask_not_an_image.png", "mask", PNG, 400, "text sent as image/png",
           problem_type="invalid-mask"), lambda: b"this is a mask, honest\n" * 10),
    (Entry("mask_zero_bytes.png", "mask", PNG, 400, "empty mask",
           problem_type="invalid-mask"), lambda: b""),
    (Entry("mask_text.txt", "mask", "text/plain", 415, "mask declared text/plain"),
     lambda: b"0 1 1 0\n" * 10),
    (Entry("mask_bomb_header.png", "mask", PNG, 413, "mask declares 10^10 pixels"),
     lambda: _png_header_only(100_000, 100_000)),
    (Entry("mask_truncated.png", "mask", PNG, 400, "mask PNG cut inside IDAT",
           problem_type="invalid-mask"), lambda: _save(_mask(SIDE, SIDE), "PNG")[:60]),
]  # fmt: skip

REQUESTS: list[RequestCase] = [
    RequestCase("wrong_field_name", 422, "each file sent under the name 'file' instead"),
    RequestCase("missing_field", 422, "one file field left out (each in turn)"),
    RequestCase("empty_multipart", 422, "a multipart body with no parts at all"),
    RequestCase(
        "not_multipart",
        415,
        "a JSON body, a bare image, a urlencoded one (curl --data-binary) or one with no "
        "content type, instead of multipart/form-data",
    ),
    RequestCase("field_as_text", 422, "the image field as a plain form value, not a file"),
    RequestCase("repeated_field", 422, "a file field sent twice (each in turn): which is meant?"),
    RequestCase(
        "huge_multipart_declared",
        413,
        "Content-Length over the limit: refused before reading the body",
        {"bytes_over_limit": 1},
    ),
    RequestCase(
        "huge_multipart_streamed",
        413,
        "chunked body without Content-Length, cut off while streaming",
        {"bytes_over_limit": 1 << 20},
    ),
]


def build(out: Path = CORPUS_DIR) -> dict[str, Any]:
    """Write every corpus file and the manifest into ``out``; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    names = [entry.file for entry, _ in FILES]
    if len(set(names)) != len(names):
        raise ValueError("corpus file names must be unique")
    for entry, make in FILES:
        (out / entry.file).write_bytes(make())
    manifest = {
        "generator": "python -m tests.data.make_bad_corpus",
        "files": [asdict(entry) for entry, _ in FILES],
        "requests": [asdict(case) for case in REQUESTS],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CORPUS_DIR)
    args = parser.parse_args()
    manifest = build(args.out)
    print(f"wrote {len(manifest['files'])} files and {MANIFEST} to {args.out}")


if __name__ == "__main__":
    main()
