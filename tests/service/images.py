"""Encoders for test uploads."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from PIL import Image


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


def repeated_scans(width: int, height: int, scans: int) -> bytes:
    """A flat grey progressive JPEG of ``width x height`` with exactly ``scans`` scans: the
    last of libjpeg's scans repeated (each repeat is a few bytes; decoding pays for all)."""
    data = encode(Image.new("L", (width, height), 128), "JPEG", progressive=True)
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
    TIFFs, so the tests of foreign streams build the file by hand. ``pointers``: each
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
