"""The V2 routes as Triton's own Python client (tritonclient[http]) sees them, over a real
uvicorn server on a loopback port: health, metadata, infer with JSON and binary tensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.main import create_app
from service.runtime import NUMPY_TYPES
from tests.live_server import live_server
from tests.service.conftest import make_settings
from tests.service.fakes import CELLS, SIZE
from tests.service.fakes_v2 import square_cell, square_tensor, write_v2_repository

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
COMMITTED = sorted(
    p.name for p in REPOSITORY.iterdir() if p.is_dir() and any(p.glob("*/config.json"))
)


def v2_names(repository: Path, models: list[str]) -> list[str]:
    """The V2 names the committed models should be served under (highest versions)."""
    names = []
    for model in models:
        version = max(
            (p for p in (repository / model).iterdir() if p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        graphs = json.loads((version / "config.json").read_text()).get("graphs")
        names += [f"{model}.{graph}" for graph in graphs] if graphs else [model]
    return names


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpclient.InferenceServerClient]:
    root = write_v2_repository(tmp_path_factory.mktemp("v2") / "repository")
    with live_server(create_app(make_settings(root))) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            yield client
        finally:
            client.close()


def test_health_and_server_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "vision-service"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_readiness(triton: httpclient.InferenceServerClient) -> None:
    for name in ("landmark", "chain.front", "chain.head"):
        assert triton.is_model_ready(name)
        assert triton.is_model_ready(name, model_version="1")
    assert not triton.is_model_ready("nope")
    metadata = triton.get_model_metadata("landmark")
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}
    ]
    assert triton.get_model_metadata("chain.head", model_version="1")["inputs"][0]["name"] == "mid"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    tensor = square_tensor(batch=2)
    image = httpclient.InferInput("image", list(tensor.shape), "FP32")
    image.set_data_from_numpy(tensor, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("confidence", binary_data=binary),
        httpclient.InferRequestedOutput("points", binary_data=binary),
    ]
    result = triton.infer("landmark", [image], outputs=outputs, request_id="r1")
    response = result.get_response()
    assert response["model_name"] == "landmark" and response["id"] == "r1"
    confidence = result.as_numpy("confidence")
    points = result.as_numpy("points")
    assert confidence is not None and points is not None
    assert confidence.shape == (2, CELLS, 2) and confidence.dtype == np.float32
    assert confidence[:, square_cell(), 0].min() > 0.99
    assert points.shape == (2, CELLS, 2, 2)
    assert ("binary_data_size" in json.dumps(response)) is binary


def test_infer_every_output_binary_by_default(triton: httpclient.InferenceServerClient) -> None:
    image = httpclient.InferInput("image", [1, 3, SIZE, SIZE], "FP32")
    image.set_data_from_numpy(square_tensor())
    result = triton.infer("chain.front", [image])  # no outputs named: binary_data_output
    mid = result.as_numpy("mid")
    assert mid is not None
    np.testing.assert_array_equal(mid, square_tensor())


def test_infer_gzip_request(triton: httpclient.InferenceServerClient) -> None:
    image = httpclient.InferInput("image", [1, 3, SIZE, SIZE], "FP32")
    image.set_data_from_numpy(square_tensor())
    result = triton.infer("landmark", [image], request_compression_algorithm="gzip")
    plain = triton.infer("landmark", [image])
    for name in ("class_probs", "confidence", "points"):
        np.testing.assert_array_equal(result.as_numpy(name), plain.as_numpy(name))


def test_errors_reach_the_client_as_messages(triton: httpclient.InferenceServerClient) -> None:
    image = httpclient.InferInput("image", [1, 3, SIZE, SIZE], "FP64")
    image.set_data_from_numpy(square_tensor().astype(np.float64))
    with pytest.raises(InferenceServerException) as bad_type:
        triton.infer("landmark", [image])
    assert bad_type.value.status() == "400" and "FP32" in bad_type.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404" and "chain.front" in unknown.value.message()


def test_a_body_over_the_limit_reaches_the_client_as_a_message(tmp_path: Path) -> None:
    """The size limit's 413 comes from a middleware, before any V2 route: its "error"
    member is what the client shows (without it: "an exception occurred in the client
    while decoding the response")."""
    root = write_v2_repository(tmp_path / "repository")
    with live_server(create_app(make_settings(root, max_upload_bytes=10_000))) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            image = httpclient.InferInput("image", [4, 3, SIZE, SIZE], "FP32")
            image.set_data_from_numpy(square_tensor(batch=4), binary_data=True)
            with pytest.raises(InferenceServerException) as too_large:
                client.infer("landmark", [image])
        finally:
            client.close()
    assert too_large.value.status() == "413"
    message = too_large.value.message()
    assert message.startswith("the request body is ") and "the limit is 10000 bytes" in message


@pytest.mark.skipif(not COMMITTED, reason="no model committed to models/repository yet")
def test_every_graph_of_the_committed_models() -> None:
    """Each V2 model (each graph of each committed model) answers zeros of its declared
    input shapes (dynamic axes = 2) with outputs of its declared shapes."""
    settings = make_settings(REPOSITORY, models=COMMITTED)
    with live_server(create_app(settings)) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            assert client.is_server_ready()
            names = v2_names(REPOSITORY, COMMITTED)
            assert all(client.is_model_ready(name) for name in names), names
            for name in names:
                metadata = client.get_model_metadata(name)
                inputs = []
                for spec in metadata["inputs"]:
                    shape = [2 if dim < 0 else dim for dim in spec["shape"]]
                    tensor = httpclient.InferInput(spec["name"], shape, spec["datatype"])
                    tensor.set_data_from_numpy(np.zeros(shape, NUMPY_TYPES[spec["datatype"]]))
                    inputs.append(tensor)
                result = client.infer(name, inputs)
                for output in metadata["outputs"]:
                    array = result.as_numpy(output["name"])
                    assert array is not None, (name, output["name"])
                    assert array.shape[0] == 2, (name, output["name"])
                    assert list(array.shape[1:]) == output["shape"][1:], (name, output["name"])
        finally:
            client.close()
