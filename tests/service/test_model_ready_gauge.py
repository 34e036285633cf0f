"""The ``vision_model_ready{model, version}`` gauge (service/metrics.py) as /metrics shows
it: 0 for a model that failed to load, 1 once a reload brings it up, and 0 again for a
version that a reload replaced. Alerts ("a model is not ready") and dashboards read it;
a gauge stuck at 1 would hide a broken model, and an old version's series left at 1 would
count two versions as serving.

Set at start by the lifespan (service/main.py) and on reload (service/routers/models.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.fakes import landmark_graph, write_model

GAUGE = "vision_model_ready"


def ready_gauge(client: TestClient) -> dict[tuple[str, str], float]:
    """Every ``vision_model_ready`` series in /metrics, by (model, version)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text[:500]
    return {
        (sample.labels["model"], sample.labels["version"]): sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == GAUGE
        for sample in family.samples
    }


def test_a_model_that_failed_to_load_reads_0_until_a_reload_brings_it_up(tmp_path: Path) -> None:
    """A graph file whose digest does not match config.json fails at start: its series is
    0 while it is broken (next to a healthy model's 1); once the file is fixed and the model
    reloaded, the same series reads 1."""
    repo = tmp_path / "repository"
    broken = write_model(repo, "landmark", file_bytes=landmark_graph(size=128))
    write_model(repo, "spare")
    with TestClient(create_app(make_settings(repo))) as client:
        assert client.get("/health/ready").status_code == 503
        assert ready_gauge(client) == {("landmark", "1"): 0.0, ("spare", "1"): 1.0}

        (broken / "model.onnx").write_bytes(landmark_graph())
        reloaded = client.post("/models/landmark/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert client.get("/health/ready").status_code == 200
        assert ready_gauge(client) == {("landmark", "1"): 1.0, ("spare", "1"): 1.0}


def test_a_reload_to_a_new_version_sets_the_old_versions_series_to_0(tmp_path: Path) -> None:
    """Reloading from version 1 to version 2 leaves 2 at 1 and 1 at 0: only the version
    serving reads ready."""
    repo = tmp_path / "repository"
    write_model(repo, "landmark", "1")
    with TestClient(create_app(make_settings(repo))) as client:
        assert ready_gauge(client) == {("landmark", "1"): 1.0}
        write_model(repo, "landmark", "2")
        reloaded = client.post("/models/landmark/reload")
        assert reloaded.status_code == 200 and reloaded.json()["version"] == "2", reloaded.text
        assert ready_gauge(client) == {("landmark", "1"): 0.0, ("landmark", "2"): 1.0}


def test_a_failed_reload_leaves_the_serving_versions_series_at_1(tmp_path: Path) -> None:
    """A broken version 2 is refused (409) and version 1 keeps serving: its series stays 1
    and no series says version 2 is ready."""
    repo = tmp_path / "repository"
    write_model(repo, "landmark", "1")
    with TestClient(create_app(make_settings(repo))) as client:
        version_dir = write_model(repo, "landmark", "2", file_bytes=b"not a graph")
        config = json.loads((version_dir / "config.json").read_text())
        config["sha256"] = hashlib.sha256(b"not a graph").hexdigest()
        (version_dir / "config.json").write_text(json.dumps(config))
        assert client.post("/models/landmark/reload").status_code == 409
        gauge = ready_gauge(client)
        assert gauge[("landmark", "1")] == 1.0
        assert gauge.get(("landmark", "2"), 0.0) == 0.0


def test_a_pinned_version_that_is_not_there_is_the_version_that_reads_0(tmp_path: Path) -> None:
    """An alert can name what failed: the series of a pinned version missing from the
    repository is labelled with that version (it used to read version="")."""
    repo = tmp_path / "repository"
    write_model(repo, "landmark", "1")
    settings = make_settings(repo, model_versions={"landmark": "99"})
    with TestClient(create_app(settings)) as client:
        assert ready_gauge(client) == {("landmark", "99"): 0.0}
        (model,) = client.get("/models").json()["models"]
        assert (model["version"], model["state"]) == ("99", "failed")
        assert "pinned version '99' not found" in model["error"]
