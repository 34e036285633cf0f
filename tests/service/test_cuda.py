"""The CUDA provider on a real GPU: every committed graph computes on CUDA what it computes on
the CPU, and the app served on CUDA answers every model's endpoint as it does on the CPU.

Skipped where CUDA does not come up (no GPU, or onnxruntime-gpu without CUDA 13 / cuDNN 9):
CI machines have none, and tests/strict_skips.py lets this reason pass.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from service.runtime import (
    CUDA_PROVIDER,
    NUMPY_TYPES,
    OnnxSession,
    load_model,
    preload_cuda_libraries,
    read_config,
    select_version,
)
from tests.service.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "models" / "repository"
EXAMPLES = ROOT / "examples"
NO_CUDA = "no working CUDA GPU here"
# CUDA's convolutions (TF32 on Ampere and later, ORT's default) and the CPU's differ in the
# last bits; 2 % of an output's magnitude (at least 1) passes those and fails a wrong kernel,
# whose outputs are off by their own size.
RELATIVE_TOLERANCE = 0.02
# Every model's endpoint with the committed examples (examples/README.md).
REQUESTS = [
    ("/recognize", {"image": "scene.png"}),
    ("/attention", {"image": "attention_coat.png"}),
    ("/attention", {"image": "attention_pair.png", "mask": "attention_pair_mask.png"}),
    ("/gender", {"image": "garment_dress.png"}),
    ("/occlusion", {"image": "face_masked.png"}),
    ("/faces/verify", {"image_a": "face.png", "image_b": "face_masked.png"}),
]


# On a machine meant to have a GPU, a CUDA set-up that does not load fails these tests
# instead of skipping them. Read at import: the service tests clear VISION_* per test.
REQUIRE_CUDA = os.environ.get("VISION_TESTS_REQUIRE_CUDA") == "1"


@functools.cache
def cuda_works() -> bool:
    """Whether a committed model loads on the CUDA provider here."""
    preload_cuda_libraries()
    model = load_model("landmark", make_settings(REPOSITORY, providers="cuda"))
    return model.ready and CUDA_PROVIDER in model.providers


def skip_or_fail() -> None:
    if REQUIRE_CUDA:
        pytest.fail("VISION_TESTS_REQUIRE_CUDA=1 but no model loads on the CUDA provider")
    pytest.skip(NO_CUDA)


@pytest.fixture
def cuda() -> None:
    """Skips the test where CUDA does not come up."""
    if not cuda_works():
        skip_or_fail()


def graphs() -> list[tuple[Path, str]]:
    """(version directory, graph name) of every graph of every model's latest version."""
    found = []
    for model_dir in sorted(p for p in REPOSITORY.iterdir() if p.is_dir()):
        version_dir = select_version(model_dir, None)
        found += [(version_dir, name) for name in read_config(version_dir).graph_configs()]
    return found


def assert_close(cuda: Any, cpu: Any, where: str = "") -> None:
    """Two JSON answers agree: the same keys, strings, integers and list lengths; floats
    within RELATIVE_TOLERANCE of their magnitude (at least 1). Lists of classes (top-k,
    landmarks) are compared by class, since near-equal scores may swap places."""
    if isinstance(cpu, float):
        assert isinstance(cuda, float | int), where
        assert abs(cuda - cpu) <= RELATIVE_TOLERANCE * max(1.0, abs(cpu)), (where, cuda, cpu)
    elif isinstance(cpu, dict):
        assert isinstance(cuda, dict) and cuda.keys() == cpu.keys(), (where, cuda, cpu)
        for key in cpu:
            assert_close(cuda[key], cpu[key], f"{where}.{key}")
    elif isinstance(cpu, list):
        assert isinstance(cuda, list) and len(cuda) == len(cpu), (where, cuda, cpu)
        if cpu and all(isinstance(item, dict) and "class_id" in item for item in cpu + cuda):

            def order(item: dict[str, Any]) -> tuple[int, float]:
                return item["class_id"], round(item.get("score", 0.0), 1)

            cuda, cpu = sorted(cuda, key=order), sorted(cpu, key=order)
        for index, (a, b) in enumerate(zip(cuda, cpu, strict=True)):
            assert_close(a, b, f"{where}[{index}]")
    elif isinstance(cpu, str) and where.endswith("_base64"):
        # An image of floats (an attention map): a last-bit difference can move a pixel one
        # level and change the encoded bytes, so the pixels are compared instead.
        got, expected = (
            np.asarray(Image.open(io.BytesIO(base64.b64decode(v)))) for v in (cuda, cpu)
        )
        assert got.shape == expected.shape, where
        error = np.abs(got.astype(np.int32) - expected.astype(np.int32)).max()
        assert error <= RELATIVE_TOLERANCE * 255, (where, error)
    else:
        assert cuda == cpu, (where, cuda, cpu)


