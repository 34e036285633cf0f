from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.formparsers import MultiPartParser
from starlette.routing import Router
from starlette.types import Message, Receive, Scope, Send

from service.errors import Overloaded
from service.limits import (
    BODY_OVERHEAD_BYTES,
    DRAIN_LIMIT_FACTOR,
    BodyLimits,
    BodySizeLimitMiddleware,
    BodyStalled,
    FormEnd,
    UploadGateMiddleware,
    release_body,
    reserve_at_least,
)
from service.main import create_app
from service.settings import Settings
from tests.live_server import live_process
from tests.service.conftest import make_settings
from tests.service.fakes import process_env
from tests.service.images import encode, scene
from tests.service.test_api_metrics import samples

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


def test_a_body_no_route_takes_gets_the_apps_own_answer_not_a_413(repo: Path) -> None:
    """A path without a route is a 404 whatever its body's size (before, a large body made
    it a 413 about an upload and its form framing); a route's wrong method, a 405; a path
    one slash off, its redirect. Each closes the connection when the body went unread. A
    route that takes no body (reload) still gets its 413, without form framing."""
    big = b"x" * 30_000
    with TestClient(create_app(make_settings(repo, max_upload_bytes=10_000))) as client:
        answers = {
            "/nope": (client.post("/nope", content=big), 404),
            "PUT /recognize": (client.put("/recognize", content=big), 405),
            "POST /health/ready": (client.post("/health/ready", content=big), 405),
            "/recognize/": (client.post("/recognize/", content=big, follow_redirects=False), 307),
            "reload": (client.post("/models/landmark/reload", content=big), 413),
            "/nope, read": (client.post("/nope", content=b"x" * 45_000), 404),
        }
        for name, (response, status) in answers.items():
            assert response.status_code == status, name
        assert answers["/nope"][0].json()["status"] == 404
        assert answers["/nope, read"][0].headers.get("connection") == "close"  # past 4x
        reload_detail = answers["reload"][0].json()["detail"]
        assert "the limit is 10000 bytes" in reload_detail and "framing" not in reload_detail


def test_an_unrouted_answer_that_waits_for_the_disconnect_gets_it() -> None:
    """The app's own answer to a body no route takes is given an empty body once, then the
    server's receive: a response that listens for the disconnect (Starlette's file
    responses under ASGI 2.3) waits for it instead of spinning on empty pieces."""

    async def listens(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive()) == {"type": "http.request", "body": b"", "more_body": False}
        for _ in range(10):  # a receive that never waits would spin here for good
            if (await receive())["type"] == "http.disconnect":
                break
        else:
            raise AssertionError("receive kept answering without waiting for the disconnect")
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    pieces: list[Message] = [
        {"type": "http.request", "body": b"x" * 3000, "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return pieces.pop(0)

    async def scenario() -> None:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        limits = BodyLimits(1000, overhead_bytes=0, uploads={})
        middleware = BodySizeLimitMiddleware(listens, limits, router=Router(routes=[]))
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/nowhere",
            "headers": [(b"content-length", b"3000")],
        }
        with anyio.fail_after(5):
            await middleware(scope, receive, send)
        assert sent[0]["status"] == 404 and not pieces

    anyio.run(scenario)


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


# --- UploadGateMiddleware: bytes of bodies in flight, and bodies that stop arriving ---

DECLARED = 3 * CHUNK
POST = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"3000")]}
CHUNKED = {**POST, "headers": [(b"transfer-encoding", b"chunked")]}
GET = {"type": "http", "method": "GET", "path": "/health/ready", "headers": []}
# What one POST above reserves: its declared length and the per-body overhead.
RESERVED = DECLARED + BODY_OVERHEAD_BYTES


def gate(app, *, max_bytes: int = RESERVED, timeout_s: float = 10.0) -> UploadGateMiddleware:
    """The gate, with POST's path among the routes that parse a form."""
    limits = BodyLimits(10 * CHUNK, overhead_bytes=0, uploads={}, form_paths=["/"])
    return UploadGateMiddleware(app, limits, max_bytes, timeout_s)


