"""POST /attention, POST /attention/correct, GET /attention/feedback and model reload,
through the app's lifespan, against the committed attention model.

Two-item canvases come from the Fashion-MNIST test items over test photographs
(models/attention/data.py), so the correction is exercised as the model card measures it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.attention.data import FASHION_MNIST_DIR, LABELS, compose, load_fashion_mnist
from service.errors import Overloaded
from service.feedback import open_store
from service.main import create_app
from service.routers.attention import attention_model, compute_features
from service.settings import Settings
from tests.service.conftest import assert_problem, make_settings
from tests.service.images import encode

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
COMMITTED = REPOSITORY / "attention"
UPSCALE = 3  # uploads are enlarged so that the service really resamples image and mask
PAIRS = 24

needs_model = pytest.mark.skipif(
    not COMMITTED.is_dir(), reason="no committed attention model in models/repository"
)
needs_data = pytest.mark.skipif(
    not FASHION_MNIST_DIR.exists(),
    reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)",
)
pytestmark = needs_model


@pytest.fixture(scope="module")
def feedback_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback") / "feedback.sqlite3"


@pytest.fixture(scope="module")
def client(feedback_db: Path) -> Iterator[TestClient]:
    settings = make_settings(REPOSITORY, models=["attention"], feedback_db=feedback_db)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def pairs() -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Two-item test canvases as PNG uploads, their labels and item boxes (upload pixels)."""
    if not FASHION_MNIST_DIR.exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed (.ci/run installs it)")
    items, labels = load_fashion_mnist("test")
    canvases = compose(items, labels, "test", PAIRS, kind="pair", seed=4242)
    uploads = [
        encode(Image.fromarray(im).resize((64 * UPSCALE,) * 2, Image.Resampling.BILINEAR))
        for im in canvases.images
    ]
    return uploads, canvases.labels, canvases.boxes * UPSCALE


def box_mask(box: np.ndarray, side: int = 64 * UPSCALE) -> bytes:
    mask = np.zeros((side, side), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1, x0:x1] = 255
    return encode(Image.fromarray(mask, "L"))


def correct(client: TestClient, image: bytes, mask: bytes, **form: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/attention/correct",
        files={"image": ("i.png", image, "image/png"), "mask": ("m.png", mask, "image/png")},
        data=form,
    )


def _canvas_upload(seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)))


