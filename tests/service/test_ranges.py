"""service/ranges.py: the static files answer whole, whatever Range asks."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

STATIC_PATHS = ("/ui", "/ui/static/editor.js", "/docs-assets/favicon.png")


@pytest.mark.parametrize(
    "range_field",
    [
        "bytes=0-1",  # satisfiable: ignored all the same
        "items=0-1",  # an unknown unit, which RFC 9110 asks to be ignored (was a 400)
        "bytes=5-2",  # malformed (was a text/plain 400)
        "bytes=99999999-",  # unsatisfiable (was a 416 with no body)
    ],
)
def test_a_range_request_gets_the_whole_file(client: TestClient, range_field: str) -> None:
    for path in STATIC_PATHS:
        whole = client.get(path)
        ranged = client.get(path, headers={"Range": range_field})
        assert ranged.status_code == 200, (path, ranged.status_code, ranged.text[:80])
        assert ranged.content == whole.content and len(whole.content) > 2, path
        assert "content-range" not in ranged.headers, path


def test_static_files_say_they_take_no_ranges(client: TestClient) -> None:
    for path in STATIC_PATHS:
        assert client.get(path).headers["accept-ranges"] == "none", path
    # Answers that never offered ranges are left without the field.
    assert "accept-ranges" not in client.get("/health/live").headers
