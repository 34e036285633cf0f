from __future__ import annotations

import json

import anyio
from starlette.types import Message, Receive, Scope, Send

from service.limits import BodyLimits, BodySizeLimitMiddleware

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


def test_small_body_passes() -> None:
    consumed, sent = call(read_all, chunks=3, limit=10 * CHUNK)
    assert consumed == 3 and sent[0]["status"] == 200


def test_streamed_body_is_cut_off_at_the_limit() -> None:
    for app in (read_all, swallow_errors):
        consumed, sent = call(app, chunks=1_000, limit=5 * CHUNK)
        assert consumed == 6  # stopped right after the chunk that crossed the limit
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 413
        assert dict(sent[0]["headers"])[b"content-type"] == b"application/problem+json"
        assert json.loads(sent[1]["body"])["status"] == 413


def test_declared_length_over_limit_reads_nothing() -> None:
    consumed, sent = call(
        read_all, chunks=1, limit=CHUNK - 1, headers=[(b"content-length", str(CHUNK).encode())]
    )
    assert consumed == 0 and sent[0]["status"] == 413


def test_two_file_form_may_carry_twice_the_limit() -> None:
    uploads = {"/two": 2}
    consumed, sent = call(read_all, chunks=8, limit=5 * CHUNK, path="/two", uploads=uploads)
    assert consumed == 8 and sent[0]["status"] == 200
    consumed, sent = call(read_all, chunks=8, limit=5 * CHUNK, path="/one", uploads=uploads)
    assert sent[0]["status"] == 413
    consumed, sent = call(read_all, chunks=20, limit=5 * CHUNK, path="/two", uploads=uploads)
    assert consumed == 11 and sent[0]["status"] == 413
    detail = json.loads(sent[1]["body"])["detail"]
    assert "the limit is 10000 bytes (2 uploads of at most 5000 bytes" in detail
