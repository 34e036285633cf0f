"""Model faults through the whole app: the service starts anyway, stays live, says in
readiness which model failed and why (without server paths), answers that model's
endpoint with 503 + Retry-After (never a 5xx of its own), keeps serving the other models,
and recovers without a restart once the file is fixed and the model reloaded.

The loader's own reasons are unit-tested in test_runtime.py; CUDA requested without a GPU
in test_api_health.py (readiness names CUDA); the teacher-record database read-only or
full in test_feedback.py (503, nothing stored corrupted; issue 9's store).
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.formparsers import MultiPartParser

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.fakes import landmark_graph, write_model
from tests.service.fakes_v2 import square_tensor
from tests.service.images import encode, scene


def _missing(version_dir: Path) -> None:
    (version_dir / "model.onnx").unlink()


def _swapped(version_dir: Path) -> None:
    (version_dir / "model.onnx").write_bytes(landmark_graph(size=128))


def _truncated(version_dir: Path) -> None:
    """Cut in half, config.json's digest updated to match: only ONNX Runtime can tell."""
    _rewrite_with_digest(version_dir, (version_dir / "model.onnx").read_bytes()[:1000])


def _garbage(version_dir: Path) -> None:
    _rewrite_with_digest(version_dir, b"\x08\x07garbage, not a protobuf" * 50)


def _wrong_input_shape(version_dir: Path) -> None:
    """A valid graph for 128x128 inputs where config.json (and the letterbox) say 160."""
    _rewrite_with_digest(version_dir, landmark_graph(size=128))


def _rewrite_with_digest(version_dir: Path, graph: bytes) -> None:
    (version_dir / "model.onnx").write_bytes(graph)
    config_path = version_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["sha256"] = hashlib.sha256(graph).hexdigest()
    config_path.write_text(json.dumps(config))


FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing model file": (_missing, "cannot read"),
    "file swapped after export": (_swapped, "sha256"),
    "truncated file": (_truncated, "onnxruntime could not load the graph"),
    "not a protobuf": (_garbage, "onnxruntime could not load the graph"),
    "input shape differs from config": (_wrong_input_shape, "input 'image' has shape"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_model_is_reported_isolated_and_recoverable(tmp_path: Path, fault: str) -> None:
    root = tmp_path / "repository"
    broken = write_model(root, "landmark")
    write_model(root, "spare")
    good_copy = tmp_path / "good"
    shutil.copytree(broken, good_copy)
    damage, reason = FAULTS[fault]
    damage(broken)
    upload = {"image": ("a.png", encode(scene()), "image/png")}

    with TestClient(create_app(make_settings(root))) as client:
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
        assert ready.headers["content-type"].startswith("application/problem+json")
        body = ready.json()
        assert "landmark" in body["detail"] and reason in body["detail"]
        assert body["models"]["spare"]["state"] == "ready"
        assert str(tmp_path) not in ready.text

        refused = client.post("/recognize", files=upload)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert reason in refused.json()["detail"] and str(tmp_path) not in refused.text

        # The other model serves on (raw tensors through V2).
        tensor = square_tensor()
        infer = client.post(
            "/v2/models/spare/infer",
            json={
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": list(tensor.shape),
                        "data": tensor.ravel().tolist(),
                    }
                ]
            },
        )
        assert infer.status_code == 200, infer.text
        assert np.asarray(infer.json()["outputs"][0]["data"]).size > 0

        # Fixed on disk, reloaded through the API: ready again, no restart.
        shutil.rmtree(broken)
        shutil.copytree(good_copy, broken)
        assert client.post("/models/landmark/reload").status_code == 200
        assert client.get("/health/ready").status_code == 200
        assert client.post("/recognize", files=upload).status_code == 200


def test_temporary_storage_full_while_spooling_an_upload_is_503(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads over ``upload_spool_bytes`` (here 1 MiB) are spooled to the temp directory (a
    small tmpfs in the container, whose root is read-only); when it is full the answer is
    503 + Retry-After, not a 400 telling the client that its request was malformed."""

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # create_app sets Starlette's class attribute for the process: put it back afterwards.
    monkeypatch.setattr(MultiPartParser, "spool_max_size", MultiPartParser.spool_max_size)

    noise = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    big = encode(noise)  # ~1.5 MB of PNG: past the spooling threshold
    assert len(big) > 1 << 20
    with TestClient(create_app(make_settings(repo, upload_spool_bytes=1 << 20))) as client:
        monkeypatch.setattr(tempfile, "TemporaryFile", no_space)
        full = client.post("/recognize", files={"image": ("big.png", big, "image/png")})
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
        assert full.headers["content-type"].startswith("application/problem+json")
        assert "No space left on device" in full.json()["detail"]
        small = client.post("/recognize", files={"image": ("a.png", encode(scene()), "image/png")})
        assert small.status_code == 200
        monkeypatch.undo()
        assert (
            client.post("/recognize", files={"image": ("b.png", big, "image/png")}).status_code
            == 200
        )
