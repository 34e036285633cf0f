"""The committed landmark model through the real app: generated scenes in, known landmarks out.

Scenes come from the generator's held-out test split (backgrounds never seen in training),
are cut to their non-square content and enlarged, so the letterbox and the mapping back to
upload pixels are exercised as a user's photo would exercise them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.landmark.scenes import LABELS, SceneConfig, generate
from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.images import encode

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
UPSCALE = 2.5
# The model card's match radius is 4 px at model input; the upload is UPSCALE times larger.
TOLERANCE = 4.0 * UPSCALE
SCENES = 24


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(REPOSITORY, models=["landmark"]))) as c:
        yield c


def _upload(index: int) -> tuple[Image.Image, np.ndarray]:
    """A test scene without its letterbox band, enlarged; labels in upload pixels."""
    scene = generate(SceneConfig(), "test", index)
    image = scene.image
    rows = np.flatnonzero(~np.all(image == 114, axis=(1, 2)))
    cols = np.flatnonzero(~np.all(image == 114, axis=(0, 2)))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = Image.fromarray(image[y0:y1, x0:x1])
    big = crop.resize((round(crop.width * UPSCALE), round(crop.height * UPSCALE)), Image.BICUBIC)
    labels = scene.labels.copy()
    labels[:, 1] = (labels[:, 1] - x0 + 0.5) * big.width / crop.width - 0.5
    labels[:, 2] = (labels[:, 2] - y0 + 0.5) * big.height / crop.height - 0.5
    return big, labels


def _found(landmarks: list[dict], labels: np.ndarray) -> int:
    hits = 0
    for cls, x, y, _ in labels:
        hits += any(
            lm["class_id"] == int(cls)
            and lm["label"] == LABELS[int(cls)]
            and np.hypot(lm["point"]["x"] - x, lm["point"]["y"] - y) <= TOLERANCE
            for lm in landmarks
        )
    return hits


def test_model_is_served_with_its_card(client: TestClient) -> None:
    config = json.loads((REPOSITORY / "landmark" / "1" / "config.json").read_text())
    body = client.get("/models").json()
    entry = next(m for m in body["models"] if m["name"] == "landmark")
    assert entry["version"] == "1" and entry["labels"] == list(LABELS)
    assert entry["metrics"]["test"] == config["metrics"]["test"]
    assert client.get("/health/ready").status_code == 200


def test_generated_scenes_return_their_landmarks(client: TestClient) -> None:
    labelled = found = false_positives = 0
    for i in range(SCENES):
        image, labels = _upload(i)
        r = client.post("/recognize", files={"image": ("scene.png", encode(image), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["image"] == {"width": image.width, "height": image.height}
        assert body["model"] == {"name": "landmark", "version": "1"}
        labelled += len(labels)
        found += _found(body["landmarks"], labels)
        false_positives += sum(
            not np.any(
                np.hypot(labels[:, 1] - lm["point"]["x"], labels[:, 2] - lm["point"]["y"])
                <= TOLERANCE
            )
            for lm in body["landmarks"]
        )
    assert labelled > 40
    assert found / labelled >= 0.9, (found, labelled)
    assert false_positives <= 0.1 * labelled, (false_positives, labelled)


def test_exif_rotated_upload_reports_points_as_the_caller_sees_the_image(
    client: TestClient,
) -> None:
    image, labels = next((im, lb) for im, lb in map(_upload, range(SCENES)) if len(lb) >= 2)
    upright = client.post("/recognize", files={"image": ("a.png", encode(image), "image/png")})
    # Stored rotated by 90 degrees with EXIF orientation 6: viewers turn it back upright.
    stored = image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = client.post(
        "/recognize",
        files={"image": ("b.jpg", encode(stored, "JPEG", quality=95, exif=exif), "image/jpeg")},
    )
    assert rotated.json()["image"] == upright.json()["image"]
    assert _found(rotated.json()["landmarks"], labels) >= len(labels) - 1
