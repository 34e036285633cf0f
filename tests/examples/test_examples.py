"""examples/: each sample upload, sent to the committed models as the README sends it,
gets the answer the README and examples/README.md describe."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# The true points of scene.png (examples/README.md), in its pixels.
SCENE_POINTS = {"speed_limit": (121.2, 43.0), "no_entry": (128.8, 98.7), "warning": (29.9, 86.8)}
# The model card's point error is 0.64 px at model input; the scene is at input size.
POINT_TOLERANCE_PX = 2.0


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(ROOT / "models" / "repository"))) as c:
        yield c


def post(client: TestClient, path: str, **files: str) -> dict[str, Any]:
    uploads = {
        field: (name, (EXAMPLES / name).read_bytes(), "image/png") for field, name in files.items()
    }
    response = client.post(path, files=uploads)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_scene_gets_its_three_landmarks(client: TestClient) -> None:
    landmarks = post(client, "/recognize", image="scene.png")["landmarks"]
    found = {mark["label"]: (mark["point"]["x"], mark["point"]["y"]) for mark in landmarks}
    assert set(found) == set(SCENE_POINTS) and len(landmarks) == 3
    for label, (x, y) in SCENE_POINTS.items():
        assert math.dist(found[label], (x, y)) <= POINT_TOLERANCE_PX, label


def test_attention_examples(client: TestClient) -> None:
    assert post(client, "/attention", image="attention_coat.png")["prediction"]["label"] == "coat"
    corrected = post(
        client, "/attention/correct", image="attention_pair.png", mask="attention_pair_mask.png"
    )
    assert corrected["original"]["label"] == "shirt"
    assert corrected["corrected"]["label"] == "trouser"


def test_gender_examples(client: TestClient) -> None:
    assert post(client, "/gender", image="garment_dress.png")["label"] == "female"
    assert post(client, "/gender", image="garment_jacket.png")["label"] == "male"


def test_face_examples(client: TestClient) -> None:
    assert post(client, "/occlusion", image="face.png")["occlusion"]["occluded"] is False
    masked = post(client, "/occlusion", image="face_masked.png")["occlusion"]
    assert masked["blocks"] == {"row_start": 3, "row_end": 5, "col_start": 1, "col_end": 4}
    verified = post(client, "/faces/verify", image_a="face.png", image_b="face_masked.png")
    assert verified["same"] is True
