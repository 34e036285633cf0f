"""/docs and /redoc load every asset from the service itself, never from a CDN."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient


def test_docs_pages_use_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", response.text)
        assert urls, page
        for url in urls:
            assert not url.startswith(("http:", "https:", "//")), (page, url)
            assert client.get(url).status_code == 200, (page, url)
    assert "cdn" not in client.get("/docs").text.lower()
    assert "fonts.googleapis" not in client.get("/redoc").text


def test_assets_are_the_real_bundles(client: TestClient) -> None:
    swagger = client.get("/docs-assets/swagger-ui-bundle.js")
    assert swagger.status_code == 200 and len(swagger.content) > 500_000
    assert "javascript" in swagger.headers["content-type"]
    assert len(client.get("/docs-assets/redoc.standalone.js").content) > 500_000
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_docs_need_no_api_key(settings_for, repo) -> None:  # type: ignore[no-untyped-def]
    from service.main import create_app

    with TestClient(create_app(settings_for(repo, api_keys=["k"]))) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/docs-assets/swagger-ui.css").status_code == 200
        assert client.get("/openapi.json").status_code == 200


# Probes: nothing a client sends can make them fail.
NO_ERRORS = {"/health/live", "/v2/health/live"}


def _has_example(operation: dict[str, Any], schemas: dict[str, Any]) -> bool:
    for media in operation["responses"]["200"].get("content", {}).values():
        if "example" in media or "examples" in media:
            return True
        ref = media.get("schema", {}).get("$ref", "")
        if "examples" in schemas.get(ref.rsplit("/", 1)[-1], {}):
            return True
    return False


def test_every_endpoint_has_an_example_and_its_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            if not _has_example(operation, schemas):
                missing.append(f"{name}: no example")
            errors = [code for code in operation["responses"] if code[0] in "45"]
            if path not in NO_ERRORS and not errors:
                missing.append(f"{name}: no error documented")
            if "/health/" not in path and "401" not in errors:
                missing.append(f"{name}: 401 undocumented")
    assert not missing, missing


def test_v2_documents_its_own_error_shape(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert "422" not in infer  # V2 answers malformed requests with 400, never 422
    # Problem documents with the detail again in `error`, where V2 clients read it.
    problem = infer["404"]["content"]
    assert "application/json" not in problem
    assert problem["application/problem+json"]["schema"]["$ref"].endswith("/V2Problem")
    assert "error" in spec["components"]["schemas"]["V2Problem"]["required"]


def test_problems_are_documented_as_sent(client: TestClient) -> None:
    """A Problem body is filed under application/problem+json (the media type it is sent
    as), FastAPI's own 422 schema is nowhere, not even listed (422s are problem documents
    too), and every 503 documents its Retry-After header."""
    spec = client.get("/openapi.json").json()
    wrong = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                name = f"{method.upper()} {path} {status}"
                content = response.get("content", {})
                if "Problem" in str(content.get("application/json", {})):
                    wrong.append(f"{name}: a Problem under application/json")
                if "HTTPValidationError" in str(content):
                    wrong.append(f"{name}: FastAPI's 422 schema")
                if status == "503" and "Retry-After" not in response.get("headers", {}):
                    wrong.append(f"{name}: no Retry-After")
    listed = spec["components"]["schemas"]
    unused = ("HTTPValidationError", "ValidationError")
    wrong += [f"{name} listed, used nowhere" for name in unused if name in listed]
    assert not wrong, wrong


def test_response_fields_sent_always_are_required_and_scores_bounded(client: TestClient) -> None:
    """Clients generated from the schema get the fields every answer carries as required
    (defaults and nulls included); only a field left out when empty stays optional."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    model_info = schemas["ModelInfo"]
    assert set(model_info["required"]) == set(model_info["properties"])
    assert "contour_map" in schemas["GenderResponse"]["required"]
    assert "feedback_id" not in schemas["CorrectionResponse"]["required"]
    for name in ("Landmark", "ScoredClass", "GenderResponse", "Occlusion"):
        score = schemas[name]["properties"]["score"]
        assert (score["minimum"], score["maximum"]) == (0.0, 1.0), name
    # And as sent: /models carries every ModelInfo field, null ones included.
    for model in client.get("/models").json()["models"]:
        assert set(model) == set(model_info["properties"]), model["name"]


def test_docs_pages_may_not_be_framed(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"], path
        assert page.headers["x-content-type-options"] == "nosniff", path
