"""service/origin.py: without API keys, a request that changes something and that a browser
says comes from another site is refused; everything else passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import make_settings

RELOAD = "/models/landmark/reload"


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
    ],
)
def test_a_cross_site_change_is_refused_without_keys(
    client: TestClient, headers: dict[str, str]
) -> None:
    refused = client.post(RELOAD, headers=headers)
    assert refused.status_code == 403, refused.text
    problem = refused.json()
    assert problem["type"].endswith(":forbidden") and "VISION_API_KEYS" in problem["detail"]
    assert refused.headers["connection"] == "close"


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, the Python client: no browser headers
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},  # the /ui page
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Sec-Fetch-Site": "same-site", "Origin": "http://ui.testserver"},
        {"Origin": "http://testserver"},  # an older browser, same origin
    ],
)
def test_same_origin_and_non_browser_changes_pass(
    client: TestClient, headers: dict[str, str]
) -> None:
    assert client.post(RELOAD, headers=headers).status_code == 200


def test_reads_from_another_site_pass(client: TestClient) -> None:
    assert client.get("/models", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_with_keys_the_key_decides(repo: Path) -> None:
    """A cross-site page cannot send a key (a custom header needs a preflight this server
    never grants); one that has the key is a client like any other."""
    settings = make_settings(repo, api_keys=["k"])
    with TestClient(create_app(settings)) as keyed:
        cross = {"Sec-Fetch-Site": "cross-site"}
        assert keyed.post(RELOAD, headers=cross).status_code == 401
        assert keyed.post(RELOAD, headers={**cross, "X-API-Key": "k"}).status_code == 200