def test_attention_contract(client: TestClient) -> None:
    response = client.post("/attention", files={"image": ("a.png", _canvas_upload(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "attention" and body["model"]["version"].isdigit()
    prediction = body["prediction"]
    assert prediction["label"] == LABELS[prediction["class_id"]]
    assert 0.0 <= prediction["score"] <= 1.0
    assert prediction["top_k"][0]["class_id"] == prediction["class_id"]
    scores = [c["score"] for c in prediction["top_k"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    branch = body["attention_branch"]
    assert branch["label"] == LABELS[branch["class_id"]] and 0.0 <= branch["score"] <= 1.0
    amap = body["attention_map"]
    png = Image.open(io.BytesIO(base64.b64decode(amap["png_base64"])))
    assert png.format == "PNG" and png.mode == "L"
    assert png.size == (amap["width"], amap["height"]) == (16, 16)
    # A 120x90 upload letterboxed into a square: the map reaches beyond the image vertically.
    extent = amap["extent"]
    assert extent["x0"] == pytest.approx(0.0) and extent["x1"] == pytest.approx(120.0)
    assert extent["y0"] < 0.0 and extent["y1"] > 90.0


@needs_data
def test_correction_follows_the_mask_on_two_item_canvases(
    client: TestClient, pairs: tuple[list[bytes], np.ndarray, np.ndarray]
) -> None:
    """Mask on item A -> class A, mask on item B -> class B, on the same image: the answer
    moves with the mask (the model card measures >= 0.9 on 2000 such canvases)."""
    uploads, labels, boxes = pairs
    hits = {0: 0, 1: 0}
    moved = 0
    for image, label, box in zip(uploads, labels, boxes, strict=True):
        answers = []
        for k in (0, 1):
            response = correct(client, image, box_mask(box[k]))
            assert response.status_code == 200, response.text
            body = response.json()
            answers.append(body["corrected"]["class_id"])
            hits[k] += body["corrected"]["class_id"] == label[k]
            assert body["original"]["label"] == LABELS[body["original"]["class_id"]]
            assert "feedback_id" not in body  # the contract: only when save was true
        moved += answers[0] != answers[1]
    assert hits[0] >= 0.75 * PAIRS and hits[1] >= 0.75 * PAIRS, hits
    assert moved >= 0.75 * PAIRS


def test_a_full_perception_queue_refuses_before_the_features_graph_runs(
    client: TestClient,
) -> None:
    """Both graphs' slots are taken up front: a request is not refused at the perception
    graph after its features graph ran (that run would be wasted CPU under overload)."""
    app = client.app
    settings = app.state.settings  # type: ignore[attr-defined]
    serving = attention_model(app.state.registry, settings)  # type: ignore[attr-defined]
    perception = serving.model.batcher(serving.decoder.config.perception_graph)
    labels = {
        "model": serving.config.name,
        "version": serving.config.version,
        "graph": serving.decoder.config.features_graph,
    }

    def features_runs() -> float:
        value = app.state.metrics.registry.get_sample_value("vision_batch_size_count", labels)  # type: ignore[attr-defined]
        return value or 0.0

    async def never_disconnected() -> bool:
        return False

    before = features_runs()
    # The race this closes: admission saw room, then the perception graph filled up while
    # the request decoded and ran its features graph.
    held = [perception.reserve() for _ in range(perception.policy.queue_size)]
    try:
        with pytest.raises(Overloaded, match="perception"):
            client.portal.call(  # type: ignore[union-attr]
                compute_features,
                _canvas_upload(),
                serving,
                settings,
                app.state.decode_pool,  # type: ignore[attr-defined]
                never_disconnected,
            )
    finally:
        for reservation in held:
            reservation.release()
    assert features_runs() == before
    # With room again it runs (an image no other test sent: a cached one would skip the graph).
    fresh = _canvas_upload(seed=9119)
    response = client.post("/attention", files={"image": ("a.png", fresh, "image/png")})
    assert response.status_code == 200
    assert features_runs() == before + 1


def test_second_correction_of_an_image_uses_the_cached_features(client: TestClient) -> None:
    image = _canvas_upload(99)
    left = np.zeros((90, 120), np.uint8)
    left[:, :60] = 255
    first = correct(client, image, encode(Image.fromarray(left, "L"))).json()
    second = correct(client, image, encode(Image.fromarray(255 - left, "L"))).json()
    assert first["feature_cache"] == "miss" and second["feature_cache"] == "hit"
    assert first["original"] == second["original"]
    assert first["attention_map"] == second["attention_map"]
    assert first["edited_map"] != second["edited_map"]


def test_cache_lookups_are_counted_in_metrics(client: TestClient) -> None:
    def lookups() -> dict[str, float]:
        text = client.get("/metrics").text
        return {
            result: next(
                (
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith(f'vision_feature_cache_lookups_total{{result="{result}"}}')
                ),
                0.0,
            )
            for result in ("hit", "miss")
        }

    before = lookups()
    image = _canvas_upload(97)
    mask = encode(Image.fromarray(np.full((90, 120), 255, np.uint8), "L"))
    assert correct(client, image, mask).json()["feature_cache"] == "miss"
    assert correct(client, image, mask).json()["feature_cache"] == "hit"
    after = lookups()
    assert after["miss"] - before["miss"] == 1 and after["hit"] - before["hit"] == 1


def test_cached_features_own_their_arrays(client: TestClient) -> None:
    # Batched outputs are slices of the whole batch's arrays; a cached slice would keep the
    # batch (up to BATCH_MAX_SIZE rows) alive for as long as the entry lives.
    image = _canvas_upload(98)
    mask = encode(Image.fromarray(np.full((90, 120), 255, np.uint8), "L"))
    assert correct(client, image, mask).status_code == 200
    cache = client.app.state.feature_cache  # type: ignore[attr-defined]
    entries = list(cache._entries.values())
    assert entries
    for features in entries:
        for name in ("feature_map", "attention_map", "attention_probs", "perception_probs"):
            assert getattr(features, name).base is None, name


@pytest.mark.parametrize("shape", ["square", "wide"])
def test_the_models_own_map_sent_back_reproduces_the_original_answer(
    client: TestClient, shape: str
) -> None:
    """The map of /attention sent back unchanged as the mask (API.md: any size, resampled
    to the map grid) is the model's own map again and gives the original class, on a
    square upload and on a 120x90 one, where the map reaches past the image."""
    upload = _square_upload() if shape == "square" else _canvas_upload()
    own = client.post("/attention", files={"image": ("a.png", upload, "image/png")}).json()
    mask = base64.b64decode(own["attention_map"]["png_base64"])
    body = correct(client, upload, mask).json()
    assert body["edited_map"]["png_base64"] == own["attention_map"]["png_base64"]
    assert body["corrected"]["class_id"] == body["original"]["class_id"]
    assert body["corrected"]["score"] == pytest.approx(body["original"]["score"], abs=0.02)


def test_a_mask_shaped_like_the_upload_covers_the_image_only(client: TestClient) -> None:
    """A 120x90 mask on a 120x90 upload covers the image: full attention on it leaves
    the letterbox bars of the map at 0 (rows 2-13 of 16 hold the image)."""
    full = encode(Image.new("L", (120, 90), 255))
    body = correct(client, _canvas_upload(), full).json()
    edited = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["edited_map"]["png_base64"]))))
    assert edited[0].max() == 0 and edited[-1].max() == 0
    assert edited[2:14].min() == 255


def _square_upload() -> bytes:
    rng = np.random.default_rng(5)
    return encode(Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)))


