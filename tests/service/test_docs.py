"""/docs and /redoc load every asset from the service itself, never from a CDN."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_pages_use_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", response.text)
        assert urls, page
        for url in urls:
            assert not url.startswith(("http:", "https:", "//")), (page, url)
            assert client.get(url).status_code == 200, (page, url)
    assert "cdn" not in client.get("/docs").text.lower()
    assert "fonts.googleapis" not in client.get("/redoc").text


def test_assets_are_the_real_bundles(client: TestClient) -> None:
    swagger = client.get("/docs-assets/swagger-ui-bundle.js")
    assert swagger.status_code == 200 and len(swagger.content) > 500_000
    assert "javascript" in swagger.headers["content-type"]
    assert len(client.get("/docs-assets/redoc.standalone.js").content) > 500_000
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_docs_need_no_api_key(settings_for, repo) -> None:  # type: ignore[no-untyped-def]
    from service.main import create_app

    with TestClient(create_app(settings_for(repo, api_keys=["k"]))) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/docs-assets/swagger-ui.css").status_code == 200
        assert client.get("/openapi.json").status_code == 200
