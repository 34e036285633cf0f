"""Upload decoding and model-input preparation.

Pixel spaces: *image pixels* are those of the upload as the caller sees it (after EXIF
orientation, origin top-left); *model-input pixels* are those of the letterboxed
``height x width`` tensor the graph receives.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

T = TypeVar("T")

# Transparent pixels are composited over white: sign and logo cut-outs are drawn for light
# pages, and white is what a browser shows the caller behind them.
ALPHA_BACKGROUND = (255, 255, 255)
# Declared content types that may hold an image of any format; anything else is rejected.
SNIFFED_CONTENT_TYPES = frozenset({"", "application/octet-stream"})
# Largest value of a 16-bit sample: deeper integer images are scaled by 1/65535 to 0..1.
UINT16_MAX = 65535
# The only Pillow plugins an upload may be opened with. Pillow otherwise tries every format
# it knows, EPS among them, which it hands to Ghostscript: a large attack surface for no
# photo anyone sends. (The JPEG opener also yields MPO, multi-picture phone JPEGs.)
SERVED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# The same list for people: error messages and the OpenAPI descriptions of upload fields.
SERVED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF, TIFF"
# How an image becomes the model input (config.json preprocess.resize): fitted whole with
# pad bars (letterbox) or filling the input with the excess cut off (crop).
ResizeMode = Literal["letterbox", "crop"]
# How letterbox bars are filled (config.json preprocess.pad): with pad_value, or by
# repeating the image's edge rows and columns, which a network trained on square images
# takes better than a uniform bar whose edge reads like an outline (the gender model,
# version 6 card).
PadMode = Literal["constant", "edge"]
# EXIF orientations (5-8) that swap width and height when applied.
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
EXIF_ORIENTATION_TAG = 0x0112
# The valid orientations, looked up by equality (so 6.0 and a rational 6/1 are 6).
EXIF_ORIENTATIONS: dict[object, int] = {value: value for value in range(1, 9)}
# Formats whose Pillow plugin applies the EXIF orientation itself: TIFF reports the oriented
# size on open and transposes on load (Pillow 13), so exif_transpose finds nothing to do and
# the size must not be swapped again (tests/service/test_imaging.py pins this).
SELF_ORIENTING_FORMATS = frozenset({"TIFF"})
# JPEG modes (as Pillow names them) decoded by libjpeg-turbo's TurboJPEG API through
# simplejpeg rather than by Pillow: YCbCr or RGB ("RGB") and greyscale ("L"). The pixels are
# the same, bit for bit (one libjpeg-turbo, the same scaled IDCT and upsampling), the decode
# is 15-30 % faster with no PIL image in between, and it reports what Pillow keeps to itself:
# compressed data that ends before the picture does (tests/service/test_imaging.py). CMYK
# and YCCK JPEGs stay with Pillow, which undoes Adobe's inverted CMYK.
TURBO_JPEG_MODES = frozenset({"RGB", "L"})
# A multi-picture phone JPEG (MPO) is a JPEG whose first picture is the one served; what
# follows its end marker is not read.
TURBO_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# libjpeg's warnings for compressed data that ends early (cut short, often with an end
# marker appended, or a marker inside a scan): it fills the rest of the picture with grey
# and decodes on. Such an upload is a 400; libjpeg's other warnings (stray bytes before a
# marker) leave the picture whole and decode as Pillow would.
JPEG_ENDS_EARLY = ("premature end of data segment", "Premature end of JPEG file")
# Scans a JPEG may have. libjpeg goes over every coefficient of the image for each scan of
# a progressive JPEG, so a 200 kB file that repeats one scan a thousand times keeps a decode
# thread busy for 40 s. libjpeg's standard progressions have 10 scans (YCbCr), 6 (grey) and
# 18 (CMYK), optimising encoders a few more. So at most 64 scans, and at most as many
# scan-pixels as JPEG_SCAN_BUDGET scans of the largest image accepted (MAX_IMAGE_PIXELS): a
# 40 MP grey JPEG decodes in 0.24 s with its 6 scans, 0.51 s with 12 and 2.7 s with 64
# here; the budget keeps it near 1 s, while a smaller image may have all 64. A TIFF may hold
# JPEG streams too, one per strip or tile, each of up to 99 scans (libtiff's own limit): a
# 147 kB 6000x6000 grey TIFF of one 99-scan strip takes Pillow 4 s (`python -m
# benchmarks.bombs`), so its streams count against the same limits (tiff_jpeg_streams).
MAX_JPEG_SCANS = 64
JPEG_SCAN_BUDGET = 24
JPEG_SOI = b"\xff\xd8"
# After a start-of-scan segment, the entropy-coded data runs to the next marker: an 0xFF not
# followed by 0x00 (byte stuffing) or a restart marker (0xD0-0xD7).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_NOT_FILL = re.compile(rb"[^\xff]")
_SOS, _EOI = 0xDA, 0xD9
# TIFF 6.0 tags that locate a frame's JPEG streams. Compression 7 (JPEG, TIFF Technical Note
# 2) keeps one stream per strip or tile; 6 (the old style) may point at one stream for the
# whole frame (JPEGInterchangeFormat and its length).
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_COMPRESSION, _TIFF_ROWS_PER_STRIP = 256, 257, 259, 278
_TIFF_SAMPLES_PER_PIXEL = 277
_TIFF_JPEG_COMPRESSIONS = frozenset({6, 7})
_TIFF_STRIP_OFFSETS, _TIFF_STRIP_BYTE_COUNTS = 273, 279
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH, _TIFF_TILE_OFFSETS, _TIFF_TILE_BYTE_COUNTS = 322, 323, 324, 325
_TIFF_JPEG_INTERCHANGE, _TIFF_JPEG_INTERCHANGE_LENGTH = 513, 514
# Pillow walks some of a file's structure in Python: a JPEG's marker segments and stray
# bytes up to the first scan, every PNG chunk (IDAT included: the decoder is fed chunk by
# chunk) and a GIF's extension sub-blocks before its first image. Millions of empty ones
# cost seconds where a real photo of that size decodes in well under one (`python -m
# benchmarks.bombs`: 2 M empty APP0 segments in 8 MB, 6.2 s; 600 k empty PNG chunks in
# 7.2 MB, 4.2 s). So each gets a cap far above what encoders write, counted by a walk that
# stops at the cap (file_structure); at the caps Pillow spends at most about 0.6 s.
MAX_JPEG_SEGMENTS = 4096  # a camera JPEG has 10-30; a progressive one adds two per scan
# Pillow steps over stray bytes before the first scan one at a time (8 M fill bytes: 6.3 s);
# encoders write none, a damaged file a few.
MAX_JPEG_SKIPPED_BYTES = 65_536
MAX_PNG_CHUNKS = 40_960  # a 20 MiB PNG in 512-byte IDATs; libpng writes 8 KiB ones
MAX_GIF_BLOCKS = 65_536  # XMP in a GIF reads as one sub-block per few bytes
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
_GIF_EXTENSION = 0x21  # an extension block; 0x2C (an image) or anything else ends the walk


def configure_pillow(max_pixels: int) -> None:
    """Set Pillow's process-wide decompression-bomb limit and make its warning an error.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises only above twice that; a warning
    would let a bomb through, so it is escalated once, process-wide (a ``catch_warnings``
    block per request is not thread-safe).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def jpeg_scans(data: bytes | memoryview) -> int:
    """Start-of-scan markers of the JPEG stream ``data`` opens with, up to its end-of-image:
    metadata segments (an EXIF thumbnail's own scans) are skipped by their length, and what
    follows the end (a second MPO picture, a motion photo's video) is not read."""
    return jpeg_structure(data)[0]


def jpeg_structure(data: bytes | memoryview) -> tuple[int, int, int]:
    """``(scans, marker segments, skipped bytes before the first scan)`` of the JPEG stream
    ``data`` opens with, up to its end-of-image. Bytes where a marker should be are skipped
    to the next marker, as libjpeg does (with a warning) and Pillow does one Python step at a
    time until the first scan; so junk cannot hide the scans after it. The walk stops after
    MAX_JPEG_SEGMENTS + 1 segments or MAX_JPEG_SKIPPED_BYTES + 1 skipped bytes."""
    scans, segments, junk = _walk_jpeg(data)
    return scans, segments, sum(end - start for start, end in junk)


def without_header_junk(data: bytes) -> bytes | None:
    """The JPEG ``data`` without the bytes before its first scan that stand where a marker
    should (libjpeg skips them, with a warning), or None when there are none. The picture is
    the same; what libjpeg then warns about is the rest of the file's own doing."""
    junk = _walk_jpeg(data)[2]
    if not junk:
        return None
    kept, position = [], 0
    for start, end in junk:
        kept.append(data[position:start])
        position = end
    kept.append(data[position:])
    return b"".join(kept)


def _walk_jpeg(data: bytes | memoryview) -> tuple[int, int, list[tuple[int, int]]]:
    """``(scans, marker segments, junk)`` for jpeg_structure; junk: the ``(start, end)``
    byte ranges skipped before the first scan."""
    position, scans, segments, skipped = len(JPEG_SOI), 0, 0, 0
    junk: list[tuple[int, int]] = []
    while segments <= MAX_JPEG_SEGMENTS and skipped <= MAX_JPEG_SKIPPED_BYTES:
        if position + 4 > len(data):
            break
        marker = data[position + 1]
        if data[position] != 0xFF or marker == 0xFF or marker == 0x00:
            # Junk, fill bytes or a stuffed 0xFF00 where a marker belongs: on to the next.
            following = _NEXT_MARKER.search(data, position + 1)
            if following is None:
                break
            start = following.start()
            if data[start + 1] == 0xFF:  # a run of fill bytes: its last one starts the marker
                end_of_run = _NOT_FILL.search(data, start)
                if end_of_run is None:
                    break
                start = end_of_run.start() - 1
            if scans == 0:
                skipped += start - position
                junk.append((position, start))
            position = start
            continue
        if marker == _EOI:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        segments += 1
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == _SOS:
            scans += 1
            following = _NEXT_MARKER.search(data, position)
            if following is None:
                break
            position = following.start()
    return scans, segments, junk


