"""Every file of the hostile / odd upload corpus (tests/data/bad/, made by
tests/data/make_bad_corpus.py) against every endpoint that takes an upload.

The endpoints are discovered from the app's own OpenAPI schema (every multipart operation
with a binary field), so an endpoint added later is covered without touching this file.
Each answer must be the status the manifest documents, a problem+json body for every
error, and never a 5xx.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.limits import UPLOADS_PER_PATH, BodyLimits
from service.main import create_app
from tests.data import make_bad_corpus
from tests.data.make_bad_corpus import CORPUS_DIR, MANIFEST
from tests.service.conftest import assert_problem, make_settings

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "models" / "repository"
# Small enough that the huge-body cases stay fast, far above every corpus file (< 100 kB).
MAX_UPLOAD_BYTES = 1 << 20
MANIFEST_DATA: dict[str, Any] = json.loads((CORPUS_DIR / MANIFEST).read_text())
FILES: list[dict[str, Any]] = MANIFEST_DATA["files"]
REQUESTS: dict[str, dict[str, Any]] = {case["name"]: case for case in MANIFEST_DATA["requests"]}
# What an error body must never show: a traceback, a source file, this checkout's path.
LEAKS = re.compile(r"Traceback|File \"|\.py\b|" + re.escape(str(ROOT)))


@dataclass(frozen=True)
class UploadEndpoint:
    """A multipart operation of the schema and its form fields."""

    path: str
    file_fields: tuple[str, ...]  # required binary fields, in schema order
    required_other: tuple[str, ...]  # required non-file fields (none today)

    @property
    def mask_field(self) -> str | None:
        return "mask" if "mask" in self.file_fields else None

    @property
    def image_fields(self) -> tuple[str, ...]:
        return tuple(name for name in self.file_fields if name != "mask")


def _is_file(spec: dict[str, Any]) -> bool:
    """A form field that is an upload (OpenAPI 3.0 and 3.1 spellings)."""
    return spec.get("format") == "binary" or spec.get("contentMediaType") == (
        "application/octet-stream"
    )


def upload_endpoints(schema: dict[str, Any]) -> list[UploadEndpoint]:
    """Every POST whose body is multipart/form-data with at least one binary field."""
    components = schema.get("components", {}).get("schemas", {})
    found = []
    for path, operations in schema["paths"].items():
        body = operations.get("post", {}).get("requestBody", {})
        form = body.get("content", {}).get("multipart/form-data")
        if form is None:
            continue
        ref = form["schema"].get("$ref", "")
        model = components.get(ref.rsplit("/", 1)[-1], form["schema"])
        properties, required = model.get("properties", {}), set(model.get("required", []))
        files = tuple(name for name, spec in properties.items() if _is_file(spec))
        if files:
            others = tuple(name for name in required if name not in files)
            found.append(UploadEndpoint(path, files, others))
    return found


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app over every committed model, with a 1 MiB upload limit."""
    settings = make_settings(
        REPOSITORY,
        feedback_db=tmp_path_factory.mktemp("feedback") / "feedback.sqlite3",
        max_upload_bytes=MAX_UPLOAD_BYTES,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def good_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 160, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def good_files(endpoint: UploadEndpoint) -> dict[str, tuple[str, bytes, str]]:
    return {name: (f"{name}.png", good_image(), "image/png") for name in endpoint.file_fields}


ENDPOINTS = upload_endpoints(create_app(make_settings(REPOSITORY)).openapi())


@pytest.fixture(scope="module")
def serving(client: TestClient) -> dict[str, bool]:
    """Per endpoint: whether it answers a good upload with 200 (its model is served)."""
    answered = {}
    for endpoint in ENDPOINTS:
        response = client.post(endpoint.path, files=good_files(endpoint))
        assert response.status_code < 500 or response.status_code == 503, response.text
        answered[endpoint.path] = response.status_code == 200
    return answered


def assert_safe_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """A problem+json error of ``status`` that gives nothing internal away."""
    body = assert_problem(response, status)
    assert not LEAKS.search(response.text), response.text[:500]
    return body


def check(response: httpx.Response, expected: int, entry: dict[str, Any] | None = None) -> None:
    assert response.status_code < 500, response.text[:500]
    if expected >= 400:
        body = assert_safe_problem(response, expected)
        if entry and entry.get("problem_type"):
            assert body["type"].endswith(entry["problem_type"])
        return
    assert response.status_code == expected, response.text[:500]
    size = entry.get("image_size") if entry else None
    reported = response.json().get("image")
    if size and isinstance(reported, dict):
        assert (reported["width"], reported["height"]) == tuple(size)


def test_corpus_is_big_enough_and_documented() -> None:
    assert len(FILES) >= 30
    on_disk = {p.name for p in CORPUS_DIR.iterdir()} - {MANIFEST}
    assert on_disk == {entry["file"] for entry in FILES}
    assert all(entry["why"] and entry["status"] in (200, 400, 413, 415) for entry in FILES)
    assert ENDPOINTS, "no upload endpoint found in the OpenAPI schema"


def test_generator_is_deterministic_and_matches_the_committed_corpus(tmp_path: Path) -> None:
    first = make_bad_corpus.build(tmp_path / "a")
    make_bad_corpus.build(tmp_path / "b")
    assert json.loads(json.dumps(first)) == MANIFEST_DATA
    for entry in FILES:
        name = entry["file"]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _ids(value: Any) -> str:
    return value.path if isinstance(value, UploadEndpoint) else str(value)


CASES = [
    pytest.param(endpoint, entry, id=f"{entry['file']}-{endpoint.path}")
    for endpoint in ENDPOINTS
    for entry in FILES
    if entry["field"] == "image" or endpoint.mask_field
]


def post_corpus_file(
    client: TestClient, endpoint: UploadEndpoint, entry: dict[str, Any]
) -> Iterator[httpx.Response]:
    """The answers to the file in each field it can go in; the other fields get a good
    image."""
    targets = endpoint.image_fields if entry["field"] == "image" else (endpoint.mask_field,)
    data = (CORPUS_DIR / entry["file"]).read_bytes()
    for target in targets:
        assert target is not None
        files = good_files(endpoint)
        files[target] = (entry["file"], data, entry["content_type"])
        yield client.post(endpoint.path, files=files)


@pytest.mark.parametrize(("endpoint", "entry"), CASES)
def test_corpus_file(
    client: TestClient, serving: dict[str, bool], endpoint: UploadEndpoint, entry: dict[str, Any]
) -> None:
    if not serving[endpoint.path]:
        # It answers 503 (not ready) before reading any upload; covered once its model is.
        pytest.skip(f"{endpoint.path}: its model is not in models/repository")
    expected = entry["status"]
    if expected == 200 and endpoint.required_other:
        expected = 422  # a required non-file field we cannot fill generically
    for response in post_corpus_file(client, endpoint, entry):
        check(response, expected, entry)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The application over an empty model repository: no model is ever ready."""
    root = tmp_path_factory.mktemp("bare")
    (root / "repository").mkdir()
    settings = make_settings(root / "repository", feedback_db=root / "feedback.sqlite3")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(("endpoint", "entry"), CASES)
def test_corpus_file_with_no_model_ready(
    bare: TestClient, endpoint: UploadEndpoint, entry: dict[str, Any]
) -> None:
    """Each file gets the answer it gets from a ready model, 4xx and all, while no model can
    run (a client's mistake is never a 5xx); only a file a model would take gets the 503."""
    expected = entry["status"] if entry["status"] >= 400 else 503
    if expected == 503 and endpoint.required_other:
        expected = 422  # a required non-file field we cannot fill generically
    for response in post_corpus_file(bare, endpoint, entry):
        if expected == 503:
            assert_safe_problem(response, 503)
        else:
            check(response, expected, entry)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_ids)
def test_malformed_requests(client: TestClient, endpoint: UploadEndpoint) -> None:
    """Wrong and missing fields, empty and non-multipart bodies, text for a file."""
    good = good_files(endpoint)
    renamed = [("file", spec) for spec in good.values()]
    check(client.post(endpoint.path, files=renamed), REQUESTS["wrong_field_name"]["status"])
    for name in endpoint.file_fields:
        missing = {key: spec for key, spec in good.items() if key != name}
        check(
            client.post(endpoint.path, files=missing or None),
            REQUESTS["missing_field"]["status"],
        )
    empty = client.post(
        endpoint.path,
        content=b"--vision-boundary--\r\n",
        headers={"content-type": "multipart/form-data; boundary=vision-boundary"},
    )
    check(empty, REQUESTS["empty_multipart"]["status"])
    urlencoded = "application/x-www-form-urlencoded"  # what curl --data-binary @photo.jpg sends
    not_a_form = {
        "is 'application/json'": client.post(endpoint.path, json={"image": "aGVsbG8="}),
        "is 'image/jpeg'": client.post(
            endpoint.path, content=b"\xff\xd8\xff", headers={"content-type": "image/jpeg"}
        ),
        f"is '{urlencoded}'": client.post(
            endpoint.path, content=b"\xff\xd8\xff=&", headers={"content-type": urlencoded}
        ),
        "has no content type": client.post(endpoint.path, content=b"\xff\xd8\xff"),
    }
    for said, response in not_a_form.items():
        body = assert_safe_problem(response, REQUESTS["not_multipart"]["status"])
        # Said as it is, not FastAPI's "body.image: Field required" of an empty form.
        assert body["detail"].startswith(f"the request body {said}; send multipart"), body
    for name in endpoint.file_fields:
        twice = [*good.items(), (name, good[name])]
        response = client.post(endpoint.path, files=twice)
        body = assert_safe_problem(response, REQUESTS["repeated_field"]["status"])
        assert f"'{name}' (2 times)" in body["detail"], body
    as_text = {key: spec for key, spec in good.items() if key != endpoint.file_fields[0]}
    # A multipart part without a filename (a urlencoded body would be the 415 above).
    as_value = (endpoint.file_fields[0], (None, b"not a file"))
    response = client.post(endpoint.path, files=[as_value, *as_text.items()])
    body = assert_safe_problem(response, REQUESTS["field_as_text"]["status"])
    assert body["detail"] == (
        f"body.{endpoint.file_fields[0]}: expected a file: a multipart part with a filename, "
        "not a plain form value"
    )
    assert "class" not in response.text


def _huge_multipart(field: str, size: int) -> tuple[bytes, str]:
    boundary = "vision-huge"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="h.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + b"\0" * (size - len(head) - len(tail)) + tail, boundary


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_ids)
def test_huge_multipart_is_413_declared_or_streamed(
    client: TestClient, endpoint: UploadEndpoint
) -> None:
    limit = BodyLimits(MAX_UPLOAD_BYTES).for_path(endpoint.path)
    declared = REQUESTS["huge_multipart_declared"]
    body, boundary = _huge_multipart(
        endpoint.file_fields[0], limit + declared["extra"]["bytes_over_limit"]
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    check(client.post(endpoint.path, content=body, headers=headers), declared["status"])

    streamed = REQUESTS["huge_multipart_streamed"]
    body, boundary = _huge_multipart(
        endpoint.file_fields[0], limit + streamed["extra"]["bytes_over_limit"]
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    check(client.post(endpoint.path, content=chunks(), headers=headers), streamed["status"])


def test_body_limit_knows_every_form_with_two_files() -> None:
    """service/limits.py's per-path file counts are the schema's, so no two-file form is
    held to one file's limit."""
    from_schema = {e.path: len(e.file_fields) for e in ENDPOINTS if len(e.file_fields) > 1}
    assert from_schema and dict(UPLOADS_PER_PATH) == from_schema


def _noise_png(side: int, seed: int) -> bytes:
    """A PNG of random pixels: it barely compresses, so it weighs about 3 * side**2 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if len(e.file_fields) > 1], ids=_ids)
def test_two_files_each_under_the_limit_are_accepted(
    client: TestClient, serving: dict[str, bool], endpoint: UploadEndpoint
) -> None:
    files = {
        name: (f"{name}.png", _noise_png(560, seed), "image/png")
        for seed, name in enumerate(endpoint.file_fields)
    }
    sizes = [len(data) for _, data, _ in files.values()]
    # Each file is under the upload limit, together they are over one file's body limit.
    assert max(sizes) < MAX_UPLOAD_BYTES < sum(sizes) - BodyLimits(MAX_UPLOAD_BYTES).overhead_bytes
    response = client.post(endpoint.path, files=files)
    check(response, 200 if serving[endpoint.path] else 503)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_ids)
def test_a_bad_upload_is_4xx_even_with_no_model_ready(
    endpoint: UploadEndpoint, tmp_path: Path
) -> None:
    """The upload's own checks come before the model's readiness: a client error is never
    answered with a 5xx, not even while the models load."""
    empty = tmp_path / "repository"
    empty.mkdir()
    settings = make_settings(empty, feedback_db=tmp_path / "feedback.sqlite3")
    with TestClient(create_app(settings), raise_server_exceptions=False) as bare:
        good = good_files(endpoint)
        assert_safe_problem(bare.post(endpoint.path, files=good), 503)
        for name in endpoint.file_fields:
            text = {**good, name: ("a.txt", b"hello", "text/plain")}
            assert_safe_problem(bare.post(endpoint.path, files=text), 415)