def body_of(chunks: int):
    """A ``receive`` that gives ``chunks`` chunks of the body; returns it and a read count."""
    consumed = [0]

    async def receive() -> Message:
        consumed[0] += 1
        more = consumed[0] < chunks
        return {"type": "http.request", "body": b"\0" * CHUNK, "more_body": more}

    return receive, consumed


def stalls_after(chunks: int):
    """A ``receive`` that gives ``chunks`` chunks with more to come, then nothing ever."""
    consumed = [0]

    async def receive() -> Message:
        if consumed[0] >= chunks:
            await anyio.sleep_forever()
        consumed[0] += 1
        return {"type": "http.request", "body": b"\0" * CHUNK, "more_body": True}

    return receive


def collector() -> tuple[list[Message], Send]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    return sent, send


def test_gate_refuses_a_body_past_its_budget_and_passes_requests_without_one() -> None:
    async def scenario() -> None:
        entered, release = anyio.Event(), anyio.Event()

        async def held(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["method"] == "POST" and not entered.is_set():
                entered.set()
                await release.wait()
            await read_all(scope, receive, send)

        # Room for two such bodies, less one byte: the first fills it.
        middleware = gate(held, max_bytes=2 * RESERVED - 1)
        first, send_first = collector()
        async with anyio.create_task_group() as group:
            group.start_soon(middleware, POST, body_of(3)[0], send_first)
            await entered.wait()
            assert middleware.reserved == RESERVED
            # Past the budget: 503 with Retry-After, the body read to its end and dropped
            # (the connection can carry another request).
            receive, consumed = body_of(3)
            refused, send = collector()
            await middleware(POST, receive, send)
            assert consumed[0] == 3 and refused[0]["status"] == 503 and not closes(refused)
            headers = dict(refused[0]["headers"])
            assert headers[b"retry-after"] == b"1"
            assert headers[b"content-type"] == b"application/problem+json"
            problem = json.loads(refused[1]["body"])
            assert problem["status"] == 503
            assert "VISION_MAX_BODY_BYTES_IN_FLIGHT" in problem["detail"]
            # Refused and stalling: 503, closed (the rest of the body may still come).
            short = gate(held, max_bytes=RESERVED, timeout_s=0.05)
            short.reserved = 1  # as if something else were in flight
            refused, send = collector()
            await short(POST, stalls_after(1), send)
            assert refused[0]["status"] == 503 and closes(refused)
            # A request without a body (a probe) reserves nothing and passes.
            probe, send = collector()
            await middleware(GET, body_of(1)[0], send)
            assert probe[0]["status"] == 200
            release.set()
        assert first[0]["status"] == 200 and middleware.reserved == 0
        # The room is free again.
        again, send = collector()
        await middleware(POST, body_of(3)[0], send)
        assert again[0]["status"] == 200

    anyio.run(scenario)


def test_gate_refuses_a_client_waiting_for_100_continue_unread() -> None:
    """Past the budget, a client that waits for 100 Continue is answered 503 at once, its
    body unread (it has sent none), and the connection closed."""

    async def scenario() -> None:
        expecting = [*POST["headers"], (b"expect", b"100-continue")]
        middleware = gate(read_all, max_bytes=RESERVED)
        middleware.reserved = 1  # as if something else were in flight
        receive, consumed = body_of(3)
        sent, send = collector()
        await middleware({**POST, "headers": expecting}, receive, send)
        assert consumed[0] == 0 and sent[0]["status"] == 503 and closes(sent)

    anyio.run(scenario)


def test_a_body_over_the_path_limit_reserves_nothing_and_gets_its_413() -> None:
    """The size limit (inside the gate) reads and drops such a body: it holds no memory, so
    it passes a full gate and the client learns the real reason."""

    async def scenario() -> None:
        limits = BodyLimits(10 * CHUNK, overhead_bytes=0, uploads={})
        inner = BodySizeLimitMiddleware(read_all, limits)
        middleware = UploadGateMiddleware(inner, limits, RESERVED, 10.0)
        middleware.reserved = RESERVED  # full
        over = {**POST, "headers": [(b"content-length", str(20 * CHUNK).encode())]}
        receive, consumed = body_of(20)
        sent, send = collector()
        await middleware(over, receive, send)
        assert sent[0]["status"] == 413 and consumed[0] == 20 and not closes(sent)
        assert middleware.reserved == RESERVED

    anyio.run(scenario)


def test_a_refusal_inside_gives_the_reservation_back_before_it_drains() -> None:
    """Admission's 503 (a full model queue) and the size limit's 413 read and drop the body,
    which holds no memory: ``release_body`` frees the request's share first, once."""

    async def scenario() -> None:
        seen: list[int] = []

        async def drains(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(middleware.reserved)
            release_body(scope)
            release_body(scope)  # a second call gives nothing more back
            seen.append(middleware.reserved)
            await read_all(scope, receive, send)

        middleware = gate(drains, max_bytes=10**9)
        middleware.reserved = 5  # another request's share
        sent, send = collector()
        await middleware(POST, body_of(3)[0], send)
        assert seen == [5 + RESERVED, 5] and middleware.reserved == 5
        assert sent[0]["status"] == 200

    anyio.run(scenario)


def test_gate_reserves_the_path_limit_for_a_body_of_unknown_length() -> None:
    async def scenario() -> None:
        seen: list[int] = []
        middleware = gate(read_all, max_bytes=10**9)

        async def records(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(middleware.reserved)
            await read_all(scope, receive, send)

        middleware.app = records
        for scope in (POST, CHUNKED):
            sent, send = collector()
            await middleware(scope, body_of(3)[0], send)
            assert sent[0]["status"] == 200
        # Declared 3000 bytes; chunked: the path's whole limit (10 chunks).
        assert seen == [RESERVED, 10 * CHUNK + BODY_OVERHEAD_BYTES]
        # Alone, a body larger than the whole budget still passes: one at a time.
        sent, send = collector()
        await gate(read_all, max_bytes=1)(POST, body_of(3)[0], send)
        assert sent[0]["status"] == 200

    anyio.run(scenario)


@pytest.mark.parametrize(
    "coding", [b"gzip, chunked", b"deflate,chunked", b"chunked", b"Chunked", b"chunked, gzip"]
)
def test_gate_refuses_a_transfer_coding_besides_chunked_with_its_body_drained(
    coding: bytes,
) -> None:
    """The HTTP parser frames ``gzip, chunked`` as chunked and passes the body still
    compressed, which the app would call a broken form: the gate answers 400 naming the
    coding, reads the body to its end (the connection stays usable) and never calls the
    app. Chunked alone, in any case, passes. (``chunked, gzip`` never gets here: the parser
    refuses a body whose last coding is not chunked; the gate would refuse it too.)"""

    async def scenario() -> None:
        scope = {**POST, "headers": [(b"transfer-encoding", coding)]}
        receive, consumed = body_of(3)
        sent, send = collector()
        await gate(read_all, max_bytes=10**9)(scope, receive, send)
        assert consumed[0] == 3 and not closes(sent)
        if coding.lower() == b"chunked":
            assert sent[0]["status"] == 200
            return
        assert sent[0]["status"] == 400
        problem = json.loads(sent[1]["body"])
        assert problem["type"].endswith(":unsupported-transfer-coding")
        assert coding.decode().split(",")[0] in problem["detail"]

    anyio.run(scenario)


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"identity, gzip", b"identity", b"IDENTITY"])
@pytest.mark.parametrize("path", ["/", "/v2/models/m/infer"])
def test_gate_refuses_a_form_with_a_content_coding_with_its_body_drained(
    coding: bytes, path: str
) -> None:
    """A form route reads its body as sent: a gzipped form would be a broken one, a plain
    form labelled br read against its label. The gate answers 415 with Accept-Encoding:
    identity, reads the body to its end and never calls the app. Identity passes, and so
    does any coding on a route that parses no form (a V2 body, inflated by its route)."""

    async def scenario() -> None:
        scope = {**POST, "path": path, "headers": [*POST["headers"], (b"content-encoding", coding)]}
        receive, consumed = body_of(3)
        sent, send = collector()
        await gate(read_all, max_bytes=10**9)(scope, receive, send)
        assert consumed[0] == 3 and not closes(sent)
        if coding.lower() == b"identity" or path != "/":
            assert sent[0]["status"] == 200
            return
        assert sent[0]["status"] == 415
        assert (b"accept-encoding", b"identity") in sent[0]["headers"]
        problem = json.loads(sent[1]["body"])
        assert problem["type"].endswith(":unsupported-media-type")
        assert problem["detail"].startswith(f"the form's Content-Encoding is '{coding.decode()}'")

    anyio.run(scenario)


def form_end_of(body: bytes, pieces: list[int]) -> bool | None:
    """FormEnd's verdict on ``body`` fed in pieces that end at the offsets ``pieces``."""
    end = FormEnd(b"bound")
    starts = [0, *pieces]
    for start, stop in zip(starts, [*pieces, len(body)], strict=True):
        end.feed(body[start:stop], last=stop == len(body))
    return end.closed


def test_form_end_finds_the_close_delimiter_wherever_the_pieces_split_it() -> None:
    closed = b"--bound\r\nContent-Disposition: form-data; name=a\r\n\r\nxy\r\n--bound--\r\n"
    for cut in range(len(closed) + 1):  # every split in two, empty pieces too
        assert form_end_of(closed, [cut]) is True, cut
    assert form_end_of(closed, list(range(1, len(closed)))) is True  # a byte at a time
    assert form_end_of(closed + b"an epilogue, ignored by the parser", [7]) is True
    assert form_end_of(b"--bound--", []) is True  # a form of no parts
    for unclosed in (closed[:-4], closed[:-9], b"--bound\r\n\r\nxy--bound--", b""):
        assert form_end_of(unclosed, [3]) is False, unclosed
    # Two hyphens short of the close, a delimiter of another part does not count.
    assert form_end_of(closed.replace(b"--bound--", b"--bound\r\n"), []) is False


def test_form_end_watches_multipart_forms_with_a_boundary_only() -> None:
    def scope(content_type: bytes) -> Scope:
        return {**POST, "headers": [(b"content-type", content_type)]}

    end = FormEnd.of(scope(b'multipart/form-data; boundary="a b"'))
    assert end is not None and end.delimiter == b"\r\n--a b--"
    assert FormEnd.of(scope(b"multipart/form-data")) is None
    assert FormEnd.of(scope(b"application/json")) is None
    assert FormEnd.of(POST) is None


def pieces_of(pieces: list[bytes]) -> Receive:
    """A ``receive`` that gives (and takes from) ``pieces``, the last one ending the body."""

    async def receive() -> Message:
        body = pieces.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pieces)}

    return receive


