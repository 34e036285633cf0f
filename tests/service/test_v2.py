"""KServe V2 / Open Inference Protocol routes with hand-made requests: naming, tensors in
JSON and binary, every error as problem+json with an "error" member and a 4xx (503 while not
ready)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.routers.v2 import HEADER_LENGTH, V2Error, split_body
from tests.live_server import live_server
from tests.service.conftest import make_settings
from tests.service.fakes import CELLS, SIZE, write_model
from tests.service.fakes_v2 import square_cell, square_tensor, write_v2_repository
from tests.service.test_api_metrics import samples

CONFIDENT = 0.999  # sigmoid(10) of the fake graph's covered cell


@pytest.fixture
def v2(tmp_path: Path) -> Iterator[TestClient]:
    root = write_v2_repository(tmp_path / "repository")
    with TestClient(create_app(make_settings(root))) as client:
        yield client


def json_request(tensor: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(tensor.shape),
                "data": tensor.reshape(-1).tolist(),
            }
        ],
        **extra,
    }


def zeros_json_body(rows: int, outputs: list[dict[str, Any]]) -> bytes:
    """A JSON infer body of ``rows`` zero images written as short as JSON allows ("0")."""
    values = ",".join(["0"] * (rows * 3 * SIZE * SIZE))
    head = {"name": "image", "datatype": "FP32", "shape": [rows, 3, SIZE, SIZE]}
    image = json.dumps(head)[:-1] + f', "data": [{values}]}}'
    return f'{{"inputs": [{image}], "outputs": {json.dumps(outputs)}}}'.encode()


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {HEADER_LENGTH: str(len(head))}


def binary_image_request(tensor: np.ndarray, **extra: Any) -> tuple[bytes, dict[str, str]]:
    raw = tensor.astype("<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(tensor.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        **extra,
    }
    return binary_body(header, raw)


def error_of(response: Any, status: int) -> str:
    """The message of a V2 error: problem+json (API.md) whose ``error`` member, where V2
    clients read it, repeats the ``detail``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "error"} <= set(body)
    assert body["status"] == status and isinstance(body["title"], str) and body["title"]
    assert isinstance(body["error"], str) and body["error"] and body["error"] == body["detail"]
    message: str = body["error"]
    return message


def test_server_metadata_and_health(v2: TestClient) -> None:
    meta = v2.get("/v2").json()
    assert meta["name"] == "vision-service" and meta["version"] == "0.1.0"
    assert "binary_tensor_data" in meta["extensions"]
    assert v2.get("/v2/health/live").json() == {"live": True}
    assert v2.get("/v2/health/ready").json() == {"ready": True}


def test_every_graph_is_a_model_named_model_dot_graph(v2: TestClient) -> None:
    single = v2.get("/v2/models/landmark").json()
    assert single["name"] == "landmark" and single["versions"] == ["1"]
    assert single["platform"] == "onnxruntime_onnx"
    assert single["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert [o["name"] for o in single["outputs"]] == ["class_probs", "confidence", "points"]
    front = v2.get("/v2/models/chain.front").json()
    assert front["outputs"] == [{"name": "mid", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    head = v2.get("/v2/models/chain.head/versions/1").json()
    assert head["inputs"][0]["name"] == "mid"
    for name in ("landmark", "chain.front", "chain.head"):
        assert v2.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    # The model's own name (what /models lists) is its first graph, the one taking the image.
    assert v2.get("/v2/models/chain").json() == {**front, "name": "chain"}
    assert v2.get("/v2/models/chain/ready").json() == {"name": "chain", "ready": True}


def test_a_model_of_several_graphs_answers_inference_by_its_own_name(v2: TestClient) -> None:
    """Every name /models lists answers on V2; a multi-graph model runs its first graph."""
    names = [model["name"] for model in v2.get("/models").json()["models"]]
    assert "chain" in names
    for name in names:
        assert v2.get(f"/v2/models/{name}/ready").status_code == 200, name
    data = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": list(data.shape),
                "datatype": "FP32",
                "data": data.ravel().tolist(),
            }
        ]
    }
    by_name = v2.post("/v2/models/chain/infer", json=request).json()
    by_graph = v2.post("/v2/models/chain.front/infer", json=request).json()
    assert by_name["model_name"] == "chain" and by_graph["model_name"] == "chain.front"
    assert by_name["outputs"] == by_graph["outputs"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/%2e%2e",
        "/v2/models/landmark.model",
        "/v2/models/chain.front/versions/2",
        "/v2/models/landmark/versions/%2e%2e",
        "/v2/models/nope/ready",
    ],
)
def test_unknown_models_and_versions_are_404(v2: TestClient, path: str) -> None:
    error_of(v2.get(path), 404)


