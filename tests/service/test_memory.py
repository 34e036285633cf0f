"""Process-wide memory settings (service/memory.py): what a large upload costs. Checked by
behaviour, not time: where an upload's bytes go, and how many pages the parse faults in."""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import resource
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.requests import Request

from benchmarks.loadgen import multipart_body
from service.main import create_app
from service.memory import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, configure_uploads, tune_malloc
from service.settings import DEFAULT_MALLOC_MMAP_THRESHOLD, Settings
from tests.service.conftest import make_settings
from tests.service.images import encode

GLIBC = platform.libc_ver()[0] == "glibc"
# The file part the fault count parses: a phone photo's size.
PART_BYTES = 3_000_000
PARSES = 20
# uvicorn hands the app a body in chunks of at most this.
CHUNK = 65536


def test_an_upload_under_the_spool_size_never_touches_the_temp_directory(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.5 MB upload under a 4 MiB spool size is parsed in memory: with every temporary
    file failing it is still answered 200 (over 1 MiB it is 503, test_faults.py)."""

    def no_temp_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("the upload was spooled to a temporary file")

    noise = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    big = encode(noise)
    assert 1 << 20 < len(big) < 4 << 20
    with TestClient(create_app(make_settings(repo, upload_spool_bytes=4 << 20))) as client:
        monkeypatch.setattr(tempfile, "TemporaryFile", no_temp_files)
        answer = client.post("/recognize", files={"image": ("big.png", big, "image/png")})
    assert answer.status_code == 200, answer.text


def parse_faults(body: bytes, content_type: str) -> int:
    """Minor page faults of ``PARSES`` Starlette form parses of ``body`` (fed in uvicorn's
    chunks), each followed by reading the file part out, as ``read_upload`` does."""

    async def parse() -> int:
        chunks = iter([body[i : i + CHUNK] for i in range(0, len(body), CHUNK)])

        async def receive() -> dict[str, object]:
            chunk = next(chunks, None)
            return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/",
            "query_string": b"",
            "headers": [(b"content-type", content_type.encode())],
        }
        form = await Request(scope, receive).form()
        upload = form["image"]
        assert not isinstance(upload, str)
        data = await upload.read()
        await form.close()
        return len(data)

    assert asyncio.run(parse()) == PART_BYTES  # the first parse maps what later ones reuse
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(PARSES):
        asyncio.run(parse())
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_malloc_parses_a_large_upload_in_pages_already_mapped() -> None:
    """With the thresholds set, parsing a 3 MB part again and again faults in next to no
    new pages; with glibc's starting thresholds fixed (128 KiB, trim at 256 KiB) each parse
    faults in its buffers afresh, one fault per 4 KiB page (about 1,500-2,200 a parse here)."""
    configure_uploads(4 << 20)  # in memory, so the buffers are malloc's
    content_type, body = multipart_body("image", "p.jpg", os.urandom(PART_BYTES), "image/jpeg")
    libc = ctypes.CDLL("libc.so.6")
    try:
        libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 10)
        untuned = parse_faults(body, content_type)
        assert tune_malloc(DEFAULT_MALLOC_MMAP_THRESHOLD)
        tuned = parse_faults(body, content_type)
    finally:  # the process's allocator as create_app leaves it
        tune_malloc(DEFAULT_MALLOC_MMAP_THRESHOLD)
    pages_per_parse = PART_BYTES // 4096
    assert untuned > PARSES * pages_per_parse // 2
    assert tuned < PARSES * 5


def test_zero_leaves_glibcs_own_thresholds() -> None:
    assert tune_malloc(0) is False


@pytest.mark.parametrize("value", [-1, 2**30 + 1])
def test_a_threshold_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ValidationError):
        Settings(malloc_mmap_threshold_bytes=value)


def test_the_spool_size_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        Settings(upload_spool_bytes=0)
