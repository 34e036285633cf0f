from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from service.runtime import ModelRegistry
from tests.service.conftest import assert_problem, make_settings
from tests.service.fakes import FAKE_CLASS, LABELS, write_model
from tests.service.images import encode, jpeg_tiff, repeated_scans, scene
from tests.service.test_api_metrics import samples


def post_image(
    client: TestClient, data: bytes, content_type: str | None = "image/png", **params: object
):
    file = ("upload.png", data) if content_type is None else ("upload.png", data, content_type)
    return client.post("/recognize", files={"image": file}, params=params)


def test_contract_shape_and_point_in_image_pixels(client: TestClient) -> None:
    # 320x160 letterboxes at scale 0.5 with 40 px bands; the box covers model cell (10, 5),
    # whose centre (44, 84) maps back to (88, 88) in the upload.
    response = post_image(client, encode(scene(320, 160, (80, 80, 96, 96))))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "landmark", "version": "1"}
    assert body["image"] == {"width": 320, "height": 160}
    (landmark,) = body["landmarks"]
    assert set(landmark) == {"class_id", "label", "score", "point"}
    assert landmark["class_id"] == FAKE_CLASS and landmark["label"] == LABELS[FAKE_CLASS]
    assert landmark["score"] == pytest.approx(0.9, abs=1e-3)
    assert landmark["point"] == {"x": 88.0, "y": 88.0}


def test_tall_image_and_jpeg(client: TestClient) -> None:
    # 160x320 (w x h): scale 0.5, pad_x 40; the box covers model cell (row 1, col 10),
    # centred at (84, 12) in model pixels = (88, 24) in the upload.
    response = post_image(client, encode(scene(160, 320, (80, 16, 96, 32)), "JPEG"), "image/jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": 160, "height": 320}
    assert [lm["point"] for lm in body["landmarks"]] == [{"x": 88.0, "y": 24.0}]


def test_min_score_filters(client: TestClient) -> None:
    data = encode(scene())
    assert post_image(client, data, min_score=0.95).json()["landmarks"] == []
    assert len(post_image(client, data).json()["landmarks"]) == 1  # default 0.5
    # The fake gives grey padding cells a weak confidence: visible only at low min_score.
    assert len(post_image(client, data, min_score=0.0).json()["landmarks"]) > 1
    assert post_image(client, data, min_score=1).json()["landmarks"] == []


