"""Crafted uploads that cost a decoder far more than their size, and what the service's
guards make of them: ``python -m benchmarks.bombs``.

    python -m benchmarks.bombs [--small]

For each crafted file: its size, the seconds Pillow (with libjpeg and libtiff) takes to
open and load it when nothing stands in front of it, and what ``service.imaging
.decode_image`` with the default limits answers instead (the error's status and how long
it took to say so). The same builders make the test uploads of ``tests/service``.
``--small`` builds each file at a fraction of its size (seconds in all; the tests use it).
Figures: the README's "Hardening" table.
"""

from __future__ import annotations

import argparse
import io
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

from PIL import Image

from service.errors import ServiceError
from service.imaging import configure_pillow, decode_image
from service.settings import Settings


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def repeated_scans(width: int, height: int, scans: int) -> bytes:
    """A flat grey progressive JPEG of ``width x height`` with exactly ``scans`` scans: the
    last of libjpeg's scans repeated (each repeat is a few bytes; decoding pays for all)."""
    data = _encode(Image.new("L", (width, height), 128), "JPEG", progressive=True)
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    written = data.count(b"\xff\xda")
    if scans < written:
        raise ValueError(f"libjpeg already writes {written} scans")
    extra = scans - written
    return data[:end] + data[last_scan:end] * extra + data[end:]


def jpeg_tiff(
    streams: list[bytes],
    width: int,
    height: int,
    *,
    rows_per_strip: int | None = None,
    tile: tuple[int, int] | None = None,
    old_style: bool = False,
    pointers: list[tuple[int, int]] | None = None,
) -> bytes:
    """A little-endian grey TIFF whose strips (or ``tile``-sized tiles) are the complete
    JPEG ``streams``: compression 7 (TIFF Technical Note 2), or with ``old_style``
    compression 6 with its one stream also named as the whole frame's
    (JPEGInterchangeFormat), as old writers did. Pillow writes only libtiff's own JPEG
    TIFFs, so files of foreign streams are built by hand. ``pointers``: each
    strip's (offset into the concatenated streams, byte count) instead of one per stream
    in turn."""
    header_size = 8
    offsets, position = [], 0
    for stream in streams:
        offsets.append(position)
        position += len(stream)
    counts = [len(s) for s in streams]
    if pointers is not None:
        offsets, counts = [p[0] for p in pointers], [p[1] for p in pointers]
    offset_tag, count_tag = (324, 325) if tile else (273, 279)
    entries: dict[int, tuple[int, list[int]]] = {  # tag: (TIFF type, values)
        256: (4, [width]),
        257: (4, [height]),
        258: (3, [8]),
        259: (3, [6 if old_style else 7]),
        262: (3, [1]),  # BlackIsZero
        277: (3, [1]),
        offset_tag: (4, offsets),
        count_tag: (4, counts),
    }
    if tile:
        entries[322], entries[323] = (4, [tile[0]]), (4, [tile[1]])
    else:
        entries[278] = (4, [rows_per_strip or height])
    if old_style:
        entries[513], entries[514] = (4, [0]), (4, [len(streams[0])])
    ifd_size = 2 + 12 * len(entries) + 4
    arrays = [tag for tag, (_, values) in entries.items() if len(values) > 1]
    arrays_size = 4 * sum(len(entries[tag][1]) for tag in arrays)
    data_start = header_size + ifd_size + arrays_size
    for tag in (offset_tag, 513):
        if tag in entries:
            kind, values = entries[tag]
            entries[tag] = (kind, [data_start + v for v in values])
    ifd = struct.pack("<H", len(entries))
    extra, extra_at = b"", header_size + ifd_size
    for tag in sorted(entries):
        kind, values = entries[tag]
        if len(values) > 1:
            ifd += struct.pack("<HHII", tag, kind, len(values), extra_at + len(extra))
            extra += struct.pack(f"<{len(values)}I", *values)
        elif kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, 1, values[0], 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, 1, values[0])
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", header_size) + ifd + extra + b"".join(streams)


EMPTY_APP0 = b"\xff\xe0\x00\x02"  # an APP0 marker segment with no payload


