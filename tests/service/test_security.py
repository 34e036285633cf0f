"""Security hardening: request IDs, logs that hold no secrets or image bytes, constant-time
API-key checks, a /metrics that may be opened, model names checked against the loaded set,
and error bodies without file paths or tracebacks."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from service import dependencies
from service.logs import ACCESS_LOGGER, uvicorn_log_config
from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.fakes import write_model
from tests.service.images import encode, scene

KEYS = ["first-key-0123456789", "second-key-abcdef"]
LEAKS = re.compile(r"Traceback|File \"|\.py\b")


@pytest.fixture
def keyed(repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(repo, api_keys=KEYS))) as client:
        yield client


# --- request IDs --------------------------------------------------------------------


def test_every_response_has_a_request_id(client: TestClient) -> None:
    ids = {client.get("/health/live").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    for response in (
        client.get("/no/such/path"),
        client.post("/recognize", files={"image": ("a.txt", b"x", "text/plain")}),
        client.post("/recognize", content=b"\0" * 30_000_000),  # 413 from the size limit
    ):
        assert response.status_code in (404, 413, 415)
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_a_sane_caller_id_is_echoed_and_an_odd_one_replaced(client: TestClient) -> None:
    sane = "trace-42.abc:DEF_9"
    assert (
        client.get("/health/live", headers={"X-Request-ID": sane}).headers["x-request-id"] == sane
    )
    for odd in ("has spaces in it", "x" * 200, "semi;colon", "<script>"):
        echoed = client.get("/health/live", headers={"X-Request-ID": odd}).headers["x-request-id"]
        assert echoed != odd and re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_log_records_carry_the_request_id_and_no_key_or_image_bytes(
    repo: Path, json_log: io.StringIO
) -> None:
    marker = "SECRET-PIXELS-7f3a"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", marker * 50)
    image = encode(Image.fromarray(scene()), "PNG", pnginfo=info)
    settings = make_settings(repo, api_keys=KEYS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = {"X-API-Key": KEYS[1]}
        ok = client.post("/recognize", files={"image": ("a.png", image, "image/png")}, headers=key)
        bad = client.post(
            "/recognize",
            files={"image": ("a.png", marker.encode() * 100, "image/png")},
            headers={"Authorization": f"Bearer {KEYS[0]}", "X-Request-ID": "req-bad-1"},
        )
        wrong = client.get("/models", headers={"X-API-Key": "wrong-" + KEYS[0]})
    assert (ok.status_code, bad.status_code, wrong.status_code) == (200, 400, 401)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == ACCESS_LOGGER]
    by_id = {line["request_id"]: line for line in access}
    assert by_id[ok.headers["x-request-id"]]["status"] == 200
    assert by_id["req-bad-1"] == {**by_id["req-bad-1"], "path": "/recognize", "status": 400}
    assert by_id[wrong.headers["x-request-id"]]["status"] == 401
    assert all(isinstance(line["duration_ms"], float) for line in access)
    # The message alone (all the text format shows) carries the duration and the stages.
    ok_line = by_id[ok.headers["x-request-id"]]
    assert ok_line["message"].startswith(f"POST /recognize 200 {ok_line['duration_ms']:.2f} ms ")
    assert f"decode_ms={ok_line['decode_ms']}" in ok_line["message"]
    text = json_log.getvalue()
    assert marker not in text and "SECRET" not in text
    assert not any(key in text for key in KEYS)


def test_control_characters_in_a_path_cannot_forge_log_lines(
    client: TestClient, json_log: io.StringIO
) -> None:
    client.get("/models%0aFAKE%20200")
    (line,) = [json.loads(x) for x in json_log.getvalue().splitlines() if "FAKE" in x]
    assert line["path"] == "/models\\x0aFAKE 200"


def test_uvicorn_log_config_routes_every_logger_through_the_json_formatter() -> None:
    config = uvicorn_log_config("json", "INFO")
    assert config["formatters"]["default"]["()"] == "service.logs.JsonFormatter"
    assert config["root"]["handlers"] == ["default"]
    # The access line is ours (with the request ID); uvicorn's is silenced.
    assert config["loggers"]["uvicorn.access"]["level"] == "WARNING"


# --- API keys -----------------------------------------------------------------------


def test_keys_are_compared_in_constant_time(
    keyed: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real = dependencies.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(dependencies.hmac, "compare_digest", spy)
    for presented, status in (
        (KEYS[0], 200),
        (KEYS[1], 200),
        (KEYS[0][:-1], 401),
        ("x", 401),
        ("y" * 500, 401),
    ):
        calls.clear()
        assert keyed.get("/models", headers={"X-API-Key": presented}).status_code == status
        # Every key is compared, whichever matched, and always as equal-length digests.
        assert calls == [(32, 32)] * len(KEYS)


def test_metrics_can_be_left_open_to_a_scraper_without_a_key(repo: Path) -> None:
    settings = make_settings(repo, api_keys=KEYS, metrics_require_key=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/models").status_code == 401
        assert client.get("/health/ready").status_code == 200


def test_metrics_need_a_key_by_default(keyed: TestClient) -> None:
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200


# --- model names and error bodies ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/models/../landmark/reload",
        "/models/..%2F..%2Fetc%2Fpasswd/reload",
        "/models/%2e%2e/reload",
        "/models/..%5Clandmark/reload",
        "/models/landmark%00/reload",
        "/models/landmark%2F1/reload",
        "/models/config.json/reload",
    ],
)
def test_model_names_in_urls_are_checked_against_the_loaded_set(
    client: TestClient, path: str
) -> None:
    response = client.post(path)
    assert response.status_code in (404, 405), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "/tmp" not in response.text and not LEAKS.search(response.text)


@pytest.mark.parametrize(
    "name", ["..%2Flandmark", "landmark%2F..%2F..", "%2e%2e", "landmark%00", "config.json"]
)
def test_v2_model_names_are_checked_against_the_loaded_set(client: TestClient, name: str) -> None:
    for response in (
        client.get(f"/v2/models/{name}"),
        client.post(f"/v2/models/{name}/infer", json={"inputs": []}),
    ):
        assert response.status_code == 404, response.text
        assert "/tmp" not in response.text and not LEAKS.search(response.text)


def test_failure_reasons_show_no_server_paths(tmp_path: Path) -> None:
    write_model(tmp_path, file_bytes=b"not onnx at all")  # digest mismatch
    write_model(tmp_path, "other", graph=None, config_changes={"sha256": "0" * 64})
    (tmp_path / "empty").mkdir()
    with TestClient(create_app(make_settings(tmp_path))) as client:
        answers = [
            client.get("/health/ready"),
            client.get("/models"),
            client.post("/recognize", files={"image": ("a.png", encode(scene()), "image/png")}),
            client.get("/v2/health/ready"),
        ]
    for response in answers:
        assert response.status_code in (200, 503)
        assert str(tmp_path) not in response.text and not LEAKS.search(response.text)
    assert "sha256" in answers[0].text and "empty" in answers[0].text