def png_chunks(data: bytes) -> int:
    """Chunks of the PNG ``data`` up to IEND (or its end); stops after MAX_PNG_CHUNKS + 1."""
    position, chunks = len(PNG_SIGNATURE), 0
    while position + 8 <= len(data) and chunks <= MAX_PNG_CHUNKS:
        chunks += 1
        if data[position + 4 : position + 8] == _PNG_IEND:
            break
        position += 12 + int.from_bytes(data[position : position + 4], "big")  # + type, CRC
    return chunks


def gif_blocks(data: bytes) -> int:
    """Extension sub-blocks of the GIF ``data`` before its first image (each extension's
    own terminator counted too); stops after MAX_GIF_BLOCKS + 1."""
    flags = data[10] if len(data) > 10 else 0
    position = 13 + (3 << ((flags & 0x07) + 1) if flags & 0x80 else 0)  # + global colours
    blocks = 0
    while position + 2 <= len(data) and blocks <= MAX_GIF_BLOCKS:
        if data[position] != _GIF_EXTENSION:
            break  # the first image, the trailer or damage: Pillow's walk ends there too
        position += 2  # introducer, label
        while position < len(data) and blocks <= MAX_GIF_BLOCKS:
            size = data[position]
            blocks += 1
            position += 1 + size
            if size == 0:
                break
    return blocks


def file_structure(data: bytes) -> tuple[int, str | None]:
    """One walk over what Pillow would walk in Python: ``(scans, problem)``, the scans of a
    JPEG (0 for other formats) and why ``data`` must not be opened (a JPEG, PNG or GIF
    with more segments, chunks or extension blocks than MAX_JPEG_SEGMENTS /
    MAX_PNG_CHUNKS / MAX_GIF_BLOCKS) or None."""
    if data.startswith(JPEG_SOI):
        scans, segments, skipped = jpeg_structure(data)
        if segments > MAX_JPEG_SEGMENTS:
            return scans, f"a JPEG of more than {MAX_JPEG_SEGMENTS} marker segments"
        if skipped > MAX_JPEG_SKIPPED_BYTES:
            return scans, (
                f"a JPEG with more than {MAX_JPEG_SKIPPED_BYTES} stray bytes between its "
                "first markers"
            )
        return scans, None
    if data.startswith(PNG_SIGNATURE) and png_chunks(data) > MAX_PNG_CHUNKS:
        return 0, f"a PNG of more than {MAX_PNG_CHUNKS} chunks"
    if data.startswith(GIF_SIGNATURES) and gif_blocks(data) > MAX_GIF_BLOCKS:
        return 0, f"a GIF of more than {MAX_GIF_BLOCKS} extension blocks before its image"
    return 0, None


