from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import errors
from service.errors import (
    InvalidImage,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    install_exception_handlers,
)
from service.logs import RequestIdMiddleware, request_id_var
from service.timing import ServerTimingMiddleware, record
from tests.service.images import encode, scene


def app_raising(exc: Exception) -> TestClient:
    app = FastAPI()
    install_exception_handlers(app)

    @app.get("/boom")
    async def get_boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


def test_service_errors_map_to_problem_json() -> None:
    for exc, status in [
        (InvalidImage("bad"), 400),
        (Unauthorized("who"), 401),
        (ModelNotFound("none"), 404),
        (PayloadTooLarge("big"), 413),
        (UnsupportedMediaType("text"), 415),
        (NotReady("later", retry_after=7), 503),
    ]:
        assert isinstance(exc, ServiceError)
        response = app_raising(exc).get("/boom")
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body == {"type": exc.type, "title": exc.title, "status": status, "detail": str(exc)}
        assert body["type"].startswith("urn:vision-service:problem:")
    assert app_raising(NotReady("later", retry_after=7)).get("/boom").headers["retry-after"] == "7"


def test_framework_404_and_405_are_problem_json(client: TestClient) -> None:
    for response, status in [(client.get("/nowhere"), 404), (client.delete("/models"), 405)]:
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "about:blank"
        assert response.json()["status"] == status


def test_forms_the_parser_refuses_get_this_services_problem_types(client: TestClient) -> None:
    """Starlette's form parser answered these 400 about:blank with its own words: a field
    over its 1 MiB part limit is a 413 like any body too large, the rest a typed 400."""
    image = {"image": ("a.png", encode(scene()), "image/png")}
    form = {"content-type": "multipart/form-data; boundary=B"}
    answers = {
        "a field over 1 MiB": (
            client.post("/recognize", files=image, data={"note": "x" * ((1 << 20) + 1)}),
            413,
            "payload-too-large",
        ),
        "1001 fields": (
            client.post("/recognize", files=image, data={f"f{i}": "x" for i in range(1001)}),
            400,
            "invalid-multipart-body",
        ),
        "a part without a name": (
            client.post(
                "/recognize",
                content=b"--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n--B--\r\n",
                headers=form,
            ),
            400,
            "invalid-multipart-body",
        ),
    }
    for name, (response, status, kind) in answers.items():
        assert response.status_code == status, name
        problem = response.json()
        assert problem["type"] == f"urn:vision-service:problem:{kind}", name
        assert response.headers["content-type"] == "application/problem+json"
    assert "Too many fields" in answers["1001 fields"][0].json()["detail"]


def test_unexpected_error_is_a_500_problem_without_internals() -> None:
    response = app_raising(RuntimeError("secret internals")).get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret" not in response.text


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    recognize = spec["paths"]["/recognize"]["post"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(recognize["responses"])
    assert client.get("/docs").status_code == 200


def test_unexpected_error_answers_and_logs_with_the_request_id() -> None:
    """The 500 handler runs outside RequestIdMiddleware; the ID still reaches the header and
    the error's log line."""
    app = FastAPI()
    install_exception_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def get_boom() -> None:
        raise RuntimeError("boom")

    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(request_id_var.get())

    capture = Capture(level=logging.ERROR)
    logger = logging.getLogger(errors.__name__)
    logger.addHandler(capture)
    try:
        client = TestClient(app, raise_server_exceptions=False)
        response = client.get("/boom", headers={"X-Request-ID": "trace-42"})
    finally:
        logger.removeHandler(capture)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-42"
    assert seen == ["trace-42"]


def test_validation_errors_do_not_echo_the_input() -> None:
    """A 422 names where and what, never the value sent (it may be a whole upload)."""
    app = FastAPI()
    install_exception_handlers(app)

    @app.get("/score")
    async def get_score(min_score: float) -> float:
        return min_score

    sent = "n" * 5000
    response = TestClient(app).get("/score", params={"min_score": sent})
    assert response.status_code == 422
    assert sent not in response.text
    errors = response.json()["errors"]
    assert errors and all(set(error) == {"loc", "msg", "type"} for error in errors)


def test_unexpected_error_still_says_where_the_time_went() -> None:
    """The 500 is written outside ServerTimingMiddleware too; its ``Server-Timing`` comes
    from the scope, with the stages recorded before the error and ``app``."""
    app = FastAPI()
    install_exception_handlers(app)
    app.add_middleware(ServerTimingMiddleware)

    @app.get("/boom")
    async def get_boom() -> None:
        record("decode", 0.002)
        raise RuntimeError("boom")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    stages = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert set(stages) == {"decode", "app"}
    assert float(stages["decode"]) == 2.0 and float(stages["app"]) > 0.0


def test_an_overload_refusal_is_not_warned_but_a_model_not_ready_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 503 for a full queue is the access line's alone, as the middlewares' early 503s
    are; one that needs an operator (a model or the store not ready) is warned."""
    with caplog.at_level(logging.DEBUG, logger="service.errors"):
        assert app_raising(Overloaded("queue full")).get("/boom").status_code == 503
        assert app_raising(NotReady("model failed")).get("/boom").status_code == 503
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "model failed" in warned[0], warned
