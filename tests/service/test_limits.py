from __future__ import annotations

import json
import tempfile
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.formparsers import MultiPartParser
from starlette.types import Message, Receive, Scope, Send

from service.limits import DRAIN_LIMIT_FACTOR, BodyLimits, BodySizeLimitMiddleware
from service.main import create_app
from service.settings import Settings
from tests.live_server import live_process
from tests.service.conftest import make_settings
from tests.service.fakes import process_env
from tests.service.images import encode, scene

CHUNK = 1_000


async def read_all(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that buffers the whole body, then answers 200."""
    while True:
        message = await receive()
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def swallow_errors(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that turns a body read error into its own 400, as FastAPI's form parsing does."""
    try:
        await read_all(scope, receive, lambda message: anyio.sleep(0))
    except Exception:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"bad body"})


def call(
    app,
    *,
    chunks: int,
    limit: int,
    headers: list[tuple[bytes, bytes]] | None = None,
    path: str = "/",
    uploads: dict[str, int] | None = None,
):
    consumed = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal consumed
        consumed += 1
        return {"type": "http.request", "body": b"\0" * CHUNK, "more_body": consumed < chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or []}
    limits = BodyLimits(limit, overhead_bytes=0, uploads=uploads or {})
    anyio.run(BodySizeLimitMiddleware(app, limits), scope, receive, send)
    return consumed, sent


def closes(sent: list[Message]) -> bool:
    """Whether the response asks to close the connection (the body was not read to its end)."""
    return (b"connection", b"close") in sent[0]["headers"]


def test_small_body_passes() -> None:
    consumed, sent = call(read_all, chunks=3, limit=10 * CHUNK)
    assert consumed == 3 and sent[0]["status"] == 200


def test_streamed_body_is_cut_off_at_the_limit_then_drained() -> None:
    for app in (read_all, swallow_errors):
        seen = 0

        async def counting_app(scope: Scope, receive: Receive, send: Send, app=app) -> None:
            async def counted() -> Message:
                nonlocal seen
                seen += 1
                return await receive()

            await app(scope, counted, send)

        consumed, sent = call(counting_app, chunks=12, limit=5 * CHUNK)
        # The app got the chunks up to the one that crossed the limit, never more; the rest
        # was read and dropped, so the client (still sending) can read the 413.
        assert seen == 6 and consumed == 12
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 413 and not closes(sent)
        assert dict(sent[0]["headers"])[b"content-type"] == b"application/problem+json"
        assert json.loads(sent[1]["body"])["status"] == 413


def test_endless_body_is_dropped_only_up_to_the_drain_limit() -> None:
    consumed, sent = call(read_all, chunks=1_000, limit=5 * CHUNK)
    # Stopped right after the chunk that crossed DRAIN_LIMIT_FACTOR x the limit; closed.
    assert consumed == DRAIN_LIMIT_FACTOR * 5 + 1
    assert sent[0]["status"] == 413 and closes(sent)


def test_declared_length_over_limit_never_reaches_the_app() -> None:
    def declared(size: int) -> list[tuple[bytes, bytes]]:
        return [(b"content-length", str(size).encode())]

    async def must_not_run(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app was called")

    # Within the drain limit: read and dropped, answered, the connection stays usable.
    consumed, sent = call(must_not_run, chunks=3, limit=2 * CHUNK, headers=declared(3 * CHUNK))
    assert consumed == 3 and sent[0]["status"] == 413 and not closes(sent)
    # Past the drain limit, or a client waiting for 100 Continue: nothing read, closed.
    huge = declared(DRAIN_LIMIT_FACTOR * 2 * CHUNK + 1)
    consumed, sent = call(must_not_run, chunks=100, limit=2 * CHUNK, headers=huge)
    assert consumed == 0 and sent[0]["status"] == 413 and closes(sent)
    expect = [*declared(3 * CHUNK), (b"expect", b"100-continue")]
    consumed, sent = call(must_not_run, chunks=3, limit=2 * CHUNK, headers=expect)
    assert consumed == 0 and sent[0]["status"] == 413 and closes(sent)


def test_two_file_form_may_carry_twice_the_limit() -> None:
    uploads = {"/two": 2}
    consumed, sent = call(read_all, chunks=8, limit=5 * CHUNK, path="/two", uploads=uploads)
    assert consumed == 8 and sent[0]["status"] == 200
    consumed, sent = call(read_all, chunks=8, limit=5 * CHUNK, path="/one", uploads=uploads)
    assert sent[0]["status"] == 413
    consumed, sent = call(read_all, chunks=20, limit=5 * CHUNK, path="/two", uploads=uploads)
    assert consumed == 20 and sent[0]["status"] == 413
    detail = json.loads(sent[1]["body"])["detail"]
    assert "the limit is 10000 bytes (2 uploads of at most 5000 bytes" in detail


def test_over_limit_upload_gets_its_413_over_real_tcp(tmp_path: Path) -> None:
    """The entry command as its own process: a client that sends the whole body before
    reading (httpx, like browsers) reads the 413 rather than a connection reset, and its
    keep-alive connection still serves."""
    limit = 8_000_000  # a body of 3x this outgrows loopback's socket buffers
    env = process_env(tmp_path, VISION_MAX_UPLOAD_BYTES=str(limit))
    big = b"\xff\xd8" + bytes(3 * limit)  # over the limit, within the drain limit

    async def post_big_then_good(url: str) -> list[int]:
        # httpx's async client: its sync one happens to read the answer even after a reset.
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            statuses = []
            for _ in range(3):
                response = await client.post(
                    "/recognize", files={"image": ("big.jpg", big, "image/jpeg")}
                )
                assert response.headers["content-type"] == "application/problem+json"
                statuses.append(response.status_code)
            good = {"image": ("s.png", encode(scene()), "image/png")}
            response = await client.post("/recognize", files=good)
            return [*statuses, response.status_code]

    with live_process(env, tmp_path / "stderr.log") as served:
        assert anyio.run(post_big_then_good, served.url) == [413, 413, 413, 200]


def test_an_upload_under_the_spool_size_never_touches_the_temp_directory(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.5 MB upload under a 4 MiB spool size is parsed in memory: with every temporary
    file failing it is still answered 200 (with Starlette's 1 MiB it is spooled, and then
    503: test_faults.py)."""

    def no_temp_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("the upload was spooled to a temporary file")

    # create_app sets Starlette's class attribute for the process: put it back afterwards.
    monkeypatch.setattr(MultiPartParser, "spool_max_size", MultiPartParser.spool_max_size)

    noise = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    big = encode(noise)
    assert 1 << 20 < len(big) < 4 << 20
    with TestClient(create_app(make_settings(repo, upload_spool_bytes=4 << 20))) as client:
        monkeypatch.setattr(tempfile, "TemporaryFile", no_temp_files)
        answer = client.post("/recognize", files={"image": ("big.png", big, "image/png")})
    assert answer.status_code == 200, answer.text


def test_the_spool_size_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        Settings(upload_spool_bytes=0)
