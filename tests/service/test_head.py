"""service/head.py: HEAD answers as GET does, without the body, on every GET path."""

from __future__ import annotations

import asyncio
import io
import json

from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service.head import HeadAsGetMiddleware
from service.logs import ACCESS_LOGGER

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
