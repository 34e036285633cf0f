from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.fakes import landmark_graph, write_model


def test_live_and_ready(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    response = client.get("/health/ready")
    assert response.status_code == 200
    for path in ("/health/live", "/health/ready"):  # probes that use HEAD
        head = client.head(path)
        assert head.status_code == 200 and head.content == b""
    assert response.json() == {
        "status": "ready",
        "models": {"landmark": {"state": "ready", "version": "1", "error": None}},
    }


def test_not_ready_lists_each_failed_model_by_name(tmp_path: Path) -> None:
    write_model(tmp_path, "landmark")
    write_model(tmp_path, "badsha", file_bytes=landmark_graph(size=128))
    write_model(tmp_path, "mismatch", graph=landmark_graph(size=128))
    write_model(tmp_path, "corrupt", graph=b"junk")
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert client.get("/health/live").status_code == 200
        response = client.get("/health/ready")
        assert response.status_code == 503
        assert client.head("/health/ready").status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) > 0
        body = response.json()
        models = body["models"]
        assert models["landmark"] == {"state": "ready", "version": "1", "error": None}
        assert "sha256" in models["badsha"]["error"]
        assert "shape" in models["mismatch"]["error"]
        assert "could not load the graph" in models["corrupt"]["error"]
        for name in ("badsha", "mismatch", "corrupt"):
            assert models[name]["state"] == "failed"
            assert name in body["detail"]
        # The healthy model still serves.
        assert client.get("/models").status_code == 200


def test_cuda_on_a_machine_without_a_working_gpu_is_not_ready(repo: Path) -> None:
    with TestClient(create_app(make_settings(repo, providers="cuda"))) as client:
        response = client.get("/health/ready")
        if response.status_code == 200:  # a real GPU: CUDA came up
            assert "CUDAExecutionProvider" in client.get("/models").json()["models"][0]["providers"]
            return
        assert response.status_code == 503
        assert "CUDA" in response.json()["models"]["landmark"]["error"]


def test_empty_or_missing_repository_is_not_ready(tmp_path: Path) -> None:
    for root in (tmp_path, tmp_path / "missing"):
        with TestClient(create_app(make_settings(root))) as client:
            response = client.get("/health/ready")
            assert response.status_code == 503
            detail = response.json()["detail"]
            # The reason, not the server's file layout (the log has the path).
            assert "model repository" in detail and str(tmp_path) not in detail


def test_configured_model_missing_from_repository(repo: Path) -> None:
    settings = make_settings(repo, models=["landmark", "attention"])
    with TestClient(create_app(settings)) as client:
        body = client.get("/health/ready").json()
        assert body["models"]["landmark"]["state"] == "ready"
        assert body["models"]["attention"]["state"] == "failed"
        assert "no directory" in body["models"]["attention"]["error"]


def test_not_ready_before_lifespan(repo: Path) -> None:
    client = TestClient(create_app(make_settings(repo)))  # no `with`: lifespan never ran
    response = client.get("/health/ready")
    assert response.status_code == 503 and "loading" in response.json()["detail"]
