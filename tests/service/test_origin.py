"""service/origin.py: without API keys, a request that changes something and that a browser
says comes from a page other than the server's own is refused; everything else passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import make_settings

RELOAD = "/models/landmark/reload"
# TestClient's requests say Host: testserver, a name a browser page could be rebound under.
LOCAL = "http://127.0.0.1:8000"


@pytest.fixture
def local(repo: Path) -> Iterator[TestClient]:
    """A keyless server reached as a user's browser reaches `make run`'s."""
    with TestClient(create_app(make_settings(repo)), base_url=LOCAL) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        # Another port of the same host, or a sibling subdomain: the same site to a browser.
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:3000"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:8000.evil.example"},
        {"Origin": "http://127.0.0.1:3000"},  # an older browser, another port
    ],
)
def test_a_change_from_another_origin_is_refused_without_keys(
    local: TestClient, headers: dict[str, str]
) -> None:
    refused = local.post(RELOAD, headers=headers)
    assert refused.status_code == 403, refused.text
    problem = refused.json()
    assert problem["type"].endswith(":forbidden") and "VISION_API_KEYS" in problem["detail"]
    assert refused.headers["connection"] == "close"


def test_every_operation_that_changes_something_documents_the_403_it_answers(
    local: TestClient,
) -> None:
    """The OpenAPI document lists the origin check's 403 on every POST, each of which a page
    of another site is in fact refused on (a review found it listed on two)."""
    paths = local.get("/openapi.json").json()["paths"]
    posts = {path: ops["post"] for path, ops in paths.items() if "post" in ops}
    assert len(posts) == 9  # the six model endpoints, reload and V2 infer (two paths)
    for path, operation in posts.items():
        assert "403" in operation["responses"], path
        assert "another origin" in operation["responses"]["403"]["description"], path
        url = path.replace("{name}", "landmark").replace("{version}", "1")
        refused = local.post(url, headers={"Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403, (path, refused.text)


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, the Python client: no browser headers
        {"Sec-Fetch-Site": "same-origin", "Origin": LOCAL},  # the /ui page
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Origin": LOCAL},  # an older browser, same origin
        # A proxy that rewrote Host names the one the browser used.
        {"Origin": "http://localhost", "X-Forwarded-Host": "localhost:80"},
    ],
)
def test_the_servers_own_page_and_non_browser_changes_pass(
    local: TestClient, headers: dict[str, str]
) -> None:
    assert local.post(RELOAD, headers=headers).status_code == 200


def test_an_origin_with_the_default_port_is_the_same_origin(repo: Path) -> None:
    """``Host: localhost:80`` and ``Origin: http://localhost`` name one origin."""
    with TestClient(create_app(make_settings(repo)), base_url="http://localhost:80") as client:
        client.headers["host"] = "localhost:80"
        assert client.post(RELOAD, headers={"Origin": "http://localhost"}).status_code == 200


def test_a_page_under_a_name_that_is_not_allowed_is_refused(repo: Path) -> None:
    """DNS rebinding: a page of evil.example re-pointed at this server is same-origin to the
    browser, but its requests name Host evil.example. Names other than IP addresses and
    localhost change something only when VISION_ALLOWED_HOSTS lists them."""
    own = {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example:8000"}
    with TestClient(create_app(make_settings(repo)), base_url="http://evil.example:8000") as c:
        detail = c.post(RELOAD, headers=own).json()["detail"]
        assert "VISION_ALLOWED_HOSTS" in detail and "'evil.example'" in detail
        assert c.post(RELOAD).status_code == 200  # not a browser: no rebinding to fear
    for allowed in (["EVIL.example"], ["*"]):
        settings = make_settings(repo, allowed_hosts=allowed)
        with TestClient(create_app(settings), base_url="http://evil.example:8000") as c:
            assert c.post(RELOAD, headers=own).status_code == 200


def test_reads_from_another_site_pass(local: TestClient) -> None:
    assert local.get("/models", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_with_keys_the_key_decides(repo: Path) -> None:
    """A cross-site page cannot send a key (a custom header needs a preflight this server
    never grants); one that has the key is a client like any other."""
    settings = make_settings(repo, api_keys=["k"])
    with TestClient(create_app(settings)) as keyed:
        cross = {"Sec-Fetch-Site": "cross-site"}
        assert keyed.post(RELOAD, headers=cross).status_code == 401
        assert keyed.post(RELOAD, headers={**cross, "X-API-Key": "k"}).status_code == 200


@pytest.mark.parametrize(
    ("allowed", "host", "forwarded", "status"),
    [
        ([], "localhost.:8000", None, 200),  # a trailing dot is the same name
        (["Gpu-Box.lan:8000"], "gpu-box.lan.:8000", None, 200),  # port, case and dot ignored
        (["bücher.lan"], "xn--bcher-kva.lan:8000", None, 200),  # browsers send IDNA
        # Behind a proxy that rewrites Host, both names it carries must be allowed...
        (["vision", "vision.example.com"], "vision:8000", "vision.example.com", 200),
        (["vision.example.com"], "vision:8000", "vision.example.com", 403),
        # ...so that a rebound page cannot vouch for itself with a local X-Forwarded-Host,
        ([], "rebound.example:8000", "localhost", 403),
        # nor a proxy that sends Host 127.0.0.1 hide the rebound name it forwards.
        ([], "127.0.0.1:8000", "rebound.example", 403),
    ],
)
def test_every_host_name_a_browser_request_carries_must_be_allowed(
    repo: Path, allowed: list[str], host: str, forwarded: str | None, status: int
) -> None:
    headers = {"Host": host, "Sec-Fetch-Site": "same-origin"}
    if forwarded is not None:
        headers["X-Forwarded-Host"] = forwarded
    with TestClient(create_app(make_settings(repo, allowed_hosts=allowed))) as client:
        answer = client.post(RELOAD, headers=headers)
        assert answer.status_code == status, answer.text
