from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.images import encode, scene

KEYS = ["k-one", "k-two"]


@pytest.fixture
def keyed(repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(repo, api_keys=KEYS))) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-one"}],
)
@pytest.mark.parametrize("path", ["/models", "/metrics"])
def test_missing_or_wrong_key_is_401(keyed: TestClient, headers: dict, path: str) -> None:
    response = keyed.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_recognize_needs_a_key(keyed: TestClient) -> None:
    files = {"image": ("a.png", encode(scene()), "image/png")}
    assert keyed.post("/recognize", files=files).status_code == 401
    ok = keyed.post("/recognize", files=files, headers={"X-API-Key": "k-two"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": "k-one"}, {"Authorization": "Bearer k-two"}, {"authorization": "bearer k-one"}],
)
def test_valid_key_in_either_header(keyed: TestClient, headers: dict) -> None:
    assert keyed.get("/models", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("api_key", "bearer", "status"),
    [("k-one", "k-two", 200), ("k-one", "wrong", 401), ("wrong", "k-one", 401)],
)
def test_both_headers_must_hold_valid_keys(
    keyed: TestClient, api_key: str, bearer: str, status: int
) -> None:
    """A wrong key is refused whichever header carries it (X-API-Key used to win)."""
    headers = {"X-API-Key": api_key, "Authorization": f"Bearer {bearer}"}
    assert keyed.get("/models", headers=headers).status_code == status


@pytest.mark.parametrize(
    ("name", "values", "status"),
    [
        ("X-API-Key", ["k-one", "k-two"], 200),
        ("X-API-Key", ["k-one", "wrong"], 401),
        ("X-API-Key", ["wrong", "k-one"], 401),
        ("Authorization", ["Bearer k-one", "Bearer wrong"], 401),
        ("Authorization", ["Bearer k-two", "Bearer k-one"], 200),
    ],
)
def test_a_repeated_header_must_hold_a_valid_key_each_time(
    keyed: TestClient, name: str, values: list[str], status: int
) -> None:
    """Every copy of the header is checked, not only the first."""
    headers = [(name, value) for value in values]
    assert keyed.get("/models", headers=headers).status_code == status


def test_health_docs_and_editor_page_need_no_key(keyed: TestClient) -> None:
    """What README's API_KEYS row lists as open; the page's own API calls carry the key."""
    for path in ("/health/live", "/health/ready", "/openapi.json", "/docs", "/ui"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/ui/static/editor.js").status_code == 200
    assert keyed.post("/attention/correct").status_code == 401


def test_no_keys_configured_means_open(client: TestClient) -> None:
    assert client.get("/models").status_code == 200


ADMIN = "k-admin"


@pytest.fixture
def admin_keyed(repo: Path) -> Iterator[TestClient]:
    settings = make_settings(repo, api_keys=KEYS, admin_api_keys=[ADMIN])
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "wrong"}, 401),
        ({"X-API-Key": "k-one"}, 403),  # a valid key, but not an admin key
        ({"X-API-Key": ADMIN, "Authorization": "Bearer k-one"}, 403),  # both must be admin
        ({"X-API-Key": ADMIN}, 200),
        ({"Authorization": f"Bearer {ADMIN}"}, 200),
    ],
)
def test_reload_needs_an_admin_key_when_admin_keys_are_set(
    admin_keyed: TestClient, headers: dict, status: int
) -> None:
    response = admin_keyed.post("/models/landmark/reload", headers=headers)
    assert response.status_code == status, response.text
    if status != 200:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status
        if status == 403:
            assert problem["type"].endswith(":forbidden") and "admin" in problem["detail"]


def test_an_admin_key_is_a_valid_key_everywhere_else(admin_keyed: TestClient) -> None:
    assert admin_keyed.get("/models", headers={"X-API-Key": ADMIN}).status_code == 200
    files = {"image": ("a.png", encode(scene()), "image/png")}
    assert (
        admin_keyed.post("/recognize", files=files, headers={"X-API-Key": ADMIN}).status_code == 200
    )


def test_admin_keys_alone_guard_reloading_and_leave_the_rest_open(repo: Path) -> None:
    with TestClient(create_app(make_settings(repo, admin_api_keys=[ADMIN]))) as client:
        assert client.get("/models").status_code == 200
        assert client.post("/models/landmark/reload").status_code == 401
        assert (
            client.post("/models/landmark/reload", headers={"X-API-Key": "k-one"}).status_code
            == 401
        )
        reloaded = client.post("/models/landmark/reload", headers={"X-API-Key": ADMIN})
        assert reloaded.status_code == 200


def test_without_admin_keys_any_key_may_reload(keyed: TestClient) -> None:
    assert keyed.post("/models/landmark/reload", headers={"X-API-Key": "k-one"}).status_code == 200


def test_a_feedback_key_is_a_valid_key_but_may_not_reload(repo: Path) -> None:
    settings = make_settings(
        repo, api_keys=KEYS, admin_api_keys=[ADMIN], feedback_api_keys=["k-writer"]
    )
    with TestClient(create_app(settings), headers={"X-API-Key": "k-writer"}) as client:
        assert client.get("/models").status_code == 200
        assert client.post("/models/landmark/reload").status_code == 403
