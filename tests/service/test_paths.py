"""Behind a mount prefix (``root_path``) the middlewares that act before routing see the
path the router sees."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin

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


@pytest.mark.parametrize(
    ("method", "path", "location", "resolved"),
    [
        ("GET", "/models/", "../models", "/models"),
        ("GET", "/health/ready/?verbose=1", "../ready?verbose=1", "/health/ready?verbose=1"),
        ("GET", "/v2/models/a%20b/", "../a%20b", "/v2/models/a%20b"),  # encoded as it came
        ("POST", "/recognize/", "../recognize", "/recognize"),  # 307 keeps the method
        ("GET", "/ui/", "../ui", "/ui"),
    ],
)
def test_slash_redirects_are_relative_to_what_was_asked(
    client: TestClient, method: str, path: str, location: str, resolved: str
) -> None:
    """Starlette's slash redirect named http://<Host>/models: a forged Host sent the client
    (or a cache) to another site. The relative reference resolves on the URL asked for."""
    response = client.request(
        method, path, headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 307 and response.headers["location"] == location
    target = urljoin(f"http://vision.test{path}", location)
    assert target == f"http://vision.test{resolved}"


def test_slash_redirects_keep_a_mount_prefix(repo: Path) -> None:
    with TestClient(create_app(make_settings(repo)), root_path="/vision") as client:
        response = client.get("/vision/models/", follow_redirects=False)
        assert response.status_code == 307
        assert urljoin("http://h/vision/models/", response.headers["location"]) == (
            "http://h/vision/models"
        )
        assert client.get("/vision/models/").status_code == 200  # followed


@pytest.mark.parametrize(
    "path", ["/nowhere/", "/models/%2F", "/models/x/y/", "/models//", "/health/ready//"]
)
def test_paths_no_slash_change_would_route_stay_404_problems(client: TestClient, path: str) -> None:
    """Two trailing slashes too: Python's urljoin would resolve ../../models wrongly."""
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
