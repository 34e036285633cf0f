from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.main import create_app
from tests.service.conftest import make_settings
from tests.service.images import encode, scene


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_and_time_inference(client: TestClient) -> None:
    client.post("/recognize", files={"image": ("a.png", encode(scene()), "image/png")})
    client.post("/recognize", files={"image": ("a.txt", b"x", "text/plain")})
    client.get("/no/such/path")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    request = "vision_http_requests_total"
    labels = (("endpoint", "/recognize"), ("method", "POST"))
    assert values[(request, (*labels, ("status", "200")))] == 1
    assert values[(request, (*labels, ("status", "415")))] == 1
    unmatched = (("endpoint", "unmatched"), ("method", "GET"), ("status", "404"))
    assert values[(request, unmatched)] == 1
    inference = (("model", "landmark"), ("version", "1"))
    assert values[("vision_inference_duration_seconds_count", inference)] == 1
    assert values[("vision_http_request_duration_seconds_count", labels)] == 2
    assert values[("vision_model_ready", inference)] == 1


def test_each_app_has_its_own_registry(repo: Path) -> None:
    with TestClient(create_app(make_settings(repo))) as first:
        first.get("/health/live")
        first.get("/health/live")
        with TestClient(create_app(make_settings(repo))) as second:
            second.get("/health/live")
            live = (("endpoint", "/health/live"), ("method", "GET"), ("status", "200"))
            key = ("vision_http_requests_total", live)
            assert samples(first.get("/metrics").text)[key] == 2
            assert samples(second.get("/metrics").text)[key] == 1


def test_early_refusals_are_counted_under_their_endpoint(repo: Path) -> None:
    # The admission 503 and the Content-Length 413 are answered before routing.
    settings = make_settings(repo, batch_queue_size=1, max_upload_bytes=1000)
    with TestClient(create_app(settings)) as client:
        batcher = client.app.state.registry.get("landmark").batcher()  # type: ignore[attr-defined]
        with batcher.slot():  # the landmark graph's queue is full
            full = client.post("/recognize", files={"image": ("a.png", b"x" * 10, "image/png")})
        big = client.post("/recognize", files={"image": ("a.png", b"x" * 200_000, "image/png")})
        stray = client.post("/no/such/path", content=b"x" * 200_000)
        v2 = [
            client.post("/v2/models/landmark/infer", content=b"x" * 200_000),
            client.post("/v2/models/any-name/versions/7/infer", content=b"x" * 200_000),
        ]
        reload = client.post("/models/landmark/reload", content=b"x" * 200_000)
        values = samples(client.get("/metrics").text)
    # A path no route takes is a 404 whatever its body's size.
    assert (full.status_code, big.status_code, stray.status_code) == (503, 413, 404)
    assert [response.status_code for response in [*v2, reload]] == [413, 413, 413]
    for template in (
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/models/{name}/reload",
    ):
        labels = (("endpoint", template), ("method", "POST"), ("status", "413"))
        assert values[("vision_http_requests_total", labels)] == 1
    request = "vision_http_requests_total"
    for status in ("503", "413"):
        labels = (("endpoint", "/recognize"), ("method", "POST"), ("status", status))
        assert values[(request, labels)] == 1
    # A made-up path stays "unmatched": clients cannot mint label values.
    assert (
        values[(request, (("endpoint", "unmatched"), ("method", "POST"), ("status", "404")))] == 1
    )


def test_starlette_routes_are_labelled_with_their_template(client: TestClient) -> None:
    """The OpenAPI document and the docs' assets are Starlette's Route and Mount, which set
    no FastAPI route: they were counted as "unmatched", beside scanners' 404s."""
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/docs-assets/nope.css").status_code == 404
    values = samples(client.get("/metrics").text)
    request = "vision_http_requests_total"
    assets = "/docs-assets/{asset:path}"
    assert (
        values[(request, (("endpoint", "/openapi.json"), ("method", "GET"), ("status", "200")))]
        == 1
    )
    assert values[(request, (("endpoint", assets), ("method", "GET"), ("status", "200")))] == 1
    assert values[(request, (("endpoint", assets), ("method", "GET"), ("status", "404")))] == 1
    assert not any(
        labels[0] == ("endpoint", "unmatched") for name, labels in values if name == request
    )


def test_no_created_series_are_exported(client: TestClient) -> None:
    """One "_created" series per counter and histogram label set doubled the series count."""
    client.get("/models")
    names = {name for name, _ in samples(client.get("/metrics").text)}
    assert "vision_http_requests_total" in names
    assert not [name for name in names if name.endswith("_created")]
