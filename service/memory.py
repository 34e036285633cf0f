"""Process-wide memory settings that decide what a large upload costs.

A 1 MB upload passes through memory several times before it is decoded: the multipart
parser appends it to a buffer 64 KiB at a time, and ``read_upload`` copies it out. Two
defaults make that slow:

- Starlette spools a file part over 1 MiB to a temporary file, and then every 64 KiB write
  and the final read is a trip to a worker thread and back.
- glibc serves an allocation over its mmap threshold (128 KiB at first, rising with use)
  from fresh ``mmap``ed pages and trims the heap whenever more than twice that is free at
  its top, so a buffer of a few MB is usually new memory: every 4 KiB page of it faults on
  first touch, and a copy then runs at about 1.3 GB/s instead of memory speed.

Measured in-process on this host (Starlette's parser, the body in 64 KiB chunks, then
``read``; `benchmarks/README.md`, "Uploads of a few MB"): a 1.1 MB file part took 1.5-2.3 ms
with both defaults and 0.3-0.4 ms with both changed, a 3 MB one 8.5-9.7 ms and 0.9-1.2 ms.
Either change alone gained little: the in-memory buffer faults as slowly as the disk path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from starlette.formparsers import MultiPartParser

logger = logging.getLogger("service")

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def configure_uploads(spool_bytes: int) -> None:
    """File parts up to ``spool_bytes`` stay in memory while a form is parsed; larger ones
    are spooled to the temporary directory. Starlette reads this class attribute for every
    form (there is no per-app setting), so it holds for the whole process."""
    MultiPartParser.spool_max_size = spool_bytes


def tune_malloc(mmap_threshold: int) -> bool:
    """Serve allocations under ``mmap_threshold`` bytes from the heap and keep up to twice
    that free at the heap's top (glibc's own ratio between the two), so a buffer of a few MB
    reuses pages already mapped. ``0`` leaves glibc's adaptive defaults. Returns whether
    the thresholds were set: False with ``0``, or where the C library is not glibc (musl,
    macOS), whose allocator then behaves as it always does."""
    if not mmap_threshold:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        logger.warning("malloc thresholds not set: this C library has no mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # glibc returns 1 on success, 0 for a value it refuses.
    if mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1:
        logger.warning("malloc thresholds not set: glibc refused %d bytes", mmap_threshold)
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, 2 * mmap_threshold) == 1)