def test_traversal_never_reaches_a_model(v2: TestClient) -> None:
    for path in ("/v2/models/..%2F..%2Fetc%2Fpasswd", "/v2/models/%2e%2e/infer"):
        response = v2.get(path) if "infer" not in path else v2.post(path, json={})
        assert response.status_code in (404, 405)


def test_infer_json_in_json_out(v2: TestClient) -> None:
    request = json_request(square_tensor(2), id="abc", outputs=[{"name": "confidence"}])
    response = v2.post("/v2/models/landmark/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "landmark" and body["model_version"] == "1"
    assert body["id"] == "abc"
    (output,) = body["outputs"]
    assert output["name"] == "confidence" and output["datatype"] == "FP32"
    assert output["shape"] == [2, CELLS, 2]
    confidence = np.array(output["data"], np.float32).reshape(output["shape"])
    assert confidence[0, square_cell(), 0] > CONFIDENT
    assert confidence[1, square_cell(), 1] == pytest.approx(confidence[1, square_cell(), 0] / 2)
    assert confidence[:, : square_cell(), :].max() < 1e-3


def test_infer_nested_json_and_every_output_by_default(v2: TestClient) -> None:
    request = json_request(square_tensor())
    request["inputs"][0]["data"] = square_tensor().tolist()
    outputs = v2.post("/v2/models/landmark/versions/1/infer", json=request).json()["outputs"]
    assert [o["name"] for o in outputs] == ["class_probs", "confidence", "points"]
    assert all("data" in o for o in outputs)


def test_infer_binary_in_binary_out(v2: TestClient) -> None:
    body, headers = binary_image_request(
        square_tensor(), parameters={"binary_data_output": True}, outputs=[{"name": "points"}]
    )
    response = v2.post("/v2/models/landmark/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers[HEADER_LENGTH])
    header = json.loads(response.content[:length])
    (output,) = header["outputs"]
    assert output["shape"] == [1, CELLS, 2, 2] and "data" not in output
    size = output["parameters"]["binary_data_size"]
    assert size == CELLS * 2 * 2 * 4 == len(response.content) - length
    points = np.frombuffer(response.content[length:], "<f4").reshape(output["shape"])
    assert points[0, square_cell(), 0].tolist() == [68.0, 44.0]  # the cell's centre (u, v)


def test_mixed_binary_and_json_outputs_and_gzip_request(v2: TestClient) -> None:
    body, headers = binary_image_request(
        square_tensor(),
        outputs=[
            {"name": "confidence", "parameters": {"binary_data": True}},
            {"name": "points", "parameters": {"binary_data": False}},
        ],
    )
    headers["Content-Encoding"] = "gzip"
    response = v2.post("/v2/models/landmark/infer", content=gzip.compress(body), headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER_LENGTH])
    confidence, points = json.loads(response.content[:length])["outputs"]
    assert confidence["parameters"]["binary_data_size"] == len(response.content) - length
    assert len(points["data"]) == CELLS * 2 * 2


def test_two_graphs_chain_through_v2(v2: TestClient) -> None:
    body, headers = binary_image_request(square_tensor(), parameters={"binary_data_output": True})
    front = v2.post("/v2/models/chain.front/infer", content=body, headers=headers)
    length = int(front.headers[HEADER_LENGTH])
    mid = np.frombuffer(front.content[length:], "<f4").reshape(1, 3, SIZE, SIZE)
    np.testing.assert_array_equal(mid, square_tensor())
    request = json_request(mid, outputs=[{"name": "confidence"}])
    request["inputs"][0]["name"] = "mid"
    head = v2.post("/v2/models/chain.head/infer", json=request).json()
    assert head["model_name"] == "chain.head"
    assert np.array(head["outputs"][0]["data"]).reshape(1, CELLS, 2)[0, square_cell(), 0] > 0.99


def _input(**changes: Any) -> dict[str, Any]:
    tensor = {
        "name": "image",
        "datatype": "FP32",
        "shape": [1, 3, SIZE, SIZE],
        "data": [0.0] * (3 * SIZE * SIZE),
    }
    tensor.update(changes)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        (_input(datatype="INT64"), "FP32"),
        (_input(datatype="BYTES"), "FP32"),
        (_input(shape=[1, 3, SIZE]), "shape"),
        (_input(shape=[1, 3, SIZE, SIZE + 1]), "shape"),
        (_input(shape=[0, 3, SIZE, SIZE], data=[]), "shape"),
        (_input(shape=[-1, 3, SIZE, SIZE]), "shape"),
        (_input(data=[0.0] * 10), "values"),
        (_input(data=["0"] * (3 * SIZE * SIZE)), "kind"),
        (_input(data=[[0.0], [0.0, 1.0]]), "regular"),
        (_input(data=None), "neither"),
        (_input(name="img"), "differ"),
        ({"inputs": [*_input()["inputs"], *_input()["inputs"]]}, "more than once"),
        ({"inputs": []}, "inputs"),
        ({"outputs": []}, "inputs"),
        ([1, 2], "not an inference request"),
        ({**_input(), "outputs": [{"name": "nope"}]}, "unknown output"),
        ({**_input(), "outputs": [{"name": "points"}, {"name": "points"}]}, "more than once"),
        (
            {**_input(), "outputs": [{"name": "points", "parameters": {"classification": 3}}]},
            "classification",
        ),
        ({**_input(), "parameters": {"binary_data_output": "yes"}}, "true or false"),
        (_input(parameters={"binary_data_size": 10}), "both data"),
        (_input(parameters={"binary_data_size": "x"}, data=None), "integer"),
    ],
)
def test_bad_json_requests_are_400(v2: TestClient, request_body: Any, fragment: str) -> None:
    response = v2.post("/v2/models/landmark/infer", json=request_body)
    assert fragment in error_of(response, 400)