@pytest.mark.parametrize(("version_dir", "graph"), graphs(), ids=lambda v: str(v))
@pytest.mark.parametrize("batch", [1, 8])
def test_graph_on_cuda_matches_cpu(cuda: None, version_dir: Path, graph: str, batch: int) -> None:
    config = read_config(version_dir)
    spec = config.graph_configs()[graph]
    on_gpu = OnnxSession(version_dir / spec.file, make_settings(REPOSITORY, providers="cuda"))
    on_host = OnnxSession(version_dir / spec.file, make_settings(REPOSITORY, providers="cpu"))
    assert on_gpu.providers[0] == CUDA_PROVIDER
    rng = np.random.default_rng(batch)
    feeds = {
        i.name: rng.random(
            [batch if axis == 0 else max(d, 1) for axis, d in enumerate(i.shape)]
        ).astype(NUMPY_TYPES[i.datatype])
        for i in spec.inputs
    }
    on_cuda, on_cpu = on_gpu.run(feeds), on_host.run(feeds)
    assert on_cuda.keys() == on_cpu.keys()
    for name, expected in on_cpu.items():
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(
            on_cuda[name], expected, rtol=0, atol=RELATIVE_TOLERANCE * scale, err_msg=name
        )


@pytest.mark.parametrize("rows", [3, 20])
def test_a_padded_cuda_run_matches_the_cpu(cuda: None, rows: int) -> None:
    """The service's padding on the GPU: 3 rows padded to 16, 20 in a chunk of 16 and one
    of 4 padded; each row as the CPU computes it."""
    version_dir = select_version(REPOSITORY / "landmark", None)
    spec = read_config(version_dir).graph_configs()["model"]
    on_gpu = OnnxSession(version_dir / spec.file, make_settings(REPOSITORY, providers="cuda"))
    on_gpu.pad_batch_to = 16
    on_host = OnnxSession(version_dir / spec.file, make_settings(REPOSITORY, providers="cpu"))
    image = spec.inputs[0]
    batch = np.random.default_rng(rows).random([rows, *image.shape[1:]]).astype(np.float32)
    on_cuda, on_cpu = on_gpu.run({image.name: batch}), on_host.run({image.name: batch})
    for name, expected in on_cpu.items():
        assert on_cuda[name].shape == expected.shape
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(on_cuda[name], expected, rtol=0, atol=RELATIVE_TOLERANCE * scale)


@pytest.mark.parametrize("fixed", [True, False])
def test_cuda_pads_each_batchable_graph_to_its_max_batch(cuda: None, fixed: bool) -> None:
    settings = make_settings(REPOSITORY, providers="cuda", batch_max_size=8, cuda_fixed_batch=fixed)
    for name in ("landmark", "attention"):
        model = load_model(name, settings)
        assert model.ready, model.error
        for session in model.sessions.values():
            assert session.pad_batch_to == (8 if fixed else None)


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, TestClient]]:
    if not cuda_works():
        skip_or_fail()
    with (
        TestClient(create_app(make_settings(REPOSITORY, providers="cuda"))) as cuda,
        TestClient(create_app(make_settings(REPOSITORY, providers="cpu"))) as cpu,
    ):
        yield {"cuda": cuda, "cpu": cpu}


def test_every_model_is_served_on_cuda(clients: dict[str, TestClient]) -> None:
    models = clients["cuda"].get("/models").json()["models"]
    assert {m["name"] for m in models} == {p.name for p in REPOSITORY.iterdir() if p.is_dir()}
    for model in models:
        assert model["state"] == "ready", model
        assert model["providers"][0] == CUDA_PROVIDER, model


@pytest.mark.parametrize(("path", "parts"), REQUESTS, ids=[p for p, _ in REQUESTS])
def test_answer_on_cuda_matches_cpu(
    clients: dict[str, TestClient], path: str, parts: dict[str, str]
) -> None:
    files = {
        field: (name, (EXAMPLES / name).read_bytes(), "image/png") for field, name in parts.items()
    }
    answers = {}
    for provider, client in clients.items():
        response = client.post(path, files=files)
        assert response.status_code == 200, (provider, response.text)
        answers[provider] = response.json()
    assert_close(answers["cuda"], answers["cpu"], path)


def test_assert_close_tells_a_wrong_answer_from_rounding() -> None:
    cpu = {
        "label": "coat",
        "score": 0.99,
        "top_k": [{"class_id": 4, "score": 0.5}, {"class_id": 6, "score": 0.49}],
        "point": {"x": 121.7, "y": 43.4},
    }
    swapped = {**cpu, "top_k": [{"class_id": 6, "score": 0.495}, {"class_id": 4, "score": 0.495}]}
    assert_close(swapped, cpu)
    assert_close(
        {**cpu, "map_base64": png([[0, 100], [200, 255]])},
        {**cpu, "map_base64": png([[1, 99], [200, 250]])},
    )
    assert_close({**cpu, "point": {"x": 122.9, "y": 43.4}}, cpu)  # 1.2 px of 121.7
    for wrong in (
        {**cpu, "label": "shirt"},
        {**cpu, "score": 0.9},
        {**cpu, "point": {"x": 125.0, "y": 43.4}},
        {**cpu, "top_k": cpu["top_k"][:1]},
        {**cpu, "top_k": [{"class_id": 5, "score": 0.5}, {"class_id": 6, "score": 0.49}]},
    ):
        with pytest.raises(AssertionError):
            assert_close(wrong, cpu)
    with pytest.raises(AssertionError):
        assert_close(
            {"map_base64": png([[0, 100], [200, 255]])}, {"map_base64": png([[0, 100], [190, 255]])}
        )


def png(pixels: list[list[int]]) -> str:
    """A grey PNG of ``pixels``, base64-encoded as the API sends images."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()