async def answers_or_refuses(scope: Scope, receive: Receive, send: Send) -> None:
    """``read_all``, with a 400 of its own when reading the body raises (FastAPI's way)."""
    try:
        await read_all(scope, receive, send)
    except Exception:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"bad body"})


def test_gate_answers_a_form_without_its_close_delimiter_with_400() -> None:
    """The gate raises into the app in place of the last piece (the form parser closes the
    file it was writing), drops the app's answer and sends its own 400; the body was read
    to its end, so the connection stays open. Closed, the form reaches the app's answer."""

    async def scenario() -> None:
        form = (b"content-type", b"multipart/form-data; boundary=b")
        scope = {**POST, "headers": [*POST["headers"], form]}
        for last, status in ((b"\r\n--b--\r\n", 200), (b"\r\n--b\r\n", 400)):
            pieces = [b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n", b"x" * 99, last]
            receive = pieces_of(pieces)
            sent, send = collector()
            await gate(answers_or_refuses, max_bytes=10**9)(scope, receive, send)
            assert sent[0]["status"] == status and not pieces and not closes(sent)
            if status == 400:
                problem = json.loads(sent[1]["body"])
                assert problem["type"].endswith(":unclosed-multipart-body")
                assert "'--b--'" in problem["detail"]
        # A route that reads no form (V2 infer reads JSON whatever the label) gets the body.
        elsewhere = {**scope, "path": "/v2/models/m/infer"}
        sent, send = collector()
        await gate(read_all, max_bytes=10**9)(elsewhere, pieces_of([b"{}"]), send)
        assert sent[0]["status"] == 200
        # A refusal inside (admission's 503) that drops the body keeps its own answer.

        async def refuses(scope: Scope, receive: Receive, send: Send) -> None:
            release_body(scope)
            await read_all(scope, receive, lambda message: anyio.sleep(0))
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"busy"})

        sent, send = collector()
        await gate(refuses, max_bytes=10**9)(scope, pieces_of([b"--b\r\n", b"x"]), send)
        assert sent[0]["status"] == 503
        # So does the gate's own (its budget full), and a transfer coding's 400.
        full = gate(read_all, max_bytes=RESERVED)
        full.reserved = 1  # as if something else were in flight
        sent, send = collector()
        await full(scope, pieces_of([b"--b\r\n", b"x"]), send)
        assert sent[0]["status"] == 503
        coded = {**scope, "headers": [*scope["headers"], (b"transfer-encoding", b"gzip, chunked")]}
        sent, send = collector()
        await gate(read_all, max_bytes=10**9)(coded, pieces_of([b"--b\r\n", b"x"]), send)
        assert json.loads(sent[1]["body"])["type"].endswith(":unsupported-transfer-coding")

    anyio.run(scenario)


