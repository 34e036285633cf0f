"""The attention feature cache is per model version (service/routers/attention.py,
AttentionModel.cache_prefix): after POST /models/attention/reload swaps in a new version,
a correction of an image the old version already saw must run the new version's features
graph, never reuse the old version's feature map (a reloaded model would otherwise answer
with the previous model's features until the entry is evicted).

test_api_attention.py's reload test sends /attention to the new version before its
correction, so its "hit" holds whether or not the key carries the version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.images import encode

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
COMMITTED = REPOSITORY / "attention"

pytestmark = pytest.mark.skipif(
    not COMMITTED.is_dir(), reason="no committed attention model in models/repository"
)


def copy_version(dst: Path, version: str) -> None:
    """The newest committed attention version's graphs and config as ``dst/version``."""
    newest = max((p for p in COMMITTED.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    target = dst / version
    shutil.copytree(
        newest, target, ignore=shutil.ignore_patterns("*.png", "*.md", "*.json", "*.txt", "*.pt")
    )
    config = json.loads((newest / "config.json").read_text())
    config["version"] = version
    (target / "config.json").write_text(json.dumps(config))


def features_runs(app: FastAPI, version: str) -> float:
    """Batches the features graph of attention/``version`` has run for requests."""
    labels = {"model": "attention", "version": version, "graph": "features"}
    value = app.state.metrics.registry.get_sample_value("vision_batch_size_count", labels)
    return value or 0.0


def correct(client: TestClient, image: bytes, mask: bytes) -> dict[str, object]:
    response = client.post(
        "/attention/correct",
        files={"image": ("i.png", image, "image/png"), "mask": ("m.png", mask, "image/png")},
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_a_reloaded_version_does_not_reuse_the_old_versions_cached_features(
    tmp_path: Path,
) -> None:
    """/attention on version 1 caches the image's features; after reloading to version 2
    the very next correction of that image is a cache miss that runs version 2's features
    graph once, and only the one after it is a hit."""
    model_dir = tmp_path / "repository" / "attention"
    copy_version(model_dir, "1")
    settings = make_settings(tmp_path / "repository", feedback_db=tmp_path / "f.sqlite3")
    rng = np.random.default_rng(2024)
    image = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    mask = encode(Image.new("L", (16, 16), 255))
    with TestClient(create_app(settings)) as client:
        app = client.app
        assert isinstance(app, FastAPI)
        first = client.post("/attention", files={"image": ("a.png", image, "image/png")})
        assert first.status_code == 200, first.text
        assert first.json()["model"]["version"] == "1"
        assert features_runs(app, "1") == 1
        assert correct(client, image, mask)["feature_cache"] == "hit"  # version 1's own entry

        copy_version(model_dir, "2")
        reloaded = client.post("/models/attention/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["version"] == "2"

        after = correct(client, image, mask)
        assert after["model"] == {"name": "attention", "version": "2"}
        assert after["feature_cache"] == "miss"
        assert features_runs(app, "2") == 1
        assert features_runs(app, "1") == 1
        again = correct(client, image, mask)
        assert again["feature_cache"] == "hit"
        assert features_runs(app, "2") == 1
