"""Behind a mount prefix (``root_path``) the middlewares that act before routing see the
path the router sees."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.paths import route_path
from tests.service.conftest import make_settings
from tests.service.test_api_metrics import samples


@pytest.mark.parametrize(
    ("path", "root", "routed"),
    [
        ("/recognize", "", "/recognize"),
        ("/vision/recognize", "/vision", "/recognize"),
        ("/vision", "/vision", ""),
        ("/visionary/recognize", "/vision", "/visionary/recognize"),  # not under the prefix
        ("/recognize", "/vision", "/recognize"),  # a server that leaves it out of the path
    ],
)
def test_route_path_drops_the_mount_prefix(path: str, root: str, routed: str) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root}) == routed


def test_limits_metrics_and_v2_errors_under_a_mount_prefix(repo: Path) -> None:
    """A two-file form gets its two-file limit (it got the one-file limit's 413), an early
    413 is counted under its endpoint (it was "unmatched"), and a V2 404 carries its
    "error" member (it did not)."""
    app = create_app(make_settings(repo, max_upload_bytes=100_000))
    with TestClient(app, root_path="/vision") as client:
        two = {
            "image": ("a.jpg", b"\xff\xd8" + b"x" * 90_000, "image/jpeg"),
            "mask": ("m.png", b"y" * 90_000, "image/png"),
        }
        assert client.post("/vision/attention/correct", files=two).status_code != 413
        big = client.post("/vision/recognize", content=b"x" * 300_000)
        assert big.status_code == 413
        v2 = client.get("/vision/v2/models/landmark/nowhere")
        assert v2.status_code == 404 and v2.json()["error"] == v2.json()["detail"]
        values = samples(client.get("/vision/metrics").text)
    labels = (("endpoint", "/recognize"), ("method", "POST"), ("status", "413"))
    assert values[("vision_http_requests_total", labels)] == 1
