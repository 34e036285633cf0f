"""benchmarks/thin_app.py does the service's lone-request work: for the same upload both of
its routes answer the landmarks the service's POST /recognize answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks import thin_app
from models.landmark.scenes import SceneConfig, generate
from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.images import encode

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
# Enlarged past twice the model input, so JPEG draft decoding is taken as it is in the service.
UPSCALE = 2.5


@pytest.fixture(scope="module")
def service() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(REPOSITORY, models=["landmark"]))) as client:
        yield client


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("path", ["/recognize", "/recognize-on-loop"])
def test_thin_routes_answer_what_the_service_answers(
    service: TestClient, path: str, index: int
) -> None:
    scene = Image.fromarray(generate(SceneConfig(), "test", index).image)
    big = scene.resize((round(scene.width * UPSCALE), round(scene.height * UPSCALE)))
    files = {"image": ("scene.jpg", encode(big, "JPEG", quality=90), "image/jpeg")}
    expected = service.post("/recognize", files=files)
    assert expected.status_code == 200, expected.text
    with TestClient(thin_app.app) as thin:
        answer = thin.post(path, files=files)
    assert answer.status_code == 200, answer.text
    got, want = answer.json()["landmarks"], expected.json()["landmarks"]
    assert want, "the scene should hold landmarks"
    assert [(lm["class_id"], lm["label"]) for lm in got] == [
        (lm["class_id"], lm["label"]) for lm in want
    ]
    np.testing.assert_allclose(
        [[lm["score"], *lm["point"]] for lm in got],
        [[lm["score"], lm["point"]["x"], lm["point"]["y"]] for lm in want],
        rtol=1e-5,
        atol=1e-4,
    )