def test_save_stores_a_durable_teacher_record(client: TestClient, feedback_db: Path) -> None:
    before = client.get("/attention/feedback").json()
    image = _square_upload()
    mask = encode(Image.new("L", (10, 10), 255))
    response = correct(client, image, mask, label="bag", save="true")
    assert response.status_code == 200, response.text
    body = response.json()
    feedback_id = body["feedback_id"]
    assert isinstance(feedback_id, str) and len(feedback_id) == 32
    # Committed before the response: a fresh store (another connection) sees it.
    (stored,) = [r for r in open_store(feedback_db).records() if r.id == feedback_id]
    assert (
        stored.image == image and stored.label == "bag" and stored.label_id == LABELS.index("bag")
    )
    assert stored.model_name == "attention" and stored.model_version == body["model"]["version"]
    edited = np.asarray(Image.open(io.BytesIO(stored.edited_map)))
    assert edited.shape == (16, 16) and (edited == 255).all()
    assert Image.open(io.BytesIO(stored.model_map)).size == (16, 16)
    assert stored.perception_class_id == body["original"]["class_id"]
    assert stored.saved_by == ""  # a server without keys: no key names the saver
    after = client.get("/attention/feedback").json()
    assert after["total"] == before["total"] + 1
    assert after["per_label"]["bag"] == before["per_label"].get("bag", 0) + 1
    wrong = body["original"]["class_id"] != LABELS.index("bag")
    assert after["misrecognised"] == before["misrecognised"] + int(wrong)


KEYS, ADMIN, WRITER = ["k-one"], "k-admin", "k-writer"


def feedback_keyed(tmp_path: Path, api_keys: list[str]) -> Settings:
    """The attention model with feedback and admin keys, and ``api_keys`` (may be none)."""
    return make_settings(
        REPOSITORY,
        models=["attention"],
        feedback_db=tmp_path / "feedback.sqlite3",
        api_keys=api_keys,
        admin_api_keys=[ADMIN],
        feedback_api_keys=[WRITER],
    )


@pytest.mark.parametrize(
    ("api_keys", "headers", "status"),
    [
        (KEYS, {}, 401),
        (KEYS, {"X-API-Key": "wrong"}, 401),
        (KEYS, {"X-API-Key": "k-one"}, 403),  # a valid key that may not save
        (KEYS, {"X-API-Key": WRITER, "Authorization": "Bearer k-one"}, 403),  # both must
        (KEYS, {"X-API-Key": WRITER}, 200),
        (KEYS, {"Authorization": f"Bearer {ADMIN}"}, 200),  # admin keys may too
        ([], {}, 401),  # feedback keys alone guard saving on a server without API keys
        ([], {"X-API-Key": "k-one"}, 401),
        ([], {"X-API-Key": WRITER}, 200),
    ],
)
def test_feedback_keys_alone_may_save_and_the_record_names_the_key(
    tmp_path: Path, api_keys: list[str], headers: dict[str, str], status: int
) -> None:
    settings = feedback_keyed(tmp_path, api_keys)
    mask = encode(Image.new("L", (4, 4), 255))
    with TestClient(create_app(settings), headers=headers) as keyed:
        response = correct(keyed, _square_upload(), mask, label="bag", save="true")
        assert response.status_code == status, response.text
        # Without save only the API keys count: a plain key, or none on a keyless server.
        unsaved = correct(keyed, _square_upload(), mask, label="bag")
        assert unsaved.status_code == (401 if api_keys and status == 401 else 200)
    records = open_store(tmp_path / "feedback.sqlite3").records()
    if status != 200:
        assert_problem(response, status)
        assert records == []
        return
    saver = headers.get("X-API-Key") or headers["Authorization"].removeprefix("Bearer ")
    digest = hashlib.sha256(saver.encode()).hexdigest()
    assert [(r.id, r.saved_by) for r in records] == [(response.json()["feedback_id"], digest[:12])]