def test_a_body_that_stops_arriving_gets_408_and_its_connection_closed() -> None:
    async def scenario() -> None:
        again: list[float] = []

        async def reads_again(scope: Scope, receive: Receive, send: Send) -> None:
            # swallow_errors answers the cut-off body with its own 400, as FastAPI does:
            # dropped. A second read after the stall fails at once, with no second wait.
            await swallow_errors(scope, receive, send)
            started = time.monotonic()
            with pytest.raises(BodyStalled):
                await receive()
            again.append(time.monotonic() - started)

        # The second read fails at once, not after another timeout: a quarter of one apart
        # leaves room for a busy machine's pauses.
        middleware = gate(reads_again, timeout_s=0.4)
        sent, send = collector()
        started = time.monotonic()
        await middleware(POST, stalls_after(2), send)
        assert time.monotonic() - started >= 0.4 and again[0] < 0.1
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 408 and closes(sent)
        problem = json.loads(sent[1]["body"])
        assert problem["status"] == 408 and problem["type"].endswith("request-timeout")
        assert middleware.reserved == 0

    anyio.run(scenario)


def test_the_timeout_leaves_waits_after_the_body_alone() -> None:
    """Once the body is complete, an app waiting on ``receive`` for a disconnect (as the
    batcher's watch does) may wait longer than the body timeout."""

    async def scenario() -> None:
        calls = 0

        async def receive() -> Message:
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": b"x" * 3000, "more_body": False}
            await anyio.sleep(0.2)
            return {"type": "http.disconnect"}

        async def waits_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
            await read_all(scope, receive, lambda message: anyio.sleep(0))
            assert (await receive())["type"] == "http.disconnect"
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        sent, send = collector()
        await gate(waits_for_disconnect, timeout_s=0.05)(POST, receive, send)
        assert sent[0]["status"] == 200

    anyio.run(scenario)


