"""service/head.py: HEAD answers as GET does, without the body, on every GET path."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient

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
        assert head.status_code == 200 and head.content == b"", path
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
