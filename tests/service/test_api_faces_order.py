"""POST /faces/verify reports the two faces in the order they were sent: ``faces[0]`` is
``image_a``'s and ``faces[1]`` is ``image_b``'s (service/routers/occlusion.py). A caller
reads "which of the two was covered" from that order; test_api_occlusion.py sends the
same image twice, where any order looks right.

Each face's entry must equal what POST /occlusion answers for that image alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.images import encode
from tests.service.test_api_occlusion import face

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
MODEL = REPOSITORY / "occlusion" / "1"

pytestmark = pytest.mark.skipif(
    not MODEL.is_dir(), reason="no committed occlusion model in models/repository"
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(REPOSITORY, models=["occlusion"]))) as c:
        yield c


def lower_half_covered(image: np.ndarray) -> np.ndarray:
    """Black over the lower 2 of 5 block rows, the pattern test_api_occlusion.py checks."""
    out = image.copy()
    out[round(3 * image.shape[0] / 5) :] = 0
    return out


def occlusion_of(client: TestClient, data: bytes) -> dict[str, Any]:
    response = client.post("/occlusion", files={"image": ("f.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def verify(client: TestClient, image_a: bytes, image_b: bytes) -> dict[str, Any]:
    response = client.post(
        "/faces/verify",
        files={
            "image_a": ("a.png", image_a, "image/png"),
            "image_b": ("b.png", image_b, "image/png"),
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_same_face(verified: dict[str, Any], alone: dict[str, Any]) -> None:
    """A /faces/verify entry matches /occlusion's answer for the same upload: size and
    pattern exactly, score and box up to float noise (batched with another row or not)."""
    assert verified["image"] == alone["image"]
    got, want = verified["occlusion"], alone["occlusion"]
    for key in ("occluded", "pattern_id", "grid", "blocks"):
        assert got[key] == want[key], key
    assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    if want["box"] is None:
        assert got["box"] is None
    else:
        assert got["box"] == pytest.approx(want["box"], abs=1e-3)


def test_faces_come_back_in_the_order_sent(client: TestClient) -> None:
    """A clean face enlarged to 192x224 as image_a and a covered face at 96x112 as image_b
    (then the other way round): each entry of ``faces`` is its own field's face, as
    /occlusion sees it, and the similarity is the dot product of the two embeddings."""
    base = face(5)
    height, width = base.shape[:2]
    clean = encode(Image.fromarray(base).resize((2 * width, 2 * height), Image.Resampling.BILINEAR))
    covered = encode(lower_half_covered(base))
    clean_alone = occlusion_of(client, clean)
    covered_alone = occlusion_of(client, covered)
    # The two faces must be told apart, or the order could not show.
    assert clean_alone["image"] != covered_alone["image"]
    assert covered_alone["occlusion"]["occluded"]
    assert clean_alone["occlusion"]["pattern_id"] != covered_alone["occlusion"]["pattern_id"]
    similarity = float(np.dot(clean_alone["embedding"], covered_alone["embedding"]))

    forward = verify(client, clean, covered)
    assert len(forward["faces"]) == 2
    assert_same_face(forward["faces"][0], clean_alone)
    assert_same_face(forward["faces"][1], covered_alone)
    assert forward["similarity"] == pytest.approx(similarity, abs=1e-4)

    backward = verify(client, covered, clean)
    assert_same_face(backward["faces"][0], covered_alone)
    assert_same_face(backward["faces"][1], clean_alone)
    assert backward["similarity"] == pytest.approx(similarity, abs=1e-4)