def tiff_jpeg_streams(image: Image.Image, data: bytes) -> list[tuple[int, int]]:
    """``(scans, pixels)`` of each JPEG stream in the opened TIFF frame ``image`` (``data``:
    the file's bytes): one per strip or tile of a JPEG-compressed frame, pixels being the
    strip's or tile's area, or one for an old-style stream of the whole frame. Empty when
    the frame is not JPEG-compressed (or ``image`` is not a TIFF).

    Only as many strips or tiles as the frame's size needs are read (libtiff ignores the
    rest), a stream named twice is walked once (writers share the bytes of identical
    tiles), and streams that together run over more bytes than the file holds overlap:
    ValueError, so that no crafted file makes the count cost more than one pass over it.
    """
    tags = getattr(image, "tag_v2", None)
    if tags is None or tags.get(_TIFF_COMPRESSION) not in _TIFF_JPEG_COMPRESSIONS:
        return []
    width = int(tags.get(_TIFF_WIDTH, image.size[0]))
    height = int(tags.get(_TIFF_LENGTH, image.size[1]))
    planes = max(1, int(tags.get(_TIFF_SAMPLES_PER_PIXEL, 1)))
    view = memoryview(data)
    counted: dict[tuple[int, int], int] = {}
    walked = 0

    def scans_at(offset: int, length: int) -> int:
        nonlocal walked
        if (offset, length) not in counted:
            stream = view[offset : offset + length]
            # Only a whole stream (from its SOI) is walked: an old-style file's strips point
            # into its one stream's scan data, which is neither walked nor counted twice.
            scans = 0
            if stream[:2] == JPEG_SOI:
                walked += len(stream)
                if walked > len(data):
                    raise ValueError("the TIFF's JPEG strips or tiles overlap")
                scans = jpeg_scans(stream)
            counted[offset, length] = scans
        return counted[offset, length]

    def values(tag: int, count: int) -> tuple[int, ...]:
        value = tags.get(tag, ())
        return tuple(int(v) for v in (value if isinstance(value, tuple) else (value,)))[:count]

    streams = []
    whole_frame = None
    if _TIFF_JPEG_INTERCHANGE in tags:
        whole_frame = int(tags[_TIFF_JPEG_INTERCHANGE])
        length = int(tags.get(_TIFF_JPEG_INTERCHANGE_LENGTH, len(data) - whole_frame))
        streams.append((scans_at(whole_frame, length), width * height))
    if _TIFF_TILE_OFFSETS in tags:
        tile_width = max(1, int(tags.get(_TIFF_TILE_WIDTH, width)))
        tile_height = max(1, int(tags.get(_TIFF_TILE_LENGTH, height)))
        count = -(-width // tile_width) * -(-height // tile_height) * planes
        offsets = values(_TIFF_TILE_OFFSETS, count)
        lengths = values(_TIFF_TILE_BYTE_COUNTS, count)
        for offset, length in zip(offsets, lengths, strict=False):
            streams.append((scans_at(offset, length), tile_width * tile_height))
    else:
        rows = min(int(tags.get(_TIFF_ROWS_PER_STRIP, height)), height) or height
        per_plane = -(-height // max(1, rows))
        offsets = values(_TIFF_STRIP_OFFSETS, per_plane * planes)
        lengths = values(_TIFF_STRIP_BYTE_COUNTS, per_plane * planes)
        for index, (offset, length) in enumerate(zip(offsets, lengths, strict=False)):
            if offset == whole_frame:
                continue  # an old-style file whose one strip is that stream: counted once
            strip_rows = max(0, min(rows, height - (index % per_plane) * rows))
            streams.append((scans_at(offset, length), strip_rows * width))
    return streams


def check_jpeg_streams(
    streams: Sequence[tuple[int, int]],
    what: str,
    container: str | None,
    size: tuple[int, int],
    max_pixels: int,
) -> None:
    """PayloadTooLarge unless each JPEG stream ``(scans, pixels)`` of an image of ``size``
    has at most MAX_JPEG_SCANS scans and all of them together at most as many scan-pixels
    as JPEG_SCAN_BUDGET scans of a ``max_pixels`` image (``container``: the file's format,
    for the message)."""
    most = max((scans for scans, _ in streams), default=0)
    if most > MAX_JPEG_SCANS:
        raise PayloadTooLarge(
            f"the {what} is a {container} with a JPEG stream of {most} scans; at most "
            f"{MAX_JPEG_SCANS} are decoded (a progressive JPEG has about 10)"
        )
    scan_pixels = sum(scans * pixels for scans, pixels in streams)
    if scan_pixels > JPEG_SCAN_BUDGET * max_pixels:
        width, height = size
        whole = max(1, width * height)
        raise PayloadTooLarge(
            f"the {what} is a {width}x{height} {container} with {scan_pixels / whole:g} scans "
            f"of the whole image; at this size at most {JPEG_SCAN_BUDGET * max_pixels // whole} "
            "are decoded (a progressive JPEG has about 10)"
        )


def check_content_type(content_type: str | None) -> None:
    """Reject an upload whose declared type is clearly not an image (415).

    A missing type or ``application/octet-stream`` is allowed: the bytes are sniffed by
    decoding them.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in SNIFFED_CONTENT_TYPES or media_type.startswith("image/"):
        return
    raise UnsupportedMediaType(
        f"the upload's content type {media_type!r} is not an image; send image/* "
        f"({SERVED_FORMATS_TEXT}) or application/octet-stream"
    )


def deep_to_unit(image: Image.Image) -> npt.NDArray[np.float64]:
    """A single-channel image deeper than 8 bits (I;16*, I, F) as ``(H, W)`` float64 in 0..1.

    16-bit images (I;16*: PNG, TIFF) are scaled by 1/UINT16_MAX, whatever their values, so
    that the answer does not jump between two inputs one level apart. 32-bit integers (I)
    carry no range; they are read as 8-bit levels and clipped, as Pillow's own conversion
    to L does. Float images are taken as 0..1 when they fit there, else as 0..255 values;
    NaN counts as 0.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.mode.startswith("I;16"):
        divisor = float(UINT16_MAX)
    elif image.mode == "F":
        peak = float(values.max()) if values.size else 0.0
        divisor = 1.0 if peak <= 1.0 else 255.0
    else:
        divisor = 255.0
    return np.clip(values / divisor, 0.0, 1.0)


def is_deep(image: Image.Image) -> bool:
    """Whether ``image`` has one channel deeper than 8 bits (I;16*, I, F)."""
    return image.mode in ("I", "F") or image.mode.startswith("I;16")


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` carries transparency: an alpha band or a transparent palette entry."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB; alpha is composited over ALPHA_BACKGROUND."""
    if is_deep(image):
        grey = np.rint(deep_to_unit(image) * 255.0).astype(np.uint8)
        image = Image.fromarray(grey, mode="L")
    if has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's header says, read before its pixels are decoded."""

    width: int  # stored size in pixels, before the EXIF orientation
    height: int
    orientation: int | None  # EXIF orientation tag (1-8), None without one


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag of an opened image, read from its header; None when it has
    none or its EXIF block is damaged (``ImageOps.exif_transpose`` ignores that too)."""
    try:
        # By equality, as exif_transpose matches it: a camera writes SHORT, but 6.0 or a
        # rational 6/1 turn the picture too.
        return EXIF_ORIENTATIONS.get(image.getexif().get(EXIF_ORIENTATION_TAG))
    except Exception:  # unhashable, or a damaged block
        return None


def orient(array: npt.NDArray[np.uint8], orientation: int | None) -> npt.NDArray[np.uint8]:
    """``(H, W, C)`` pixels in stored order turned as EXIF ``orientation`` says, as
    ``ImageOps.exif_transpose`` turns an image; a view when nothing moves."""
    if orientation in (5, 6, 7, 8):  # transposing: rows become columns
        array = array.transpose(1, 0, 2)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        array = array[:, ::-1]
    if orientation in (3, 4):
        array = array[::-1]
    return array


def decode_jpeg_rgb(
    data: bytes, header: JpegHeader, reduce_to: tuple[int, int] | None = None
) -> npt.NDArray[np.uint8] | None:
    """A JPEG of a TURBO_JPEG_MODES mode as ``(H, W, 3)`` uint8 RGB in image pixels (EXIF
    orientation applied), or None when libjpeg-turbo's TurboJPEG API refuses it for anything
    but data that ends early (stray bytes in its header, say): Pillow then decodes it, as
    leniently as before. ``reduce_to`` (stored width, height): decode at the smallest of
    libjpeg's 1/2, 1/4 and 1/8 scales that still covers it, as Pillow's ``draft`` picks.
    Raises InvalidImage when the compressed data ends early."""
    width, height = header.width, header.height
    if reduce_to is not None:
        # Pillow's rule (JpegImageFile.draft), so both decoders give the same pixels.
        ratio = min(width // max(reduce_to[0], 1), height // max(reduce_to[1], 1))
        scale = next(s for s in (8, 4, 2, 1) if ratio >= s)
        width, height = -(-width // scale), -(-height // scale)
    try:
        rgb = simplejpeg.decode_jpeg(data, "RGB", min_width=width, min_height=height)
    except ValueError as exc:
        if any(warning in str(exc) for warning in JPEG_ENDS_EARLY):
            raise InvalidImage(
                "the image could not be decoded (truncated or corrupt): its compressed data "
                f"ends before the picture does (libjpeg: {exc})"
            ) from exc
        cleaned = without_header_junk(data)
        if cleaned is not None:
            # Stray bytes among the header's markers: without them the picture is the same,
            # and a strict decode again sees whatever comes after (data that ends early).
            return decode_jpeg_rgb(cleaned, header, reduce_to)
        # Another warning stopped the strict decode, possibly at its very end (stray bytes
        # before the end marker): once more without stopping, about what one Pillow decode
        # costs in all, rather than a Pillow decode on top. A truncation after stray bytes
        # between scans goes unseen, as it did with Pillow alone.
        try:
            rgb = simplejpeg.decode_jpeg(
                data, "RGB", min_width=width, min_height=height, strict=False
            )
        except ValueError:  # TurboJPEG gives up (stray bytes in the header): Pillow's turn
            return None
    if rgb.shape[:2] != (height, width):  # another scale than Pillow's: let Pillow decode
        return None
    return np.ascontiguousarray(orient(rgb, header.orientation))


def open_upload(
    data: bytes,
    convert: Callable[[Image.Image], T],
    *,
    max_pixels: int,
    max_side: int,
    what: str = "image",
    invalid: type[InvalidImage] = InvalidImage,
    before_load: Callable[[Image.Image], None] | None = None,
    jpeg: Callable[[JpegHeader], T | None] | None = None,
) -> T:
    """Open uploaded bytes with every guard, then ``convert`` the decoded image.

    The first frame of animated formats is used and EXIF orientation applied before
    ``convert`` sees the image. Raises ``invalid`` (400) for empty, unknown, truncated or
    corrupt data (also when ``convert`` fails on it) and PayloadTooLarge (413) above
    ``max_pixels`` or ``max_side``; ``what`` names the upload in the messages.
    ``before_load`` may configure the opened, not yet decoded image (``draft``). ``jpeg``,
    when given, decodes a JPEG of a TURBO_JPEG_MODES mode from its header after the same
    guards, instead of Pillow and ``convert`` (``decode_jpeg_rgb``); when it returns None,
    Pillow decodes.
    """
    if not data:
        raise invalid(f"the {what} upload is empty (0 bytes)")
    scans, too_many = file_structure(data)
    if too_many is not None:
        raise PayloadTooLarge(f"the {what} is {too_many}; encoders write far fewer")
    if scans > MAX_JPEG_SCANS:
        raise PayloadTooLarge(
            f"the {what} is a JPEG with {scans} scans; at most {MAX_JPEG_SCANS} are decoded "
            "(a progressive JPEG has about 10)"
        )
    try:
        with Image.open(io.BytesIO(data), formats=SERVED_FORMATS) as probe:
            width, height = probe.size
            if width * height > max_pixels or max(width, height) > max_side:
                raise PayloadTooLarge(
                    f"the {what} is {width}x{height} pixels; at most {max_pixels} pixels "
                    f"and {max_side} per side are accepted"
                )
            # A JPEG is one stream; a TIFF may hold one per strip or tile.
            streams = (
                tiff_jpeg_streams(probe, data)
                if probe.format == "TIFF"
                else [(scans, width * height)]
            )
            check_jpeg_streams(streams, what, probe.format, (width, height), max_pixels)
            header = (
                JpegHeader(width, height, exif_orientation(probe))
                if jpeg is not None
                and probe.format in TURBO_JPEG_FORMATS
                and probe.mode in TURBO_JPEG_MODES
                else None
            )
            # load() skips checksums (a PNG with a bad IDAT CRC decodes to garbage);
            # verify() checks them without decoding, but leaves the image unusable.
            probe.verify()
        if jpeg is not None and header is not None:
            decoded = jpeg(header)
            if decoded is not None:
                return decoded
        with Image.open(io.BytesIO(data), formats=SERVED_FORMATS) as image:
            if before_load is not None:
                before_load(image)
            image.load()
            return convert(ImageOps.exif_transpose(image))
    except (PayloadTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (it fires in Image.open, before the size check above) quotes
        # its internal limits; the caller gets the configured ones.
        raise PayloadTooLarge(
            f"the {what} exceeds the pixel limit; at most {max_pixels} pixels and "
            f"{max_side} per side are accepted"
        ) from exc
    except UnidentifiedImageError as exc:
        raise invalid(
            f"the {what} is not an image in a supported format ({SERVED_FORMATS_TEXT})"
        ) from exc
    except Exception as exc:
        # Pillow's format plugins raise a zoo of types (OSError, SyntaxError, ValueError,
        # struct.error, EOFError...) for damaged files; all of them are the client's bytes.
        raise invalid(f"the {what} could not be decoded (truncated or corrupt): {exc}") from exc


def decode_image(data: bytes, *, max_pixels: int, max_side: int) -> npt.NDArray[np.uint8]:
    """Decode an upload into an ``(H, W, 3)`` uint8 RGB array in image pixels.

    Every Pillow mode is converted to RGB; errors as ``open_upload``.
    """
    array = open_upload(
        data,
        lambda image: np.asarray(_to_rgb(image), dtype=np.uint8),
        max_pixels=max_pixels,
        max_side=max_side,
        jpeg=lambda header: decode_jpeg_rgb(data, header),
    )
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImage(f"the image decoded to an unusable shape {array.shape}")
    return array


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as the caller sees it: after its EXIF
    orientation (read from the header, before decoding)."""
    width, height = image.size
    if image.format in SELF_ORIENTING_FORMATS:
        return width, height
    orientation = exif_orientation(image)
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def decode_to_fit(
    data: bytes,
    height: int,
    width: int,
    *,
    max_pixels: int,
    max_side: int,
    resize: ResizeMode = "letterbox",
) -> tuple[npt.NDArray[np.uint8], tuple[int, int]]:
    """Decode an upload that will be fitted into ``height x width`` (``resize``, as
    ``fit_image``), letting libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when the fitted
    size still fits in that (``Image.draft``: the reduction happens in the DCT domain, an
    area average, so most of the decoding and resizing work is never done; other formats
    decode in full).

    Returns ``(H', W', 3)`` uint8 RGB, at least as large as the fitted size, and the full
    image's ``(width, height)`` in image pixels (``fit_image``'s ``source_size``). Errors as
    ``open_upload``.
    """
    full: list[tuple[int, int]] = []

    def reduced_size(stored: tuple[int, int], oriented: tuple[int, int]) -> tuple[int, int] | None:
        """The stored size the fitted size needs, when libjpeg may reduce at all."""
        full.append(oriented)
        scale = fit_scale(resize, height, width, oriented[0], oriented[1])
        if scale >= 0.5:  # below libjpeg's first reduction, 1/2
            return None
        return math.ceil(stored[0] * scale), math.ceil(stored[1] * scale)

    def draft(image: Image.Image) -> None:
        size = reduced_size(image.size, oriented_size(image))
        if size is not None:
            image.draft(None, size)

    def turbo(header: JpegHeader) -> npt.NDArray[np.uint8] | None:
        stored = (header.width, header.height)
        oriented = stored[::-1] if header.orientation in TRANSPOSING_ORIENTATIONS else stored
        return decode_jpeg_rgb(data, header, reduced_size(stored, (oriented[0], oriented[1])))

    array = open_upload(
        data,
        lambda image: np.asarray(_to_rgb(image), dtype=np.uint8),
        max_pixels=max_pixels,
        max_side=max_side,
        before_load=draft,
        jpeg=turbo,
    )
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImage(f"the image decoded to an unusable shape {array.shape}")
    return array, full[0]


# Image coordinates in answers are rounded to a millionth of a pixel: far below any
# model's precision, and the division's float noise (399.99999999999994) stays out of the
# JSON a client reads.
IMAGE_COORDINATE_DECIMALS = 6


@dataclass(frozen=True)
class LetterboxTransform:
    """How an ``image_width x image_height`` image sits in the model input.

    ``scale`` multiplies image pixels into model-input pixels; ``pad_x``/``pad_y`` are the
    left/top borders in model-input pixels (negative for ``centre_crop``: the cut-off part).
    """

    scale: float
    pad_x: int
    pad_y: int
    image_width: int
    image_height: int

    def to_image(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(..., 2)`` points ``(u, v)`` in model-input pixels to ``(x, y)`` in image
        pixels (float64, same shape): ``x = (u - pad_x) / s``, ``y = (v - pad_y) / s``,
        rounded to IMAGE_COORDINATE_DECIMALS."""
        uv = np.asarray(points, dtype=np.float64)
        pad = np.array([self.pad_x, self.pad_y], dtype=np.float64)
        return np.round((uv - pad) / self.scale, IMAGE_COORDINATE_DECIMALS)

    def to_model(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Inverse of to_image: ``(..., 2)`` image pixels to model-input pixels."""
        xy = np.asarray(points, dtype=np.float64)
        pad = np.array([self.pad_x, self.pad_y], dtype=np.float64)
        return xy * self.scale + pad


def _resized(image: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 resized to ``(height, width, 3)``, bilinear (Pillow); the image
    itself when it already has that size."""
    if (width, height) == (image.shape[1], image.shape[0]):
        return image
    resized = Image.fromarray(image, mode="RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def letterbox(
    image: npt.NDArray[np.uint8],
    height: int,
    width: int,
    pad_value: Sequence[int],
    source_size: tuple[int, int] | None = None,
    pad: PadMode = "constant",
) -> tuple[npt.NDArray[np.uint8], LetterboxTransform]:
    """Fit an ``(H, W, 3)`` uint8 image into ``(height, width, 3)`` uint8, keeping its aspect.

    The rule of models/repository/README.md: ``s = min(width / W, height / H)``, bilinear
    resize (Pillow) to ``round(W * s) x round(H * s)``, centred with floored pads, borders
    filled with ``pad_value`` (uint8 RGB), or with ``pad="edge"`` with the resized image's
    outermost rows and columns repeated. A side that would round to 0 pixels (aspect
    beyond 320:1) is kept at 1 and the pad computed from that, so ``to_image`` stays exact.
    ``source_size``: the ``(W, H)`` of the full image when ``image`` is a reduced decode of
    it (``decode_to_fit``); sizes and the transform are then those of the full image.
    """
    image_width, image_height = source_size or (image.shape[1], image.shape[0])
    scale = min(width / image_width, height / image_height)
    # At least one pixel: a 1 x 5000 strip must still become a (thin) image, not nothing.
    new_width = min(width, max(1, round(image_width * scale)))
    new_height = min(height, max(1, round(image_height * scale)))
    pad_x = (width - new_width) // 2
    pad_y = (height - new_height) // 2
    resized = _resized(image, new_width, new_height)
    transform = LetterboxTransform(scale, pad_x, pad_y, image_width, image_height)
    if pad == "edge":
        bars = (
            (pad_y, height - new_height - pad_y),
            (pad_x, width - new_width - pad_x),
            (0, 0),
        )
        return np.pad(resized, bars, mode="edge"), transform
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = np.asarray(pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_height, pad_x : pad_x + new_width] = resized
    return canvas, transform


def centre_crop(
    image: npt.NDArray[np.uint8],
    height: int,
    width: int,
    source_size: tuple[int, int] | None = None,
) -> tuple[npt.NDArray[np.uint8], LetterboxTransform]:
    """Fill ``(height, width, 3)`` uint8 with an ``(H, W, 3)`` uint8 image, keeping its
    aspect: ``s = max(width / W, height / H)``, bilinear resize (Pillow) to
    ``round(W * s) x round(H * s)`` (at least the input size), and the central
    ``width x height`` kept; the excess of the longer side is cut off evenly (floored on the
    left / top). For a model trained on inputs its content fills (the aligned faces of the
    occlusion model): no pad bars it never saw. The transform's pads are then negative (the
    cut in model-input pixels), so ``to_image`` maps the input back into the image.
    ``source_size`` as ``letterbox``.
    """
    image_width, image_height = source_size or (image.shape[1], image.shape[0])
    scale = max(width / image_width, height / image_height)
    new_width = max(width, round(image_width * scale))
    new_height = max(height, round(image_height * scale))
    pad_x = -((new_width - width) // 2)
    pad_y = -((new_height - height) // 2)
    transform = LetterboxTransform(scale, pad_x, pad_y, image_width, image_height)
    if (new_width, new_height) == (width, height) == (image.shape[1], image.shape[0]):
        return image, transform
    # Only the kept window is resampled (Pillow's box: that window in this array's pixels).
    # Scaling the whole image first would make a 1 x 16384 strip a 96 x 1.5-million-pixel
    # intermediate (1.4 GiB) to keep 112 x 96 of it.
    x_ratio, y_ratio = image.shape[1] / new_width, image.shape[0] / new_height
    box = (
        -pad_x * x_ratio,
        -pad_y * y_ratio,
        (width - pad_x) * x_ratio,
        (height - pad_y) * y_ratio,
    )
    window = Image.fromarray(image, mode="RGB").resize(
        (width, height), Image.Resampling.BILINEAR, box=box
    )
    return np.asarray(window, dtype=np.uint8), transform


def fit_scale(
    resize: ResizeMode, height: int, width: int, image_width: int, image_height: int
) -> float:
    """Image pixels -> model-input pixels for ``resize``: the whole image fits
    (``letterbox``) or the input is filled (``crop``)."""
    pick = min if resize == "letterbox" else max
    return pick(width / image_width, height / image_height)


def fit_image(
    image: npt.NDArray[np.uint8],
    height: int,
    width: int,
    pad_value: Sequence[int],
    *,
    resize: ResizeMode = "letterbox",
    source_size: tuple[int, int] | None = None,
    pad: PadMode = "constant",
) -> tuple[npt.NDArray[np.uint8], LetterboxTransform]:
    """The model input of a config's ``preprocess.resize``: ``letterbox`` (bars filled as
    ``pad`` says) or ``centre_crop`` (``pad_value`` and ``pad`` are unused there: nothing is
    padded)."""
    if resize == "crop":
        return centre_crop(image, height, width, source_size)
    return letterbox(image, height, width, pad_value, source_size, pad)


def normalize(
    images: npt.NDArray[np.uint8],
    *,
    scale: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> npt.NDArray[np.float32]:
    """``(N, H, W, 3)`` (or one ``(H, W, 3)``) uint8 RGB into a float32 ``(N, 3, H, W)``
    batch, ``((pixel * scale) - mean) / std`` per channel."""
    batch = images[np.newaxis] if images.ndim == 3 else images
    # Folded into one multiply-add so the whole batch is converted in one pass.
    gain = (scale / np.asarray(std, dtype=np.float64)).astype(np.float32)
    offset = (-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(
        np.float32
    )
    chw = batch.transpose(0, 3, 1, 2)
    out = chw * gain[:, None, None] + offset[:, None, None]
    return np.ascontiguousarray(out, dtype=np.float32)