def test_integer_range_is_checked(tmp_path: Path) -> None:
    # The fake graph has only FP32 inputs; the check itself is pure numpy.
    from service.routers.v2 import _json_tensor

    assert _json_tensor("x", [1, 255], "UINT8", 2).dtype == np.uint8
    with pytest.raises(V2Error, match="range"):
        _json_tensor("x", [1, 256], "UINT8", 2)
    with pytest.raises(V2Error, match="kind"):
        _json_tensor("x", [True, False], "INT32", 2)
    with pytest.raises(V2Error, match="kind"):
        _json_tensor("x", [1.5], "INT64", 1)


@pytest.mark.parametrize(
    ("cut", "extra", "header", "fragment"),
    [
        (4, b"", None, "ends early"),
        (0, b"\0\0\0\0", None, "belong to no input"),
        (0, b"", "-1", HEADER_LENGTH),
        (0, b"", "999999999", HEADER_LENGTH),
        (0, b"", "abc", HEADER_LENGTH),
        (0, b"", "3", "not valid JSON"),
    ],
)
def test_bad_binary_requests_are_400(
    v2: TestClient, cut: int, extra: bytes, header: str | None, fragment: str
) -> None:
    body, headers = binary_image_request(square_tensor())
    if header is not None:
        headers[HEADER_LENGTH] = header
    body = (body[:-cut] if cut else body) + extra
    response = v2.post("/v2/models/landmark/infer", content=body, headers=headers)
    assert fragment in error_of(response, 400)


def test_binary_size_must_match_the_shape(v2: TestClient) -> None:
    raw = square_tensor().tobytes()
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [2, 3, SIZE, SIZE],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    body, headers = binary_body(header, raw)
    response = v2.post("/v2/models/landmark/infer", content=body, headers=headers)
    assert "needs" in error_of(response, 400)


