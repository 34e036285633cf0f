"""POST /occlusion and POST /faces/verify against the committed occlusion model.

Uploads are real faces (scikit-image's lfw_subset, aligned as in training) with black
rectangles pasted over whole grid blocks, at the model's aspect and letterboxed, so the
mapping of the pattern back to upload pixels is checked against the letterbox arithmetic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from fastapi.testclient import TestClient
from PIL import Image

from models.occlusion.faces import align_faces
from service.main import create_app
from tests.service.conftest import assert_problem, make_settings
from tests.service.images import encode

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
CONFIG = json.loads((REPOSITORY / "occlusion" / "1" / "config.json").read_text())
K = CONFIG["decode"]["grid"]["rows"]
H, W = CONFIG["preprocess"]["height"], CONFIG["preprocess"]["width"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(REPOSITORY, models=["occlusion"]))) as c:
        yield c


def face(index: int) -> np.ndarray:
    """An lfw_subset face (enlarged 4x), aligned to H x W like the training faces."""
    grey = skimage.data.lfw_subset()[index]
    big = Image.fromarray((grey * 255).astype(np.uint8)).resize((100, 100), Image.BICUBIC)
    return align_faces(np.asarray(big.convert("RGB")))[0]["image"]  # type: ignore[no-any-return]


def occlude(image: np.ndarray, blocks: tuple[int, int, int, int]) -> np.ndarray:
    r0, r1, c0, c1 = blocks
    out = image.copy()
    out[round(r0 * H / K) : round(r1 * H / K), round(c0 * W / K) : round(c1 * W / K)] = 0
    return out


def expected_box(blocks: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """The blocks in upload pixels by the rule of models/repository/README.md for the
    version's ``resize`` (crop: the input covered, pads negative; letterbox: fitted)."""
    if CONFIG["preprocess"]["resize"] == "crop":
        s = max(W / width, H / height)
        pad_x = -((max(W, round(width * s)) - W) // 2)
        pad_y = -((max(H, round(height * s)) - H) // 2)
    else:
        s = min(W / width, H / height)
        pad_x = (W - min(W, max(1, round(width * s)))) // 2
        pad_y = (H - min(H, max(1, round(height * s)))) // 2

    def x(c: int) -> float:
        return float(np.clip((c * W / K - pad_x) / s, 0, width))

    def y(r: int) -> float:
        return float(np.clip((r * H / K - pad_y) / s, 0, height))

    return (
        x(blocks["col_start"]),
        y(blocks["row_start"]),
        x(blocks["col_end"]),
        y(blocks["row_end"]),
    )


def post(client: TestClient, image: np.ndarray | Image.Image) -> dict:
    response = client.post("/occlusion", files={"image": ("f.png", encode(image), "image/png")})
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


def test_response_has_the_contract_shape(client: TestClient) -> None:
    body = post(client, face(0))
    assert body["model"] == {"name": "occlusion", "version": "1"}
    assert body["image"] == {"width": W, "height": H}
    occ = body["occlusion"]
    assert set(occ) == {"occluded", "pattern_id", "score", "grid", "blocks", "box"}
    assert occ["grid"] == {"rows": K, "cols": K}
    assert 0 <= occ["pattern_id"] < len(CONFIG["decode"]["patterns"])
    assert 0 < occ["score"] <= 1
    assert occ["occluded"] == (occ["pattern_id"] != 0)
    assert (occ["blocks"] is None) == (occ["box"] is None) == (not occ["occluded"])
    embedding = np.asarray(body["embedding"])
    assert embedding.shape == (128,)
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("size", [(2 * W, 2 * H), (300, 224), (96, 200)])
def test_box_is_the_blocks_in_upload_pixels(client: TestClient, size: tuple[int, int]) -> None:
    occluded = 0
    for index, blocks in enumerate([(3, 5, 0, 5), (1, 2, 0, 5), (0, 5, 0, 2), (2, 4, 1, 4)]):
        image = Image.fromarray(occlude(face(index + 1), blocks)).resize(size, Image.BILINEAR)
        body = post(client, image)
        assert body["image"] == {"width": size[0], "height": size[1]}
        occ = body["occlusion"]
        if not occ["occluded"]:
            continue
        occluded += 1
        b = occ["blocks"]
        assert 0 <= b["row_start"] < b["row_end"] <= K and 0 <= b["col_start"] < b["col_end"] <= K
        box = occ["box"]
        assert (box["x0"], box["y0"], box["x1"], box["y1"]) == pytest.approx(
            expected_box(b, *size), abs=1e-3
        )
        assert 0 <= box["x0"] < box["x1"] <= size[0] and 0 <= box["y0"] < box["y1"] <= size[1]
    # Large black rectangles over real faces: the model must see most of them.
    assert occluded >= 3


def test_a_clean_and_a_covered_face_differ(client: TestClient) -> None:
    clean = post(client, face(5))["occlusion"]
    covered = post(client, occlude(face(5), (3, 5, 0, 5)))["occlusion"]
    assert covered["occluded"]
    assert covered["blocks"]["row_end"] == K  # the lower part is covered
    assert clean["pattern_id"] != covered["pattern_id"]


def test_verify_an_image_with_itself(client: TestClient) -> None:
    data = encode(face(7))
    response = client.post(
        "/faces/verify",
        files={"image_a": ("a.png", data, "image/png"), "image_b": ("b.png", data, "image/png")},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert body["same"] is True
    assert body["threshold"] == CONFIG["decode"]["verify_threshold"]
    assert len(body["faces"]) == 2
    assert body["faces"][0] == body["faces"][1]
    assert body["faces"][0]["image"] == {"width": W, "height": H}


def test_verify_two_people(client: TestClient) -> None:
    files = {
        "image_a": ("a.png", encode(face(8)), "image/png"),
        "image_b": ("b.jpg", encode(face(9), "JPEG"), "image/jpeg"),
    }
    body = client.post("/faces/verify", files=files).json()
    assert -1 <= body["similarity"] < 0.999
    assert body["same"] == (body["similarity"] >= body["threshold"])


def test_bad_inputs_are_4xx_problems(client: TestClient) -> None:
    png = encode(face(0))
    assert_problem(client.post("/occlusion"), 422)
    assert_problem(
        client.post("/faces/verify", files={"image_a": ("a.png", png, "image/png")}), 422
    )
    assert_problem(
        client.post("/occlusion", files={"image": ("a.txt", b"hello", "text/plain")}), 415
    )
    assert_problem(
        client.post("/occlusion", files={"image": ("a.png", b"not a png", "image/png")}), 400
    )
    # With two images, the error says which one it is about.
    good = ("a.png", png, "image/png")
    for broken, status, start in (
        (("b.png", b"x", "image/png"), 400, "the image is not an image in a supported format"),
        (("b.png", b"", "image/png"), 400, "the image upload is empty"),
        (("b.txt", b"hello", "text/plain"), 415, ""),
    ):
        for field, other in (("image_a", "image_b"), ("image_b", "image_a")):
            files = {field: broken, other: good}
            body = assert_problem(client.post("/faces/verify", files=files), status)
            assert body["detail"].startswith(f"{field}: {start}"), body


def test_api_key_and_model_not_served(tmp_path: Path) -> None:
    png = encode(face(0))
    settings = make_settings(REPOSITORY, models=["occlusion"], api_keys=["k1"])
    with TestClient(create_app(settings)) as c:
        assert_problem(c.post("/occlusion", files={"image": ("a.png", png, "image/png")}), 401)
        ok = c.post(
            "/occlusion", files={"image": ("a.png", png, "image/png")}, headers={"X-API-Key": "k1"}
        )
        assert ok.status_code == 200
    settings = make_settings(REPOSITORY, models=["occlusion"], occlusion_model="absent")
    with TestClient(create_app(settings)) as c:
        response = c.post("/occlusion", files={"image": ("a.png", png, "image/png")})
        assert_problem(response, 404)
        assert "Retry-After" not in response.headers