def scans_behind_stray_byte(side: int, repeats: int, stray: bytes = b"\x00") -> bytes:
    """A grey progressive JPEG whose last scan is repeated ``repeats`` times behind an empty
    APP0 segment and the ``stray`` bytes, which libjpeg skips with a warning."""
    data = _encode(Image.new("L", (side, side), 128), "JPEG", progressive=True)
    after = data.find(b"\xff\xc4", data.find(b"\xff\xda"))  # a DHT between two scans
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return (
        data[:after]
        + EMPTY_APP0
        + stray
        + data[after:end]
        + data[last_scan:end] * repeats
        + data[end:]
    )


def jpeg_with_empty_segments(segments: int) -> bytes:
    """A 16x16 JPEG with ``segments`` empty APP0 segments before its own."""
    data = _encode(Image.new("L", (16, 16), 128), "JPEG")
    return data[:2] + EMPTY_APP0 * segments + data[2:]


def jpeg_with_stray_bytes(count: int, stray: bytes = b"\xff") -> bytes:
    """A 16x16 JPEG with ``count`` ``stray`` bytes (0xFF: fill bytes) after its APP0 segment."""
    data = _encode(Image.new("L", (16, 16), 128), "JPEG")
    after_app0 = 4 + int.from_bytes(data[4:6], "big")
    return data[:after_app0] + stray * count + data[after_app0:]


def png_with_empty_chunks(count: int) -> bytes:
    """A 16x16 PNG with ``count`` empty private chunks after IHDR."""
    data = _encode(Image.new("L", (16, 16), 128), "PNG")
    chunk = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    end_of_ihdr = 8 + 25  # signature, IHDR
    return data[:end_of_ihdr] + chunk * count + data[end_of_ihdr:]


def gif_with_comments(count: int) -> bytes:
    """A 16x16 GIF with ``count`` one-byte comment extensions before its image."""
    data = _encode(Image.new("L", (16, 16), 128), "GIF")
    image_at = data.index(b"\x2c")
    return data[:image_at] + b"\x21\xfe\x01x\x00" * count + data[image_at:]


# (description, builder, its arguments at full size, with --small)
CASES: list[tuple[str, Callable[..., bytes], tuple[int, ...], tuple[int, ...]]] = [
    (
        "progressive JPEG, last scan repeated to {2} scans ({0}x{1})",
        repeated_scans,
        (2000, 2000, 1000),
        (256, 256, 1000),
    ),
    (
        "progressive JPEG, last scan repeated {1} times behind an empty APP0 segment and a "
        "stray byte ({0}x{0})",
        scans_behind_stray_byte,
        (3000, 500),
        (256, 500),
    ),
    (
        "TIFF of one 99-scan JPEG strip ({0}x{0})",
        lambda side: jpeg_tiff([repeated_scans(side, side, 99)], side, side),
        (6000,),
        (512,),
    ),
    ("JPEG with {0} empty APP0 segments", jpeg_with_empty_segments, (2_000_000,), (50_000,)),
    ("JPEG with {0} fill bytes", jpeg_with_stray_bytes, (8_000_000,), (200_000,)),
    ("PNG with {0} empty chunks", png_with_empty_chunks, (600_000,), (50_000,)),
    ("GIF with {0} comments", gif_with_comments, (1_000_000,), (50_000,)),
]


def measure(data: bytes, settings: Settings) -> dict[str, Any]:
    """Pillow alone (open + load) against ``decode_image`` with ``settings``' limits."""
    started = time.perf_counter()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    pillow_s = time.perf_counter() - started
    started = time.perf_counter()
    try:
        decode_image(data, max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)
        status, detail = 200, ""
    except ServiceError as exc:
        status, detail = exc.status, exc.detail
    return {
        "bytes": len(data),
        "pillow_s": pillow_s,
        "service_status": status,
        "service_ms": 1000 * (time.perf_counter() - started),
        "detail": detail,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small versions of each file")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_pillow(settings.max_image_pixels)
    rows = []
    for description, build, full, small in CASES:
        arguments = small if args.small else full
        rows.append({"case": description.format(*arguments)} | measure(build(*arguments), settings))
    print("| crafted file | bytes | Pillow open + load, s | the service | answered in ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['bytes']} | {row['pillow_s']:.2f} | "
            f"{row['service_status']}: {row['detail']} | {row['service_ms']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