def test_bad_content_encoding_is_400(v2: TestClient) -> None:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = v2.post("/v2/models/landmark/infer", content=b"not gzip", headers=headers)
    assert "gzip" in error_of(response, 400)
    headers["Content-Encoding"] = "br"
    assert "not supported" in error_of(
        v2.post("/v2/models/landmark/infer", content=b"{}", headers=headers), 400
    )


def test_gzip_members_truncation_and_trailing_bytes(v2: TestClient) -> None:
    """Two gzip members are one body (RFC 1952); a stream cut short, or followed by bytes
    that are no member, is a 400 about the encoding (a cut one was read as broken JSON)."""
    body, headers = binary_image_request(square_tensor())
    url = "/v2/models/landmark/infer"
    whole = v2.post(url, content=gzip.compress(body), headers=headers | GZIP)
    assert whole.status_code == 200, whole.text
    half = len(body) // 2
    members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    two = v2.post(url, content=members, headers=headers | GZIP)
    assert two.status_code == 200 and two.content == whole.content
    cut = gzip.compress(body)[:-12]
    assert "ends mid-stream" in error_of(v2.post(url, content=cut, headers=headers | GZIP), 400)
    junk = gzip.compress(body) + b"junk"
    assert "gzip" in error_of(v2.post(url, content=junk, headers=headers | GZIP), 400)
    padded = gzip.compress(body[:half]) + b"\0" * 5 + gzip.compress(body[half:]) + b"\0\0"
    assert v2.post(url, content=padded, headers=headers | GZIP).content == whole.content
    tiny = gzip.compress(b"") * 65  # 20 bytes each; a million of them held the event loop
    assert "more than 64" in error_of(v2.post(url, content=tiny, headers=headers | GZIP), 400)
    deflated = zlib.compress(body) + b"junk"
    deflate = headers | {"Content-Encoding": "deflate"}
    assert "follow" in error_of(v2.post(url, content=deflated, headers=deflate), 400)


GZIP = {"Content-Encoding": "gzip"}


def test_gzip_bomb_is_413(tmp_path: Path) -> None:
    root = write_v2_repository(tmp_path / "repository")
    with TestClient(create_app(make_settings(root, max_upload_bytes=100_000))) as client:
        bomb = gzip.compress(b" " * 1_000_000)
        headers = {"Content-Encoding": "gzip"}
        response = client.post("/v2/models/landmark/infer", content=bomb, headers=headers)
        assert "inflated" in error_of(response, 413)
        # Members each under the limit count together.
        members = gzip.compress(b" " * 60_000) * 2
        response = client.post("/v2/models/landmark/infer", content=members, headers=headers)
        assert "inflated" in error_of(response, 413)


def test_a_body_is_held_to_the_upload_limit_alike_sent_plain_or_gzipped(tmp_path: Path) -> None:
    """A V2 body is JSON, not a form: no 64 KiB of form framing on top of the limit. Before,
    a body between the two passed sent plain and was a 413 gzipped (found by a review)."""
    root = write_v2_repository(tmp_path / "repository")
    limit = 100_000
    with TestClient(create_app(make_settings(root, max_upload_bytes=limit))) as client:
        over = b" " * (limit + 1000)  # under the limit plus a form's framing
        for content, headers in ((over, {}), (gzip.compress(over), GZIP)):
            response = client.post("/v2/models/landmark/infer", content=content, headers=headers)
            detail = error_of(response, 413)
            assert str(limit) in detail and "form framing" not in detail
        # At the limit, plain, the body reaches the route (and is no JSON): 400.
        response = client.post("/v2/models/landmark/infer", content=b" " * limit)
        assert response.status_code == 400


