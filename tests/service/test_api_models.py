from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.fakes import LABELS, landmark_graph, write_model


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
