from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.errors import ModelLoadError
from service.runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    LoadedModel,
    ModelRegistry,
    ModelState,
    discover_models,
    gpu_visible,
    load_model,
    public_reason,
    resolve_providers,
    select_version,
)
from service.settings import Settings
from tests.service.conftest import make_settings
from tests.service.fakes import landmark_graph, write_model

CUDA_LISTED = CUDA_PROVIDER in ort.get_available_providers()


def test_resolve_providers() -> None:
    assert resolve_providers("cpu", [CUDA_PROVIDER, CPU_PROVIDER]) == [CPU_PROVIDER]
    assert resolve_providers("auto", [CUDA_PROVIDER, CPU_PROVIDER]) == [CUDA_PROVIDER, CPU_PROVIDER]
    assert resolve_providers("auto", [CPU_PROVIDER]) == [CPU_PROVIDER]
    no_gpu = resolve_providers("auto", [CUDA_PROVIDER, CPU_PROVIDER], gpu=False)
    assert no_gpu == [CPU_PROVIDER]
    assert resolve_providers("cuda", [CUDA_PROVIDER, CPU_PROVIDER], gpu=False)[0] == CUDA_PROVIDER
    assert resolve_providers(
        "cuda", ["TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER]
    ) == [
        CUDA_PROVIDER,
        CPU_PROVIDER,
    ]
    with pytest.raises(ModelLoadError, match="providers=cuda"):
        resolve_providers("cuda", [CPU_PROVIDER])


def test_good_model_loads_warms_and_runs(repo: Path) -> None:
    model = load_model("landmark", make_settings(repo, warmup_runs=2))
    assert model.state is ModelState.READY, model.error
    assert model.version == "1" and model.error is None
    assert model.providers == [CPU_PROVIDER]
    outputs = model.run({"image": np.zeros((3, 3, 160, 160), np.float32)})
    assert outputs["class_probs"].shape == (3, 400, 2, 9)
    assert outputs["confidence"].shape == (3, 400, 2)
    assert outputs["points"].shape == (3, 400, 2, 2)


def test_auto_reports_the_providers_really_in_use(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        model = load_model("landmark", make_settings(repo, providers="auto"))
    assert model.ready, model.error
    assert CPU_PROVIDER in model.providers
    if not gpu_visible():  # auto does not even try: no fallback warning, no ORT errors
        assert model.providers == [CPU_PROVIDER]
        assert "CUDA was requested" not in caplog.text
    elif CUDA_LISTED and CUDA_PROVIDER not in model.providers:
        # A GPU node but CUDA did not come up (libraries missing): said loudly.
        assert "CUDA was requested but the session runs on" in caplog.text


def test_gpu_visible_looks_for_nvidia_or_wsl_gpu_device_nodes(tmp_path: Path) -> None:
    assert not gpu_visible(tmp_path)
    (tmp_path / "nvidiactl").touch()  # the driver's control node alone: no GPU
    assert not gpu_visible(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_visible(tmp_path)
    (tmp_path / "nvidia0").unlink()
    (tmp_path / "dxg").touch()
    assert gpu_visible(tmp_path)


def test_cuda_without_a_working_gpu_is_a_load_failure(repo: Path) -> None:
    model = load_model("landmark", make_settings(repo, providers="cuda"))
    if model.ready:
        assert CUDA_PROVIDER in model.providers
        pytest.skip("a working GPU is present")
    assert model.state is ModelState.FAILED
    assert "CUDA" in (model.error or "")
    assert model.providers == []


def test_corrupt_model_file_fails_with_reason(tmp_path: Path) -> None:
    garbage = b"this is not a protobuf" * 10
    write_model(tmp_path, graph=garbage)  # digest of the garbage itself: ORT must refuse it
    model = load_model("landmark", make_settings(tmp_path))
    assert model.state is ModelState.FAILED
    assert "onnxruntime could not load the graph" in (model.error or "")


def test_wrong_sha256_fails_with_reason(tmp_path: Path) -> None:
    write_model(tmp_path, file_bytes=landmark_graph(size=128))
    model = load_model("landmark", make_settings(tmp_path))
    assert model.state is ModelState.FAILED
    assert "sha256" in (model.error or "")


@pytest.mark.parametrize(
    ("graph", "match"),
    [
        (lambda: landmark_graph(size=128), "input 'image' has shape"),
        (lambda: landmark_graph(point_dims=3), "points"),
        (lambda: landmark_graph(input_name="pixels"), "graph inputs"),
    ],
)
def test_signature_mismatch_fails_with_reason(tmp_path: Path, graph, match: str) -> None:
    write_model(tmp_path, graph=graph())
    model = load_model("landmark", make_settings(tmp_path))
    assert model.state is ModelState.FAILED
    assert match in (model.error or "")


def test_output_shape_mismatch_in_graph_only(tmp_path: Path) -> None:
    # Config and decoder agree; only the graph's points output differs from config.
    graph = landmark_graph(point_dims=3)
    write_model(tmp_path, graph=graph)
    error = load_model("landmark", make_settings(tmp_path)).error or ""
    assert "output 'points' has shape" in error


def test_missing_files_fail_with_reason(tmp_path: Path) -> None:
    version_dir = write_model(tmp_path)
    (version_dir / "model.onnx").unlink()
    assert "cannot read" in (load_model("landmark", make_settings(tmp_path)).error or "")
    (version_dir / "config.json").unlink()
    assert "config.json is missing" in (load_model("landmark", make_settings(tmp_path)).error or "")
    (version_dir / "config.json").write_text("{not json")
    assert "not a valid config" in (load_model("landmark", make_settings(tmp_path)).error or "")


def test_config_naming_another_model_fails(tmp_path: Path) -> None:
    write_model(tmp_path, config_changes={"name": "other"})
    assert "config.json names other/1" in (
        load_model("landmark", make_settings(tmp_path)).error or ""
    )


def test_unknown_task_fails(tmp_path: Path) -> None:
    write_model(tmp_path, config_changes={"task": "segmentation"})
    assert "unknown task" in (load_model("landmark", make_settings(tmp_path)).error or "")


def test_highest_integer_version_unless_pinned(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        write_model(tmp_path, version=version)
    (tmp_path / "landmark" / "latest").mkdir()  # not an integer: ignored
    assert load_model("landmark", make_settings(tmp_path)).version == "10"
    pinned = make_settings(tmp_path, model_versions={"landmark": "2"})
    assert load_model("landmark", pinned).version == "2"
    with pytest.raises(ModelLoadError, match=r"pinned version '3' not found.*\['2', '9', '10'\]"):
        select_version(tmp_path / "landmark", "3")


def test_one_failure_does_not_stop_the_others(tmp_path: Path) -> None:
    write_model(tmp_path, "landmark")
    write_model(tmp_path, "broken", file_bytes=b"corrupt")
    settings = make_settings(tmp_path)
    names, problem = discover_models(settings)
    assert names == ["broken", "landmark"] and problem is None
    registry = ModelRegistry({name: load_model(name, settings) for name in names})
    assert registry.models["landmark"].ready
    assert registry.models["broken"].state is ModelState.FAILED
    assert not registry.ready


def test_discover_reports_missing_or_empty_repository(tmp_path: Path) -> None:
    names, problem = discover_models(make_settings(tmp_path / "nope"))
    assert names == [] and "is not a directory" in (problem or "")
    names, problem = discover_models(make_settings(tmp_path))
    assert names == [] and "no models found" in (problem or "")
    names, problem = discover_models(make_settings(tmp_path, models=["landmark"]))
    assert names == ["landmark"] and problem is None
    assert "no directory" in (load_model("landmark", make_settings(tmp_path)).error or "")


def test_registry_readiness() -> None:
    ready = LoadedModel(name="a", state=ModelState.READY)
    failed = LoadedModel(name="b", state=ModelState.FAILED, error="x")
    assert ModelRegistry({"a": ready}).ready
    assert not ModelRegistry({"a": ready, "b": failed}).ready
    assert not ModelRegistry({}).ready
    assert not ModelRegistry({"a": ready}, problem="shutting down").ready


def test_config_json_matches_readme_example_keys(tmp_path: Path) -> None:
    # Extra keys written by a newer export must not break loading.
    version_dir = write_model(tmp_path)
    config = json.loads((version_dir / "config.json").read_text())
    config["preprocess"]["interpolation"] = "bilinear"
    config["new_key"] = {"anything": 1}
    (version_dir / "config.json").write_text(json.dumps(config))
    assert load_model("landmark", make_settings(tmp_path)).ready


def test_thread_settings_are_applied(repo: Path) -> None:
    from service.runtime import session_options

    options = session_options(Settings(model_repository=repo, intra_op_threads=3))
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_run_is_safe_from_several_threads(repo: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = load_model("landmark", make_settings(repo, intra_op_threads=2))
    rng = np.random.default_rng(0)
    batches = [rng.random((1, 3, 160, 160), dtype=np.float32) for _ in range(8)]
    expected = [model.run({"image": batch})["confidence"] for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: model.run({"image": b})["confidence"], batches * 3))
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result, expected[index % len(batches)])


def test_public_reason_hides_the_server_file_layout(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    assert public_reason(f"no file {repository}/landmark/1/model.onnx", repository) == (
        "no file landmark/1/model.onnx"
    )
    assert public_reason(f"{repository} is empty", repository) == "the repository is empty"
    # Outside the repository: cut to the file name.
    assert public_reason("cannot open /opt/cuda/lib/libcudnn.so.9: no such file", repository) == (
        "cannot open libcudnn.so.9: no such file"
    )