@pytest.mark.parametrize(("fmt", "content_type"), [("JPEG", "image/jpeg"), ("TIFF", "image/tiff")])
def test_exif_rotated_upload_reports_oriented_size(
    client: TestClient, fmt: str, content_type: str
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(np.zeros((100, 300, 3), np.uint8), fmt, exif=exif)
    body = post_image(client, data, content_type).json()
    assert body["image"] == {"width": 100, "height": 300}


def test_a_jpeg_scan_bomb_is_413_at_once(client: TestClient) -> None:
    """Thousands of repeated progressive scans in a small file: refused before decoding."""
    progressive = encode(np.full((64, 64, 3), 128, np.uint8), "JPEG", progressive=True)
    last_scan, end = progressive.rfind(b"\xff\xda"), progressive.rfind(b"\xff\xd9")
    bomb = progressive[:end] + progressive[last_scan:end] * 1000 + progressive[end:]
    body = assert_problem(post_image(client, bomb, "image/jpeg"), 413)
    assert "scans" in body["detail"]
    assert post_image(client, progressive, "image/jpeg").status_code == 200


def test_a_jpeg_of_empty_segments_is_413(client: TestClient) -> None:
    """Pillow would parse each in Python: 2 M of them (7.6 MiB) took 11.9 s to open."""
    photo = encode(scene(), "JPEG")
    bomb = photo[:2] + b"\xff\xe0\x00\x02" * 5000 + photo[2:]
    body = assert_problem(post_image(client, bomb, "image/jpeg"), 413)
    assert "marker segments" in body["detail"]
    assert post_image(client, photo[:2] + b"\xff\xe0\x00\x02" * 50 + photo[2:]).status_code == 200


def test_a_tiff_of_many_scan_jpeg_strips_is_413(client: TestClient) -> None:
    """The same bomb inside a TIFF, where libtiff would decode 99 scans per strip."""
    bomb = jpeg_tiff([repeated_scans(64, 64, 99)], 64, 64)
    body = assert_problem(post_image(client, bomb, "image/tiff"), 413)
    assert "99 scans" in body["detail"]
    fits = jpeg_tiff([repeated_scans(64, 64, 10)], 64, 64)
    assert post_image(client, fits, "image/tiff").status_code == 200


@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_unknown_content_type_is_sniffed(client: TestClient, content_type: str | None) -> None:
    response = post_image(client, encode(scene()), content_type)
    assert response.status_code == 200, response.text


def test_not_an_image_is_400(client: TestClient) -> None:
    body = assert_problem(post_image(client, b"GIF89a but not really"), 400)
    assert "image" in body["detail"]
    assert_problem(post_image(client, b""), 400)
    truncated = encode(scene(), "JPEG")[:300]
    assert_problem(post_image(client, truncated, "image/jpeg"), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json"])
def test_non_image_content_type_is_415(client: TestClient, content_type: str) -> None:
    assert_problem(post_image(client, b'{"a": 1}', content_type), 415)


@pytest.mark.parametrize("min_score", ["-0.1", "1.5", "abc", "nan", "inf"])
def test_bad_min_score_is_422(client: TestClient, min_score: str) -> None:
    body = assert_problem(post_image(client, encode(scene()), min_score=min_score), 422)
    assert "min_score" in body["detail"]
    if min_score in ("nan", "inf"):
        assert "finite number" in body["detail"], body


def test_a_repeated_query_parameter_is_422(client: TestClient) -> None:
    """FastAPI would keep the last value silently (min_score=2 then 0.5 passed)."""
    response = client.post(
        "/recognize?min_score=2&min_score=0.5",
        files={"image": ("a.png", encode(scene()), "image/png")},
    )
    body = assert_problem(response, 422)
    assert body["detail"] == (
        "query parameter sent more than once: 'min_score' (2 times); send each once"
    )


def test_min_score_in_the_form_is_422_and_unknown_names_pass(client: TestClient) -> None:
    """min_score is a query parameter: in the form FastAPI would drop it for the default.
    Names the endpoint reads nowhere (a cache buster) pass, as before."""
    files = {"image": ("a.png", encode(scene()), "image/png")}
    body = assert_problem(client.post("/recognize", files=files, data={"min_score": "0.9"}), 422)
    assert body["detail"] == (
        "'min_score' sent as a form field; this endpoint reads it as a query parameter"
    )
    response = client.post("/recognize?min_score=0.9&_=1700000000", files=files)
    assert response.status_code == 200, response.text


def test_missing_image_field_is_422(client: TestClient) -> None:
    body = assert_problem(client.post("/recognize", files={"picture": ("a.png", b"x")}), 422)
    assert "image" in body["detail"]
    assert_problem(client.post("/recognize"), 422)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_form_without_its_closing_boundary_is_400_not_a_missing_image(
    client: TestClient, chunked: bool
) -> None:
    """python-multipart drops the part it was reading when the body ends before
    ``--boundary--``, so the image sent would pass for one not sent (422); the same body
    closed, or closed with an epilogue after it (RFC 2046), is answered."""
    part = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + encode(scene()) + b"\r\n"
    )

    def post(body: bytes) -> httpx.Response:
        # In pieces of 1000 bytes (chunked), a delimiter may fall across two of them.
        content = (body[i : i + 1000] for i in range(0, len(body), 1000)) if chunked else body
        headers = {"content-type": "multipart/form-data; boundary=B"}
        return client.post("/recognize", content=content, headers=headers)

    problem = assert_problem(post(part), 400)
    assert problem["type"].endswith(":unclosed-multipart-body") and "'--B--'" in problem["detail"]
    assert post(part + b"--B--\r\n").status_code == 200
    assert post(part + b"--B--\r\nan epilogue").status_code == 200
    # A form of no parts at all is closed; it lacks the image.
    assert_problem(post(b"--B--\r\n"), 422)
    # The 400 alone is the gate's refusal in the metrics.
    refused = ("vision_request_bodies_refused_total", (("reason", "unclosed_form"),))
    assert samples(client.get("/metrics").text)[refused] == 1


def test_a_form_sent_with_a_content_coding_is_415_and_counted(client: TestClient) -> None:
    """Compressed, the form was a 400 for a broken one; labelled br but sent plain, a 200
    read against its label. Both are the 415 now, and the same form plain is answered."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + encode(scene()) + b"\r\n--B--\r\n"
    )
    form = {"content-type": "multipart/form-data; boundary=B"}
    for coding, content in (("gzip", gzip.compress(body)), ("br", body)):
        headers = {**form, "content-encoding": coding}
        response = client.post("/recognize", content=content, headers=headers)
        problem = assert_problem(response, 415)
        assert problem["detail"].startswith(f"the form's Content-Encoding is '{coding}'")
        assert response.headers["accept-encoding"] == "identity"
    assert client.post("/recognize", content=body, headers=form).status_code == 200
    refused = ("vision_request_bodies_refused_total", (("reason", "content_coding"),))
    assert samples(client.get("/metrics").text)[refused] == 2


@pytest.fixture
def small_limit_client(repo: Path) -> Iterator[TestClient]:
    settings = make_settings(repo, max_upload_bytes=10_000, max_image_pixels=50_000)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_upload_over_size_limit_is_413(small_limit_client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    data = encode(noise, "PNG")  # ~30 kB: over the file limit, under the body slack
    assert len(data) > 10_000
    assert_problem(post_image(small_limit_client, data), 413)


def test_body_far_over_limit_is_413_from_content_length(small_limit_client: TestClient) -> None:
    assert_problem(post_image(small_limit_client, b"\0" * 200_000), 413)


def test_streamed_body_without_length_is_cut_off(small_limit_client: TestClient) -> None:
    # Chunked, no Content-Length: only counting the stream can catch it (see test_limits).
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"\0" * 10_000

    response = small_limit_client.post(
        "/recognize",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_problem(response, 413)


def test_too_many_pixels_is_413(small_limit_client: TestClient) -> None:
    data = encode(np.zeros((300, 300, 3), np.uint8), "PNG")  # small file, 90 000 pixels
    body = assert_problem(post_image(small_limit_client, data), 413)
    assert "pixels" in body["detail"]


def test_failed_model_answers_503_with_retry_after(tmp_path: Path) -> None:
    write_model(tmp_path, file_bytes=b"corrupt")
    with TestClient(create_app(make_settings(tmp_path))) as client:
        response = post_image(client, encode(scene()))
        body = assert_problem(response, 503)
        assert int(response.headers["retry-after"]) > 0
        assert "sha256" in body["detail"]


def test_unconfigured_recognize_model_answers_404(repo: Path) -> None:
    with TestClient(create_app(make_settings(repo, recognize_model="other"))) as client:
        response = post_image(client, encode(scene()))
        assert_problem(response, 404)
        assert "retry-after" not in response.headers


def test_a_model_endpoint_answers_503_while_models_load(repo: Path) -> None:
    """Before the lifespan has loaded anything the registry is empty: retry, not 404."""
    with TestClient(create_app(make_settings(repo))) as client:
        loading = ModelRegistry(problem="models are loading")
        client.app.state.registry, served = loading, client.app.state.registry  # type: ignore[attr-defined]
        response = post_image(client, encode(scene()))
        client.app.state.registry = served  # type: ignore[attr-defined]
    body = assert_problem(response, 503)
    assert body["detail"] == "model 'landmark' is not available: models are loading"
    assert int(response.headers["retry-after"]) > 0


def test_a_failed_decode_gives_its_queue_slot_back(small_limit_client: TestClient) -> None:
    # The slot is taken before decoding; a 400 or 413 raised there must not keep it, or a
    # few bad uploads would leave the queue full for everyone.
    batcher = small_limit_client.app.state.registry.get("landmark").batcher()  # type: ignore[attr-defined]
    assert_problem(post_image(small_limit_client, b"GIF89a but not really"), 400)
    pixels = encode(np.zeros((300, 300, 3), np.uint8), "PNG")
    assert_problem(post_image(small_limit_client, pixels), 413)
    assert batcher.slots == 0
    assert post_image(small_limit_client, encode(scene(160, 160))).status_code == 200