def test_an_answer_that_cannot_fit_the_upload_limit_is_413_before_the_run(
    tmp_path: Path,
) -> None:
    """A small binary (or gzip) request can ask for an answer many times its size: a JSON
    answer of 125 MB from a 20 kB request took 850 MB to build. When even the fewest bytes
    its outputs' shapes allow pass the limit, it is refused before the run."""
    root = write_v2_repository(tmp_path / "repository")
    # One row of chain.front's 3x160x160 output: 307 kB binary, and at least that in JSON,
    # asked for by a JSON body of 154 kB (a zero is "0,": two bytes a value).
    settings = make_settings(root, max_upload_bytes=200_000)
    with TestClient(create_app(settings)) as client:
        for binary in (False, True):
            outputs = [{"name": "mid", "parameters": {"binary_data": binary}}]
            body = zeros_json_body(1, outputs)
            assert len(body) < 200_000
            refused = client.post("/v2/models/chain.front/infer", content=body)
            detail = error_of(refused, 413)
            assert "at least 307200 bytes" in detail and "VISION_MAX_UPLOAD_BYTES" in detail
        runs = samples(client.get("/metrics").text)
        assert not [v for (name, _), v in runs.items() if name == "vision_batch_size_count" and v]


def test_a_json_answer_is_bounded_by_its_written_size(tmp_path: Path) -> None:
    """JSON's size depends on the values: zeros (a ReLU map's many) take 4 bytes, other
    floats up to 24. Two rows of zeros (614 kB) fit a 2 MB limit (an estimate of 24 bytes a
    value, 3.7 MB, refused them, and attention's feature maps with them); two rows of random
    values (2.9 MB) do not, and the 413 says to ask for binary, which then fits."""
    root = write_v2_repository(tmp_path / "repository")
    settings = make_settings(root, max_upload_bytes=2_000_000)
    zeros = np.zeros((2, 3, SIZE, SIZE), np.float32)
    noise = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    with TestClient(create_app(settings)) as client:
        body, headers = binary_image_request(zeros, outputs=[{"name": "mid"}])
        answered = client.post("/v2/models/chain.front/infer", content=body, headers=headers)
        assert answered.status_code == 200, answered.text[:200]
        assert len(answered.content) < 1_000_000
        np.testing.assert_array_equal(answered.json()["outputs"][0]["data"], zeros.reshape(-1))
        body, headers = binary_image_request(noise, outputs=[{"name": "mid"}])
        refused = client.post("/v2/models/chain.front/infer", content=body, headers=headers)
        detail = error_of(refused, 413)
        assert "'mid' in JSON" in detail and "binary_data" in detail
        # One row of noise (1.5 MB): 76 800 values, more than one piece of the JSON writer.
        body, headers = binary_image_request(noise[:1], outputs=[{"name": "mid"}])
        one = client.post("/v2/models/chain.front/infer", content=body, headers=headers)
        assert one.status_code == 200, one.text[:200]
        data = np.array(one.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_array_equal(data, noise[:1].reshape(-1))
        binary = {"outputs": [{"name": "mid", "parameters": {"binary_data": True}}]}
        body, headers = binary_image_request(noise, **binary)
        answered = client.post("/v2/models/chain.front/infer", content=body, headers=headers)
        assert answered.status_code == 200, answered.text[:200]
        length = int(answered.headers[HEADER_LENGTH])
        np.testing.assert_array_equal(
            np.frombuffer(answered.content[length:], "<f4"), noise.reshape(-1)
        )


IN_FLIGHT = ("vision_request_body_bytes_in_flight", ())


def test_an_answer_of_exactly_the_limit_passes_and_one_byte_more_is_413(tmp_path: Path) -> None:
    """The limit counts every byte of the JSON written, its closing brackets too."""
    root = write_v2_repository(tmp_path / "repository")
    # A JSON body of zeros (two bytes a value) for a JSON answer of zeros (four): the body
    # fits whichever limit the answer is held to.
    body, headers = zeros_json_body(1, [{"name": "mid"}]), {}
    with TestClient(create_app(make_settings(root))) as client:
        size = len(
            client.post("/v2/models/chain.front/infer", content=body, headers=headers).content
        )
    for limit, status in ((size, 200), (size - 1, 413)):
        with TestClient(create_app(make_settings(root, max_upload_bytes=limit))) as client:
            answer = client.post("/v2/models/chain.front/infer", content=body, headers=headers)
            assert answer.status_code == status, (limit, answer.text[:200])


def test_the_answer_is_reserved_before_the_run_not_refused_after_it(tmp_path: Path) -> None:
    """The body budget must hold the answer's most (capped at the limit) before the run: a
    503 after it would throw the run away and invite the client to run it again. With a
    stalled upload holding most of the budget, a request whose JSON answer would not fit
    is refused unrun; with room for it, the same request is answered."""
    root = write_v2_repository(tmp_path / "repository")
    noise = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    body, headers = binary_image_request(noise, outputs=[{"name": "mid"}])
    stalled_length = 2_000_000
    for budget, status in ((2_800_000, 503), (6_000_000, 200)):
        settings = make_settings(root, max_upload_bytes=2_000_000, max_body_bytes_in_flight=budget)
        with live_server(create_app(settings)) as url, httpx.Client(base_url=url) as client:
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as stalled:
                stalled.sendall(
                    b"POST /v2/models/landmark/infer HTTP/1.1\r\nHost: localhost\r\n"
                    + f"Content-Length: {stalled_length}\r\n\r\n{{".encode()
                )
                deadline = time.monotonic() + 10
                while samples(client.get("/metrics").text).get(IN_FLIGHT, 0) < stalled_length:
                    assert time.monotonic() < deadline, "the stalled upload never arrived"
                    time.sleep(0.02)
                answer = client.post("/v2/models/chain.front/infer", content=body, headers=headers)
                assert answer.status_code == status, answer.text[:300]
                runs = samples(client.get("/metrics").text)
        ran = [v for (name, _), v in runs.items() if name == "vision_batch_size_count" and v]
        assert ran == ([] if status == 503 else [1.0])


def test_problems_answered_before_a_v2_route_carry_an_error_member(tmp_path: Path) -> None:
    """404, 405 and the size limit's 413 on V2 paths are problem+json (no V2 route ran),
    with the detail in "error" too, where V2 clients read the message; elsewhere not."""
    root = write_v2_repository(tmp_path / "repository")
    with TestClient(create_app(make_settings(root, max_upload_bytes=1000))) as client:
        answers = [
            (client.get("/v2/models/landmark/nowhere"), 404),
            (client.get("/v2/models/landmark/infer"), 405),
            (client.post("/v2/models/landmark/infer", content=b" " * 200_000), 413),
        ]
        for response, status in answers:
            assert response.status_code == status
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["error"] == problem["detail"] and problem["detail"]
        elsewhere = client.get("/nowhere")
        assert elsewhere.status_code == 404 and "error" not in elsewhere.json()
        assert "error" not in client.get("/v2x").json()


def test_api_keys_guard_everything_but_health(tmp_path: Path) -> None:
    root = write_v2_repository(tmp_path / "repository")
    with TestClient(create_app(make_settings(root, api_keys=["k"]))) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/health/live").status_code == 200
        for path in ("/v2", "/v2/models/landmark", "/v2/models/landmark/ready"):
            assert "API key" in error_of(client.get(path), 401)
        # A body without a key is refused before it is read (the upload gate), as
        # problem+json whose `error` member the protocol's clients read.
        refused = client.post("/v2/models/landmark/infer", json={})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert "API key" in refused.json()["error"]
        # Without a body the route's key check answers, in the same shape.
        assert "API key" in error_of(client.post("/v2/models/landmark/infer"), 401)
        assert client.get("/v2/models/landmark", headers={"X-API-Key": "k"}).status_code == 200


def test_failed_model_is_503_with_reason(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_model(root)
    write_model(root, "broken", file_bytes=b"not the graph")
    with TestClient(create_app(make_settings(root))) as client:
        response = client.get("/v2/health/ready")
        assert "broken" in error_of(response, 503) and response.headers["Retry-After"]
        assert "sha256" in error_of(client.get("/v2/models/broken/ready"), 503)
        assert client.get("/v2/models/broken").json()["name"] == "broken"  # config was read
        assert "not ready" in error_of(client.post("/v2/models/broken/infer", json=_input()), 503)
        assert client.get("/v2/models/landmark/ready").status_code == 200
        # A request that does not parse is the client's error even so: a 400, not the 503.
        for body in ({"inputs": []}, {"outputs": []}):
            response = client.post("/v2/models/broken/infer", json=body)
            assert "not an inference request: inputs" in error_of(response, 400)
        broken = client.post(
            "/v2/models/broken/infer", content=b"{", headers={"content-type": "application/json"}
        )
        assert "not valid JSON" in error_of(broken, 400)


def test_openapi_documents_v2_with_examples_and_errors(v2: TestClient) -> None:
    paths = v2.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert {"400", "401", "404", "413", "503"} <= set(infer["responses"])
    body = infer["requestBody"]["content"]
    assert body["application/json"]["example"]["inputs"][0]["name"] == "image"
    assert "application/octet-stream" in body
    assert "$ref" not in json.dumps(body["application/json"]["schema"])
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}/ready"):
        assert path in paths


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_non_finite_inputs_are_400(v2: TestClient, value: float) -> None:
    """NaN and infinities (also 1e39, beyond FP32) would come back as bare NaN tokens,
    which are not JSON; they are refused, in JSON and in binary inputs alike."""
    request = json_request(square_tensor())
    request["inputs"][0]["data"][0] = value
    headers = {"Content-Type": "application/json"}
    response = v2.post("/v2/models/landmark/infer", content=json.dumps(request), headers=headers)
    # 1e39 is finite as a JSON number but has no FP32 value; in binary it is already inf.
    expected = "range of FP32" if np.isfinite(value) else "NaN or infinite"
    assert expected in error_of(response, 400)
    raw = square_tensor()
    with np.errstate(over="ignore"):
        raw.reshape(-1)[0] = value
    body, headers = binary_image_request(raw)
    response = v2.post("/v2/models/landmark/infer", content=body, headers=headers)
    assert "NaN or infinite" in error_of(response, 400)


def test_non_finite_outputs_are_400_in_json_and_sent_in_binary() -> None:
    """Finite inputs near FP32's limit overflow the served landmark graph's outputs: JSON
    cannot carry them (a 400 saying to ask for binary, never a 500), binary can."""
    repository = Path(__file__).resolve().parents[2] / "models" / "repository"
    settings = make_settings(repository, models=["landmark"])
    with TestClient(create_app(settings)) as client:
        (spec,) = client.get("/v2/models/landmark").json()["inputs"]
        tensor = np.full([1, *spec["shape"][1:]], 3.0e38, np.float32)
        request = json_request(tensor)
        request["inputs"][0]["name"] = spec["name"]
        response = client.post("/v2/models/landmark/infer", json=request)
        assert "binary_data true" in error_of(response, 400)
        request["parameters"] = {"binary_data_output": True}
        response = client.post("/v2/models/landmark/infer", json=request)
        assert response.status_code == 200, response.text
        length = int(response.headers[HEADER_LENGTH])
        header = json.loads(response.content[:length])
        offset, found_non_finite = length, False
        for output in header["outputs"]:
            size = output["parameters"]["binary_data_size"]
            values = np.frombuffer(response.content[offset : offset + size], "<f4")
            found_non_finite |= not np.isfinite(values).all()
            offset += size
        assert found_non_finite


def test_inputs_with_different_batch_sizes_are_400() -> None:
    """A two-input graph (the served attention model's perception graph) gets rows of one
    request with both inputs' first axes equal, or a 400 naming the sizes."""
    repository = Path(__file__).resolve().parents[2] / "models" / "repository"
    settings = make_settings(repository, models=["attention"])
    with TestClient(create_app(settings)) as client:
        metadata = client.get("/v2/models/attention.perception").json()
        inputs = []
        for batch, spec in zip((2, 1), metadata["inputs"], strict=True):
            shape = [batch, *spec["shape"][1:]]
            raw = np.zeros(shape, "<f4").tobytes()
            inputs.append(
                {
                    "name": spec["name"],
                    "datatype": spec["datatype"],
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                    "raw": raw,
                }
            )
        header = {"inputs": [{k: v for k, v in i.items() if k != "raw"} for i in inputs]}
        body, headers = binary_body(header, *(i["raw"] for i in inputs))
        response = client.post(
            "/v2/models/attention.perception/infer", content=body, headers=headers
        )
        assert "disagree on the batch size" in error_of(response, 400)
        assert "[1, 2]" in response.json()["error"]


def test_json_that_does_not_parse_says_where() -> None:
    """The parser's own reason, once (not "Invalid JSON: Invalid JSON: ...")."""
    with pytest.raises(V2Error) as caught:
        split_body(b'{"inputs": [', None)
    assert caught.value.status == 400
    message = str(caught.value)
    assert message.startswith("the inference request is not valid JSON: ")
    assert "EOF" in message and "line 1" in message and "Invalid JSON" not in message


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # past the JSON parser's recursion limit
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        # Within the parser's limit, so the nesting reaches validation and numpy.
        json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": 0}]})
        .replace('"data": 0', '"data": ' + "[" * 500 + "0" + "]" * 500)
        .encode(),
    ],
    ids=["whole-body", "in-inputs", "in-data"],
)
def test_deeply_nested_json_is_400_not_500(v2: TestClient, body: bytes) -> None:
    response = v2.post(
        "/v2/models/landmark/infer", content=body, headers={"content-type": "application/json"}
    )
    assert error_of(response, 400)