def test_the_gate_needs_a_positive_budget_and_timeout() -> None:
    for bad in ({"max_body_bytes_in_flight": 0}, {"body_timeout_s": 0}, {"body_timeout_s": "nan"}):
        with pytest.raises(ValidationError):
            Settings(**bad)


STALLED_BODY = 100_000  # bytes a stalled upload declares


def stalled_upload(port: int) -> socket.socket:
    """A raw connection that sends a /recognize form's first kilobyte of a 100 kB body,
    then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    part = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + b"\xff" * 1000
    )
    head = (
        b"POST /recognize HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: multipart/form-data; boundary=B\r\n"
        b"Content-Length: %d\r\n\r\n" % STALLED_BODY
    )
    sock.sendall(head + part)
    return sock


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sent until it closed. A server that closes with input unread
    resets the connection; what had arrived before the reset still stands."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def in_flight(client: httpx.Client) -> float:
    return samples(client.get("/metrics").text)[("vision_http_requests_in_flight", ())]


def test_stalled_uploads_fill_the_gate_then_get_408_over_real_tcp(tmp_path: Path) -> None:
    """The entry command as its own process: two uploads that stop mid-body fill the
    budget, a third upload is refused 503 at once while probes still pass, and after the
    body timeout both stalled clients read a 408 and are disconnected; then uploads pass."""
    timeout_s = 4.0
    budget = 2 * (STALLED_BODY + BODY_OVERHEAD_BYTES)
    env = process_env(
        tmp_path,
        VISION_MAX_BODY_BYTES_IN_FLIGHT=str(budget),
        VISION_BODY_TIMEOUT_S=str(timeout_s),
    )
    good = {"image": ("s.png", encode(scene()), "image/png")}
    with (
        live_process(env, tmp_path / "stderr.log") as served,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        started = time.monotonic()
        stalled = [stalled_upload(served.port) for _ in range(2)]
        try:
            deadline = started + timeout_s / 2
            while in_flight(client) < 2:  # both are in the app, parsing their forms
                assert time.monotonic() < deadline, "the stalled uploads never arrived"
                time.sleep(0.02)
            refused = client.post("/recognize", files=good)
            assert time.monotonic() - started < timeout_s  # before either timed out
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["type"].endswith(":overloaded")
            assert client.get("/health/ready").status_code == 200
            answers = [read_to_close(sock) for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()
        assert time.monotonic() - started >= timeout_s
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"connection: close" in answer.lower()
            assert b"VISION_BODY_TIMEOUT_S" in answer
        assert client.post("/recognize", files=good).status_code == 200


def test_a_client_gone_mid_body_is_counted_499_not_400_over_real_tcp(tmp_path: Path) -> None:
    """An upload whose client disconnects half-way is the client's doing: FastAPI's form
    parser made a 400 of the cut-off body, which the metrics and the access log counted
    as a bad request; a V2 infer's body read as a stream made a 500 with two tracebacks."""
    with (
        live_process(process_env(tmp_path), tmp_path / "stderr.log") as served,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        for _ in range(2):
            stalled_upload(served.port).close()
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as v2:
            v2.sendall(
                b"POST /v2/models/landmark/infer HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                b'{"inputs":'
            )
        deadline = time.monotonic() + 10
        while True:
            counted = {
                labels: value
                for (name, labels), value in samples(client.get("/metrics").text).items()
                if name == "vision_http_requests_total" and ("endpoint", "/recognize") in labels
            }
            statuses = {dict(labels)["status"]: value for labels, value in counted.items()}
            v2_statuses = {
                dict(labels)["status"]: value
                for (name, labels), value in samples(client.get("/metrics").text).items()
                if name == "vision_http_requests_total"
                and ("endpoint", "/v2/models/{name}/infer") in labels
            }
            done = sum(statuses.values()) >= 2 and sum(v2_statuses.values()) >= 1
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert statuses == {"499": 2.0} and v2_statuses == {"499": 1.0}
    log = served.stderr.read_text()
    access = [line for line in log.splitlines() if "POST /recognize" in line]
    assert len(access) == 2 and all(" 499 " in line for line in access), access
    assert "Traceback" not in log and " ERROR " not in log, log


def test_uploads_without_a_key_do_not_hold_the_budget_over_real_tcp(tmp_path: Path) -> None:
    """With API keys set, two keyless uploads that stop mid-body would fill a two-body
    budget if they reserved it (FastAPI reads a form before the route's key check). The gate
    answers them 401 without reserving: a keyed upload meanwhile gets 200, not 503, and each
    keyless client reads its 401 when its body times out."""
    timeout_s = 3.0
    env = process_env(
        tmp_path,
        VISION_API_KEYS='["k1"]',
        VISION_MAX_BODY_BYTES_IN_FLIGHT=str(2 * (STALLED_BODY + BODY_OVERHEAD_BYTES)),
        VISION_BODY_TIMEOUT_S=str(timeout_s),
    )
    good = {"image": ("s.png", encode(scene()), "image/png")}
    with (
        live_process(env, tmp_path / "stderr.log") as served,
        httpx.Client(base_url=served.url, timeout=30, headers={"X-API-Key": "k1"}) as client,
    ):
        stalled = [stalled_upload(served.port) for _ in range(2)]
        try:
            deadline = time.monotonic() + timeout_s / 2
            while in_flight(client) < 2:  # both are past their heads, in the middlewares
                assert time.monotonic() < deadline, "the stalled uploads never arrived"
                time.sleep(0.02)
            assert client.post("/recognize", files=good).status_code == 200
            answers = [read_to_close(sock) for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()
        refusals = samples(client.get("/metrics").text)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b"www-authenticate: bearer" in answer.lower()
    assert refusals[("vision_request_bodies_refused_total", (("reason", "unauthorized"),))] == 2


def test_a_reservation_grows_within_the_budget_or_is_refused() -> None:
    """What a body becomes beyond its bytes (a gzip V2 body inflated) is covered by its
    reservation: grown from a declared length, never shrunk; alone it may pass the budget
    (one at a time is always served), beside another request's reservation only within
    it; refused, it is a 503 and nothing leaks. Each outcome: the gate's total after it."""

    async def scenario() -> None:
        held = anyio.Event()
        release = anyio.Event()
        outcomes: list[str] = []
        middleware = gate(None, max_bytes=3 * RESERVED)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            if scope["path"] == "/hold":
                held.set()
                await release.wait()
            else:
                for size in scope["sizes"]:
                    try:
                        reserve_at_least(scope, size, "the inflated body")
                        outcomes.append(str(middleware.reserved))
                    except Overloaded as error:
                        outcomes.append(f"503 {error.detail[:23]}")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware.app = app
        alone = {**POST, "path": "/grow", "sizes": [10 * DECLARED, 0]}
        await middleware(alone, body_of(1)[0], collector()[1])
        big = str(10 * DECLARED + BODY_OVERHEAD_BYTES)
        assert outcomes == [big, big] and middleware.reserved == 0  # grown, not shrunk
        outcomes.clear()
        async with anyio.create_task_group() as group:
            group.start_soon(middleware, {**POST, "path": "/hold"}, body_of(1)[0], collector()[1])
            await held.wait()
            beside = {**POST, "path": "/grow", "sizes": [DECLARED // 2, 2 * DECLARED, 2 * RESERVED]}
            await middleware(beside, body_of(1)[0], collector()[1])
            release.set()
        grown = str(RESERVED + 2 * DECLARED + BODY_OVERHEAD_BYTES)
        assert outcomes == [str(2 * RESERVED), grown, "503 the inflated body takes"]
        assert middleware.reserved == 0

    anyio.run(scenario)