@pytest.mark.parametrize(("api_keys", "key", "status"), [(KEYS, "k-one", 403), ([], None, 401)])
def test_a_key_that_may_not_save_is_refused_before_the_fields_are_checked(
    tmp_path: Path, api_keys: list[str], key: str | None, status: int
) -> None:
    """As with the API key: 401/403 whatever else is wrong (here no mask, no label), and a
    save=true that FastAPI would not read as true (perhaps) is the fields' 422."""
    settings = feedback_keyed(tmp_path, api_keys)
    headers = {"X-API-Key": key} if key else {}
    image = {"image": ("i.png", _square_upload(), "image/png")}
    with TestClient(create_app(settings), headers=headers) as keyed:
        for save in ("true", "ON", "1"):
            response = keyed.post("/attention/correct", files=image, data={"save": save})
            assert_problem(response, status)
        response = keyed.post("/attention/correct", files=image, data={"save": "perhaps"})
        assert_problem(response, 422)


def test_label_without_save_stores_nothing(client: TestClient) -> None:
    before = client.get("/attention/feedback").json()["total"]
    mask = encode(Image.new("L", (4, 4), 255))
    assert correct(client, _square_upload(), mask, label="dress").status_code == 200
    assert client.get("/attention/feedback").json()["total"] == before