def test_a_full_queue_answers_503_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.routers import v2 as v2_module

    parsed: list[bytes] = []
    real = v2_module.split_body
    monkeypatch.setattr(
        v2_module, "split_body", lambda body, length: (parsed.append(body), real(body, length))[1]
    )
    root = write_v2_repository(tmp_path / "repository")
    with TestClient(create_app(make_settings(root, batch_queue_size=1))) as client:
        batcher = client.app.state.registry.get("landmark").batcher()  # type: ignore[attr-defined]
        with batcher.slot():
            full = client.post("/v2/models/landmark/infer", json=json_request(square_tensor()))
        after = client.post("/v2/models/landmark/infer", json=json_request(square_tensor()))
    assert full.status_code == 503 and "error" in full.json()
    assert full.headers["retry-after"]
    assert after.status_code == 200
    assert len(parsed) == 1  # only the request that got a slot was parsed


def test_the_parsed_body_is_let_go_before_the_run(
    v2: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON tensor parsed into Python numbers takes several times its bytes; only the
    arrays are needed once the request waits for its run. Traced memory when the run
    starts: the input and its copy in the batch buffer, about 1.9x the float32 input (12x
    before the handler let go of the body and the parsed request)."""
    held: list[int] = []
    run = ort.InferenceSession.run

    def traced_run(self: ort.InferenceSession, *args: Any, **kwargs: Any) -> Any:
        held.append(tracemalloc.get_traced_memory()[0])
        return run(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", traced_run)
    rows = 4
    values = np.random.default_rng(0).random(rows * 3 * SIZE * SIZE).round(6).tolist()
    body = json.dumps(_input(shape=[rows, 3, SIZE, SIZE], data=values)).encode()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        answer = v2.post(
            "/v2/models/landmark/infer",
            content=body,
            headers={"content-type": "application/json"},
        )
    finally:
        tracemalloc.stop()
    assert answer.status_code == 200, answer.text
    input_bytes = rows * 3 * SIZE * SIZE * 4
    assert held and held[-1] - base < 4 * input_bytes, (held[-1] - base, input_bytes)


def test_runs_do_not_wait_for_threads_held_by_other_work(v2: TestClient) -> None:
    """Blocking work (the teacher-record store, while its database is down) runs in anyio's
    default thread pool; batch runs have threads of their own, so with that pool held to
    its last thread inference still answers."""
    portal = v2.portal
    assert portal is not None
    default = portal.call(anyio.to_thread.current_default_thread_limiter)

    def hold_the_pool(tokens: float) -> None:
        default.total_tokens = tokens

    tokens = default.total_tokens
    portal.call(hold_the_pool, 1)
    release = threading.Event()
    portal.start_task_soon(anyio.to_thread.run_sync, release.wait)  # takes the one thread
    answers: list[int] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            v2.post("/v2/models/landmark/infer", json=_input()).status_code
        )
    )
    try:
        caller.start()
        caller.join(timeout=10)
        assert answers == [200]
    finally:
        release.set()
        caller.join()
        portal.call(hold_the_pool, tokens)
