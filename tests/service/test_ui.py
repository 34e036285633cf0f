"""GET /ui and its assets: served by the service itself, nothing from elsewhere."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

ASSETS = ("/ui/static/editor.js", "/ui/static/editor.css")


def test_page_and_assets_are_served(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ASSETS:
        assert f'"{asset.removeprefix("/")}"' in page.text  # relative: see below
        response = client.get(asset)
        assert response.status_code == 200 and response.text.strip()
    assert client.get("/ui/static/editor.js").headers["content-type"].startswith("text/javascript")


def test_no_asset_comes_from_another_origin(client: TestClient) -> None:
    for path in ("/ui", *ASSETS):
        text = client.get(path).text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert "cdn" not in text.lower() and "@import" not in text


def test_unknown_assets_are_404_problems(client: TestClient) -> None:
    for path in ("/ui/static/../settings.py", "/ui/static/editor.html.bak", "/ui/static/x.js"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")


def test_page_and_assets_forbid_framing_sniffing_and_other_origins(client: TestClient) -> None:
    """What the browser test's CSP check relies on is sent with the page and each asset."""
    for path in ("/ui", "/ui/static/editor.js", "/ui/static/editor.css"):
        headers = client.get(path).headers
        policy = headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert headers["x-content-type-options"] == "nosniff"


def test_the_page_names_no_root_absolute_url(client: TestClient) -> None:
    """Relative URLs only (``ui/static/editor.js``, ``fetch("attention")``), so that behind
    a proxy serving the service under a path prefix the page reaches its own assets and
    API; the browser test opens it under one."""
    for path in ("/ui", "/ui/static/editor.js"):
        text = client.get(path).text
        assert not re.search(r"""(src|href)\s*=\s*["']/""", text), path
        assert not re.search(r"""(fetch|send)\(\s*["'`]/""", text), path


def test_ui_with_a_slash_redirects_relatively(client: TestClient) -> None:
    """/ui/ goes to the page by ../ui, which keeps a proxy's path prefix (Starlette's own
    slash redirect named http://host/ui); every path's slash redirect is in test_paths."""
    response = client.get("/ui/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "../ui"
