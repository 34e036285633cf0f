"""The Python client, sync and async, against a real server on a loopback port."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from client import (
    AsyncVisionClient,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    StoreFull,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    VisionClient,
    VisionError,
)
from service.main import create_app
from tests.live_server import live_server
from tests.service.conftest import make_settings
from tests.service.fakes import CELLS, FAKE_CLASS, LABELS, write_model
from tests.service.fakes_v2 import square_cell, square_tensor, write_v2_repository
from tests.service.images import encode, scene

API_KEY = "secret"
MAX_UPLOAD = 2_000_000  # above the V2 tests' two 160x160 FP32 images
MAX_PIXELS = 100_000


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = write_v2_repository(tmp_path_factory.mktemp("client") / "repository")
    settings = make_settings(
        root, api_keys=[API_KEY], max_upload_bytes=MAX_UPLOAD, max_image_pixels=MAX_PIXELS
    )
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def vision(base_url: str) -> Iterator[VisionClient]:
    with VisionClient(base_url, api_key=API_KEY) as client:
        yield client


def test_recognize_from_bytes_path_and_file(vision: VisionClient, tmp_path: Path) -> None:
    png = encode(scene(320, 160, (80, 80, 96, 96)))
    path = tmp_path / "scene.png"
    path.write_bytes(png)
    with path.open("rb") as handle:
        results = [vision.recognize(png), vision.recognize(path), vision.recognize(handle)]
    results += [vision.recognize(bytearray(png)), vision.recognize(memoryview(png))]
    for result in results:
        assert result.model.name == "landmark" and result.model.version == "1"
        assert (result.image.width, result.image.height) == (320, 160)
        (landmark,) = result.landmarks
        assert landmark.label == LABELS[FAKE_CLASS]
        assert (landmark.point.x, landmark.point.y) == pytest.approx((88.0, 88.0))
    assert vision.recognize(png, min_score=1.0).landmarks == []


def test_operations(vision: VisionClient) -> None:
    assert vision.health_live().status == "alive"
    assert set(vision.health_ready().models) == {"landmark", "chain"}
    names = {model.name: model for model in vision.models().models}
    assert names["landmark"].providers == ["CPUExecutionProvider"]
    chain_graphs = names["chain"].graphs
    assert chain_graphs is not None and list(chain_graphs) == ["front", "head"]
    assert names["landmark"].graphs is None  # one graph: listed at the top level only
    assert "vision_http_requests" in vision.metrics()


def test_typed_errors_carry_problem_fields(vision: VisionClient, base_url: str) -> None:
    with pytest.raises(BadRequest) as bad:
        vision.recognize(b"not an image", filename="x.png")
    assert bad.value.status == 400 and bad.value.title == "Invalid image" and bad.value.detail
    assert bad.value.type.startswith("urn:vision-service:problem:")
    # A name that says no image type is sent untyped, so the server judges the bytes.
    with pytest.raises(BadRequest):
        vision.recognize(b"hello", filename="notes.txt")
    # Over the pixel limit, not the byte limit: a body refused while it is still being sent
    # races the connection close (the client may see a reset instead of the 413).
    with pytest.raises(PayloadTooLarge) as too_large:
        vision.recognize(encode(scene(400, 400)))
    assert too_large.value.status == 413
    with pytest.raises(InvalidRequest) as invalid:
        vision.recognize(encode(scene()), min_score=2.0)
    assert invalid.value.errors and invalid.value.errors[0]["loc"][-1] == "min_score"
    with VisionClient(base_url) as anonymous, pytest.raises(Unauthorized):
        anonymous.models()
    with VisionClient(base_url, api_key="wrong") as wrong, pytest.raises(Unauthorized) as denied:
        wrong.v2_model_metadata("landmark")
    assert "API key" in denied.value.detail  # a V2 problem document, its detail also in "error"


def test_unnamed_and_misnamed_files_are_sent(vision: VisionClient, tmp_path: Path) -> None:
    """A temporary file's ``name`` is its descriptor (an int) or None, which the part's file
    name was built from; a JPEG or PNG under a .txt name went as text/plain (a 415)."""
    png = encode(scene(320, 160, (80, 80, 96, 96)))
    misnamed = tmp_path / "scene.png.txt"
    misnamed.write_bytes(png)
    with tempfile.TemporaryFile() as unnamed, tempfile.SpooledTemporaryFile() as spooled:
        for handle in (unnamed, spooled):
            handle.write(png)
            handle.seek(0)
        results = [vision.recognize(unnamed), vision.recognize(spooled)]
    results.append(vision.recognize(misnamed))
    for result in results:
        assert len(result.landmarks) == 1


def test_big_endian_inputs_are_sent_as_their_values(vision: VisionClient) -> None:
    native = vision.v2_infer("chain.front", {"image": square_tensor()}).outputs["mid"]
    for binary in (True, False):
        swapped = square_tensor().astype(">f4")
        out = vision.v2_infer("chain.front", {"image": swapped}, binary=binary).outputs["mid"]
        np.testing.assert_array_equal(out, native)


def test_a_caller_s_http_client_is_left_as_it_was(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as http:
        with VisionClient(api_key=API_KEY, http_client=http) as vision:
            assert vision.v2_model_metadata("landmark")["name"] == "landmark"
        assert "x-api-key" not in http.headers  # the key went with each request only
        assert not http.is_closed
        assert http.get("/v2/models/landmark").status_code == 401


def test_an_upload_far_over_the_limit_is_a_vision_error(base_url: str) -> None:
    """The server answers 413 and closes without reading a body past 4x its limit: the
    async client saw the close as a bare httpx.ReadError."""
    huge = b"\xff\xd8" + b"\0" * (5 * MAX_UPLOAD)
    with (
        VisionClient(base_url, api_key=API_KEY) as vision,
        pytest.raises((PayloadTooLarge, TransportError)),
    ):
        vision.recognize(huge, filename="huge.jpg")

    async def main() -> None:
        async with AsyncVisionClient(base_url, api_key=API_KEY) as vision:
            with pytest.raises((PayloadTooLarge, TransportError)):
                await vision.recognize(huge, filename="huge.jpg")

    anyio.run(main)


@pytest.fixture
def closing_port() -> Iterator[int]:
    """A port whose server accepts each connection and closes it unanswered."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


class NotTheService(BaseHTTPRequestHandler):
    """200 with a body that is no JSON, as a proxy's page would be; under /v2, JSON of
    another shape (a list where the protocol answers an object)."""

    def do_GET(self) -> None:
        v2 = self.path.startswith("/v2")
        body = b"[1]" if v2 else b"<html>a proxy's page</html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if v2 else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_no_answer_and_an_unreadable_answer_are_vision_errors(closing_port: int) -> None:
    with (
        VisionClient(f"http://127.0.0.1:{closing_port}") as vision,
        pytest.raises(TransportError) as no_answer,
    ):
        vision.health_live()
    assert isinstance(no_answer.value, VisionError)
    assert isinstance(no_answer.value.__cause__, httpx.TransportError)
    server = HTTPServer(("127.0.0.1", 0), NotTheService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with VisionClient(f"http://127.0.0.1:{server.server_port}") as vision:
            with pytest.raises(UnexpectedResponse):
                vision.health_live()
            with pytest.raises(UnexpectedResponse):  # was a bare TypeError
                vision.v2_server_metadata()
    finally:
        server.shutdown()
        server.server_close()


def test_v2(vision: VisionClient) -> None:
    assert vision.v2_live() and vision.v2_ready()
    assert "binary_tensor_data" in vision.v2_server_metadata()["extensions"]
    assert vision.v2_model_ready("chain.front", version="1")
    assert vision.v2_model_metadata("landmark")["inputs"][0]["name"] == "image"
    for binary in (True, False):
        result = vision.v2_infer(
            "landmark", {"image": square_tensor(2)}, outputs=["confidence"], binary=binary
        )
        confidence = result.outputs["confidence"]
        assert confidence.shape == (2, CELLS, 2) and confidence.dtype == np.float32
        assert confidence[:, square_cell(), 0].min() > 0.99
    every = vision.v2_infer("landmark", {"image": square_tensor()}, request_id="7")
    assert set(every.outputs) == {"class_probs", "confidence", "points"} and every.id == "7"
    # A model of several graphs answers by its own name as its first graph.
    by_name = vision.v2_infer("chain", {"image": square_tensor()})
    by_graph = vision.v2_infer("chain.front", {"image": square_tensor()})
    assert set(by_name.outputs) == set(by_graph.outputs) == {"mid"}
    assert np.array_equal(by_name.outputs["mid"], by_graph.outputs["mid"])
    with pytest.raises(NotFound) as missing:
        vision.v2_infer("chain.nope", {"image": square_tensor()})
    assert "chain.front" in missing.value.detail
    with pytest.raises(BadRequest):
        vision.v2_infer("landmark", {"image": square_tensor().astype(np.float64)})
    with pytest.raises(TypeError):
        vision.v2_infer("landmark", {"image": np.array(["a"])})


def test_async_client(base_url: str) -> None:
    async def main() -> None:
        async with AsyncVisionClient(base_url, api_key=API_KEY) as vision:
            assert (await vision.health_live()).status == "alive"
            assert (await vision.health_ready()).status == "ready"
            assert len((await vision.models()).models) == 2
            assert "vision_inference_duration_seconds" in await vision.metrics()
            result = await vision.recognize(encode(scene(320, 160, (80, 80, 96, 96))))
            assert len(result.landmarks) == 1
            assert await vision.v2_live() and await vision.v2_ready()
            assert (await vision.v2_server_metadata())["name"] == "vision-service"
            assert await vision.v2_model_ready("landmark")
            assert (await vision.v2_model_metadata("chain.head"))["name"] == "chain.head"
            out = await vision.v2_infer("chain.front", {"image": square_tensor()})
            np.testing.assert_array_equal(out.outputs["mid"], square_tensor())
            with pytest.raises(BadRequest):
                await vision.recognize(b"nope", filename="x.png")

    anyio.run(main)


def test_not_ready_is_service_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_model(root, file_bytes=b"corrupt")
    with live_server(create_app(make_settings(root))) as url, VisionClient(url) as vision:
        with pytest.raises(ServiceUnavailable) as unavailable:
            vision.health_ready()
        assert unavailable.value.retry_after == 5 and "sha256" in unavailable.value.detail
        assert vision.v2_ready() is False
        assert vision.v2_model_ready("landmark") is False
        with pytest.raises(ServiceUnavailable):
            vision.recognize(encode(scene()))


def test_reload_model_swaps_in_a_new_version(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_model(root)
    with live_server(create_app(make_settings(root))) as url, VisionClient(url) as vision:
        write_model(root, version="2")
        info = vision.reload_model("landmark")
        assert info.name == "landmark" and info.version == "2" and info.state == "ready"
        assert vision.v2_model_metadata("landmark")["versions"] == ["2"]
        with pytest.raises(NotFound):
            vision.reload_model("nope")
        write_model(root, version="3", file_bytes=b"not an onnx graph")
        with pytest.raises(Conflict) as failed:
            vision.reload_model("landmark")
        assert failed.value.body["serving_version"] == "2"
        assert vision.models().models[0].version == "2"


def test_reload_model_with_a_key_that_is_not_an_admin_key_is_forbidden(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_model(root)
    settings = make_settings(root, api_keys=["user"], admin_api_keys=["admin"])
    with live_server(create_app(settings)) as url:
        with VisionClient(url, api_key="user") as user, pytest.raises(Forbidden) as refused:
            user.reload_model("landmark")
        assert refused.value.status == 403 and "admin" in refused.value.detail
        with VisionClient(url, api_key="admin") as admin:
            assert admin.reload_model("landmark").version == "1"


ATTENTION = Path(__file__).resolve().parents[2] / "models" / "repository" / "attention"


@pytest.mark.skipif(not ATTENTION.is_dir(), reason="no committed attention model")
def test_attention_endpoints(tmp_path: Path) -> None:
    repository = ATTENTION.parent
    settings = make_settings(
        repository,
        models=["attention"],
        feedback_db=tmp_path / "feedback.sqlite3",
        feedback_max_records=1,
    )
    image = encode(scene(96, 96, (24, 24, 72, 72)))
    mask = encode(np.full((14, 14), 255, np.uint8))
    with live_server(create_app(settings)) as url, VisionClient(url) as vision:
        (model,) = vision.models().models
        found = vision.attention(image)
        assert found.model.name == "attention"
        assert found.prediction.label in model.labels
        label = model.labels[0]
        corrected = vision.attention_correct(image, mask, label=label, save=True)
        assert corrected.feedback_id
        assert vision.attention_feedback().total == 1
        with pytest.raises(InvalidRequest):
            vision.attention_correct(image, mask, label="no such label")
        with pytest.raises(StoreFull) as full:  # the store's limit is one record
            vision.attention_correct(image, mask, label=label, save=True)
        assert full.value.status == 507 and isinstance(full.value, ServerError)

        async def main() -> None:
            async with AsyncVisionClient(url) as client:
                assert (await client.attention(image)).model.name == "attention"
                assert (await client.attention_feedback()).total == 1
                again = await client.attention_correct(image, mask)
                assert again.feedback_id is None

        anyio.run(main)


REPOSITORY = ATTENTION.parent


@pytest.mark.skipif(
    not (REPOSITORY / "gender").is_dir() or not (REPOSITORY / "occlusion").is_dir(),
    reason="no committed gender or occlusion model",
)
def test_gender_occlusion_and_verify(tmp_path: Path) -> None:
    settings = make_settings(REPOSITORY, models=["gender", "occlusion"])
    face = encode(scene(96, 112, (20, 20, 76, 92)))
    other = encode(scene(96, 112, (0, 0, 40, 40)))
    with live_server(create_app(settings)) as url, VisionClient(url) as vision:
        gender = vision.gender(face)
        assert set(gender.probabilities) == {"female", "male"}
        assert gender.contour_map is None
        with_map = vision.gender(face, contour=True)
        assert with_map.contour_map is not None and with_map.contour_map.png_base64
        found = vision.occlusion(face)
        assert found.model.name == "occlusion" and len(found.embedding) > 0
        same = vision.verify_faces(face, face)
        assert same.same and same.similarity == pytest.approx(1.0, abs=1e-4)
        assert len(vision.verify_faces(face, other).faces) == 2
        with pytest.raises(BadRequest):
            vision.occlusion(b"nope", filename="x.png")

        async def main() -> None:
            async with AsyncVisionClient(url) as client:
                assert (await client.gender(face)).label == gender.label
                assert (await client.occlusion(face)).occlusion == found.occlusion
                assert (await client.verify_faces(face, face)).same

        anyio.run(main)


def test_a_text_mode_file_is_refused_before_sending(vision: VisionClient, tmp_path: Path) -> None:
    """A file opened without 'b' read as str used to be re-encoded, sent, and refused 400."""
    path = tmp_path / "scene.png"
    path.write_bytes(b"not read as text")
    with path.open() as handle, pytest.raises(TypeError, match="binary mode"):
        vision.recognize(handle)  # type: ignore[arg-type]


def test_misuse_is_said_at_once(base_url: str) -> None:
    """A base URL without a scheme fails at construction (it used to fail each request as a
    TransportError, "no answer", though nothing was sent); a closed client says so."""
    with pytest.raises(ValueError, match="http:// or https://"):
        VisionClient("127.0.0.1:8000")
    with pytest.raises(ValueError, match="http:// or https://"):
        AsyncVisionClient("localhost:8000")
    with pytest.raises(ValueError, match="a host"):
        VisionClient("http:/localhost:8000")
    # A key no header can carry failed each request ("no answer", or UnicodeEncodeError).
    for key in ("a\nb", "\u043a\u043b\u044e\u0447"):
        with pytest.raises(ValueError, match="printable ASCII"):
            VisionClient(base_url, api_key=key)
    vision = VisionClient(base_url, api_key=API_KEY)
    # Quoting leaves "." and ".." as they are, and the URL would drop or climb a segment:
    # v2_model_metadata("..") answered with the server's metadata.
    for name in (".", ".."):
        with pytest.raises(ValueError, match="no model name"):
            vision.v2_model_metadata(name)
        with pytest.raises(ValueError, match="no model name"):
            vision.reload_model(name)
    with pytest.raises(ValueError, match="no model name"):
        vision.v2_model_ready("landmark", version="..")
    vision.close()
    with pytest.raises(VisionError, match="closed"):
        vision.health_live()


@pytest.mark.parametrize("body", [[["name", "x"]], {"error": "from a proxy"}, {"name": 3}])
def test_metadata_that_is_no_v2_document_is_an_unexpected_response(body: object) -> None:
    """A proxy's JSON was returned as metadata, and a list of pairs made into a dict."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    http = httpx.Client(base_url="http://vision.example", transport=httpx.MockTransport(answer))
    with VisionClient(http_client=http) as vision:
        with pytest.raises(UnexpectedResponse, match="no 'name'"):
            vision.v2_server_metadata()
        with pytest.raises(UnexpectedResponse, match="no 'name'"):
            vision.v2_model_metadata("landmark")


def test_a_redirect_is_an_unexpected_response_not_not_ready() -> None:
    """A proxy's redirect (http to https) made the V2 probes say "not ready"."""

    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(308, headers={"location": "https://vision.example/v2/health/ready"})

    http = httpx.Client(base_url="http://vision.example", transport=httpx.MockTransport(redirect))
    with VisionClient(http_client=http) as vision, pytest.raises(UnexpectedResponse, match="308"):
        vision.v2_ready()
