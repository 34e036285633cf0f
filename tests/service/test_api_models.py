from __future__ import annotations

import json
import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.fakes import LABELS, landmark_graph, write_model
from tests.service.images import encode, scene

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "repository"


def test_models_lists_signature_labels_providers_and_metrics(client: TestClient) -> None:
    (model,) = client.get("/models").json()["models"]
    assert model["name"] == "landmark" and model["version"] == "1"
    assert model["state"] == "ready" and model["error"] is None
    assert model["task"] == "landmark_points"
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 160, 160]}]
    assert [o["name"] for o in model["outputs"]] == ["class_probs", "confidence", "points"]
    assert model["outputs"][0]["shape"] == [-1, 400, 2, 9]
    assert model["labels"] == LABELS
    assert model["providers"] == ["CPUExecutionProvider"]
    assert model["metrics"]["point_f1"] == 0.5


def test_failed_model_is_listed_with_its_reason(tmp_path: Path) -> None:
    write_model(tmp_path, "landmark")
    write_model(tmp_path, "mismatch", graph=landmark_graph(point_dims=3))
    with TestClient(create_app(make_settings(tmp_path))) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["landmark"]["state"] == "ready"
    failed = models["mismatch"]
    assert failed["state"] == "failed" and "points" in failed["error"]
    assert failed["providers"] == []
    assert failed["version"] == "1" and failed["labels"] == LABELS  # config was readable


def _copy_as(src: Path, dst: Path, name: str, version: str) -> None:
    """A committed version's graph and config.json as ``dst/name/version``."""
    (dst / name / version).mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    shutil.copy(src / config["file"], dst / name / version / config["file"])
    config.update(name=name, version=version)
    (dst / name / version / "config.json").write_text(json.dumps(config))


def test_a_reload_to_a_version_of_another_task_keeps_the_serving_one(tmp_path: Path) -> None:
    """A gender graph dropped in as landmark version 2 loads and warms, but /recognize could
    not decode it: the reload is a 409 naming the setting and tasks, and version 1 serves on
    (before, the swap left /recognize answering 503 for good while ready said 200)."""
    repo = tmp_path / "repository"
    _copy_as(COMMITTED / "landmark" / "1", repo, "landmark", "1")
    with TestClient(create_app(make_settings(repo))) as client:
        _copy_as(COMMITTED / "gender" / "7", repo, "landmark", "2")
        refused = client.post("/models/landmark/reload")
        assert refused.status_code == 409, refused.text
        problem = refused.json()
        assert problem["serving_version"] == "1"
        assert (
            "VISION_RECOGNIZE_MODEL names 'landmark', a gender_contour model" in problem["detail"]
        )
        answer = client.post("/recognize", files={"image": ("s.png", encode(scene()), "image/png")})
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"
        assert client.get("/health/ready").status_code == 200