def test_a_get_with_a_form_body_is_not_read(client: TestClient) -> None:
    """The repeated-field check reads POST forms only: a GET's body stays ignored."""
    response = client.request(
        "GET",
        "/attention/feedback",
        content=b"a=1&a=2&%zz",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text


def test_a_repeated_label_is_422_and_stores_nothing(client: TestClient) -> None:
    """Two labels for one teacher record: the service cannot know which was meant."""
    before = client.get("/attention/feedback").json()["total"]
    mask = encode(Image.new("L", (4, 4), 255))
    response = client.post(
        "/attention/correct",
        files=[
            ("image", ("i.png", _square_upload(), "image/png")),
            ("mask", ("m.png", mask, "image/png")),
            ("save", (None, b"true")),
            ("label", (None, b"dress")),
            ("label", (None, b"bag")),
        ],
    )
    body = assert_problem(response, 422)
    assert body["detail"] == "form field sent more than once: 'label' (2 times); send each once"
    assert client.get("/attention/feedback").json()["total"] == before


def test_save_and_label_in_the_query_are_422_and_store_nothing(client: TestClient) -> None:
    """They are form fields: FastAPI would drop them and answer 200 with nothing saved."""
    before = client.get("/attention/feedback").json()["total"]
    mask = encode(Image.new("L", (4, 4), 255))
    response = client.post(
        "/attention/correct?save=true&label=dress",
        files={"image": ("i.png", _square_upload(), "image/png"), "mask": ("m.png", mask)},
    )
    body = assert_problem(response, 422)
    assert body["detail"] == (
        "'label', 'save' sent as query parameters; this endpoint reads them as form fields"
    )
    assert client.get("/attention/feedback").json()["total"] == before


@pytest.mark.parametrize(
    ("mask", "status", "type_suffix"),
    [
        (b"not an image at all", 400, "invalid-mask"),
        (b"", 400, "invalid-mask"),
        (encode(Image.new("L", (8, 8)))[:40], 400, "invalid-mask"),
    ],
)
def test_bad_masks_are_400_problems(
    client: TestClient, mask: bytes, status: int, type_suffix: str
) -> None:
    response = correct(client, _square_upload(), mask)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith(type_suffix) and problem["status"] == status


def test_save_without_a_label_is_422_even_with_no_model(tmp_path: Path) -> None:
    """Needs no model to judge, so not a 503 while models load; a bad mask names its field."""
    empty = tmp_path / "repository"
    empty.mkdir()
    settings = make_settings(empty, feedback_db=tmp_path / "feedback.sqlite3")
    mask = encode(Image.new("L", (4, 4), 255))
    with TestClient(create_app(settings)) as bare:
        body = assert_problem(correct(bare, _square_upload(), mask, save="true"), 422)
        assert body["detail"] == "save=true needs the true class in the label field"
        response = bare.post(
            "/attention/correct",
            files={
                "image": ("i.png", _square_upload(), "image/png"),
                "mask": ("m.txt", b"hello", "text/plain"),
            },
        )
        assert assert_problem(response, 415)["detail"].startswith("mask: ")


def test_client_errors_are_never_5xx(client: TestClient) -> None:
    image = _square_upload()
    mask = encode(Image.new("L", (4, 4), 255))
    missing_mask = client.post("/attention/correct", files={"image": ("i.png", image, "image/png")})
    assert missing_mask.status_code == 422
    missing_image = client.post("/attention", files={})
    assert missing_image.status_code == 422
    no_label = correct(client, image, mask, save="true")
    assert no_label.status_code == 422 and "label" in no_label.json()["detail"]
    unknown = correct(client, image, mask, label="hat", save="true")
    assert unknown.status_code == 422 and "hat" in unknown.json()["detail"]
    huge = correct(client, image, mask, label="h" * 100_000)  # quoted back cut short
    assert huge.status_code == 422 and len(huge.json()["detail"]) < 1_000
    bad_bool = correct(client, image, mask, save="perhaps")
    assert bad_bool.status_code == 422
    text = client.post(
        "/attention/correct",
        files={"image": ("i.txt", b"hello", "text/plain"), "mask": ("m.png", mask, "image/png")},
    )
    assert text.status_code == 415
    bad_image = correct(client, b"garbage", mask)
    assert bad_image.status_code == 400 and bad_image.json()["type"].endswith("invalid-image")


def test_models_lists_both_graphs(client: TestClient) -> None:
    (info,) = client.get("/models").json()["models"]
    assert info["task"] == "attention_classification" and info["state"] == "ready"
    assert sorted(info["graphs"]) == ["features", "perception"]
    assert info["labels"] == list(LABELS)


def _copy_version(src: Path, dst: Path, version: str) -> None:
    shutil.copytree(src, dst / version, ignore=shutil.ignore_patterns("*.png", "checkpoint.pt"))
    config = json.loads((dst / version / "config.json").read_text())
    config["version"] = version
    (dst / version / "config.json").write_text(json.dumps(config))


def test_reload_swaps_in_a_new_version_and_keeps_the_old_on_failure(tmp_path: Path) -> None:
    newest = max((p for p in COMMITTED.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    repo = tmp_path / "repository"
    model_dir = repo / "attention"
    _copy_version(newest, model_dir, "1")
    settings = make_settings(repo, feedback_db=tmp_path / "f.sqlite3")
    image = _square_upload()
    with TestClient(create_app(settings)) as client:
        first = client.post("/attention", files={"image": ("a.png", image, "image/png")}).json()
        assert first["model"]["version"] == "1"
        _copy_version(newest, model_dir, "2")
        reloaded = client.post("/models/attention/reload")
        assert reloaded.status_code == 200 and reloaded.json()["version"] == "2"
        second = client.post("/attention", files={"image": ("a.png", image, "image/png")}).json()
        assert second["model"]["version"] == "2"
        # The cache is per version: the new version computed its own features.
        mask = encode(Image.new("L", (4, 4), 255))
        assert correct(client, image, mask).json()["feature_cache"] == "hit"
        # A broken version 3: the reload fails, version 2 keeps serving.
        _copy_version(newest, model_dir, "3")
        (model_dir / "3" / "perception.onnx").write_bytes(b"broken")
        failed = client.post("/models/attention/reload")
        assert failed.status_code == 409
        assert failed.json()["serving_version"] == "2" and "sha256" in failed.json()["detail"]
        third = client.post("/attention", files={"image": ("a.png", image, "image/png")})
        assert third.status_code == 200 and third.json()["model"]["version"] == "2"
        assert client.get("/health/ready").status_code == 200
        unknown = client.post("/models/nothing/reload")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"].startswith("application/problem+json")
