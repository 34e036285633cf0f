"""service/head.py: HEAD answers as GET does, without the body, on every GET path."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service.head import HeadAsGetMiddleware
from service.logs import ACCESS_LOGGER
from tests.live_server import live_process
from tests.service.fakes import process_env

# GET paths without parameters, beyond the OpenAPI schema's (the page and its assets are
# left out of the schema).
UNLISTED_GET_PATHS = ("/ui", "/ui/static/editor.js")


def get_paths(client: TestClient) -> list[str]:
    schema = client.get("/openapi.json").json()
    listed = [p for p, ops in schema["paths"].items() if "get" in ops and "{" not in p]
    return sorted({*listed, *UNLISTED_GET_PATHS, "/openapi.json", "/docs"})


def test_head_is_get_without_the_body(client: TestClient) -> None:
    paths = get_paths(client)
    assert {"/models", "/metrics", "/ui", "/health/ready", "/v2/health/live"} <= set(paths)
    for path in paths:
        got, head = client.get(path), client.head(path)
        assert got.status_code == 200 and got.content, path
        assert head.status_code == 200, path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if "content-length" in got.headers and path not in ("/metrics", "/models"):
            # (Counters and model statistics move between the two requests.)
            assert head.headers["content-length"] == got.headers["content-length"], path


def test_head_of_a_post_only_path_is_405_with_allow(client: TestClient) -> None:
    response = client.head("/recognize")
    assert response.status_code == 405 and response.content == b""
    assert response.headers["allow"] == "POST"


def test_the_access_log_records_head(client: TestClient, json_log: io.StringIO) -> None:
    client.head("/models")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    (access,) = [x for x in lines if x["logger"] == ACCESS_LOGGER and x["path"] == "/models"]
    assert (access["method"], access["status"]) == ("HEAD", 200)


def test_metrics_count_a_head_under_its_route(client: TestClient) -> None:
    """The router's match reaches the metrics outside (a copied scope left it "unmatched")."""
    client.head("/models")
    text = client.get("/metrics").text
    assert 'vision_http_requests_total{endpoint="/models",method="HEAD",status="200"} 1.0' in text
    assert 'endpoint="unmatched",method="HEAD"' not in text


def test_the_middleware_sends_the_headers_and_drops_every_body_chunk() -> None:
    """At the ASGI level (TestClient drops a HEAD's body itself): a streamed GET body of
    two chunks reaches the client as its headers and one empty, final body message."""
    seen_methods: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen_methods.append(scope["method"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part one", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two", "more_body": False})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: Scope = {"type": "http", "method": "HEAD", "path": "/x", "headers": []}
    asyncio.run(HeadAsGetMiddleware(app)(scope, receive, send))
    assert seen_methods == ["GET"] and scope["method"] == "HEAD"
    assert sent == [
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


def test_head_over_real_tcp_keeps_the_connection_and_logs_no_error(tmp_path: Path) -> None:
    """Through the entry command (uvicorn), HEADs answered 200, 404 and 405 on one
    keep-alive connection each send a head and no body, and the GET after them is answered
    on the same connection. uvicorn reads the method from the request's scope as the
    answer goes out; while it read GET there, each HEAD raised "Response content shorter
    than Content-Length" after its head and the connection was dropped."""
    with (
        live_process(process_env(tmp_path), tmp_path / "stderr.log") as served,
        socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock,
    ):
        pending = b""
        for path, status in (("/health/live", 200), ("/models", 200), ("/nope", 404)):
            sock.sendall(b"HEAD %s HTTP/1.1\r\nHost: test\r\n\r\n" % path.encode())
            head, pending = read_head(sock, pending)
            assert head.startswith(b"HTTP/1.1 %d " % status), head
            assert b"connection: close" not in head.lower(), head
        sock.sendall(b"HEAD /recognize HTTP/1.1\r\nHost: test\r\n\r\n")
        head, pending = read_head(sock, pending)
        assert head.startswith(b"HTTP/1.1 405 ") and b"allow: POST" in head, head
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        # No body bytes came after the heads: the next bytes are the GET's answer.
        head, pending = read_head(sock, pending)
        assert head.startswith(b"HTTP/1.1 200 "), head
    log = served.stderr.read_text()
    assert "Exception in ASGI application" not in log and " ERROR " not in log, log


def read_head(sock: socket.socket, pending: bytes) -> tuple[bytes, bytes]:
    """The next answer's head (status line and fields) and the bytes read after it."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a whole head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest
