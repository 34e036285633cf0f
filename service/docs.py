"""``/docs`` (Swagger UI) and ``/redoc`` served with no internet.

FastAPI's own pages load their JavaScript and CSS from a CDN, which an air-gapped cluster
cannot reach. The assets here come from the ``fastapi-offline`` wheel (Swagger UI 5 and
ReDoc 2 bundles, MIT/Apache-2.0), served by this app under ``DOCS_ASSETS_URL``; only the
two HTML pages are generated. Create the app with ``docs_url=None, redoc_url=None`` and
call :func:`install_offline_docs`.

It also documents the 401 of every operation behind the API key (those ``require_api_key``
marks with a security scheme), so no router has to repeat it, files every problem document
under the media type it is sent as, and documents Retry-After on every 503.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.schemas import PROBLEM_MEDIA_TYPE, PROBLEM_REF, PROBLEM_REFS

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
DOCS_ASSETS_URL = "/docs-assets"
# The docs pages may not be framed by another site (a framed "Try it out" could be steered
# into a request with the user's key) nor sniffed; their own inline scripts (FastAPI's page
# templates) rule out a script policy as strict as /ui's.
DOCS_PAGE_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Paths served by Starlette's own Route and Mount (no FastAPI route to name them), as route
# templates for the request metrics.
STARLETTE_PATHS = ("/openapi.json", DOCS_ASSETS_URL + "/{asset:path}")
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"


def assets_directory() -> Path:
    """The folder of the packaged Swagger UI and ReDoc bundles."""
    return Path(str(files("fastapi_offline") / "static"))


# Added to the finished schema, so the body is a reference (Problem is in the components:
# /health/ready and /recognize use it).
UNAUTHORIZED: dict[str, Any] = {
    "description": "API keys are configured and none or a wrong one was sent",
    "content": {
        "application/problem+json": {
            "schema": {"$ref": PROBLEM_REF},
            "example": {
                "type": "urn:vision-service:problem:unauthorized",
                "title": "Unauthorized",
                "status": 401,
                "detail": "an API key is required: send X-API-Key or Authorization: Bearer",
            },
        }
    },
}


VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"  # FastAPI's
# Every 503 says when to retry (service/errors.py: Overloaded, ModelNotReady...).
RETRY_AFTER: dict[str, Any] = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}


def document_problems(schema: dict[str, Any]) -> None:
    """FastAPI files a ``responses=`` model under application/json, whatever the route
    declares beside it; a Problem (or V2Problem) is sent as application/problem+json, so its
    schema moves there. FastAPI's own 422 (HTTPValidationError) is answered as a Problem too
    (service/errors.py, with an ``errors`` member). Every 503 gets its Retry-After header."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                as_json = content.get("application/json", {})
                if as_json.get("schema", {}).get("$ref") == VALIDATION_ERROR_REF:
                    as_json["schema"]["$ref"] = PROBLEM_REF
                if as_json.get("schema", {}).get("$ref") in PROBLEM_REFS:
                    content[PROBLEM_MEDIA_TYPE] = {
                        **content.pop("application/json"),
                        **content.get(PROBLEM_MEDIA_TYPE, {}),
                    }
                if status == "503":
                    response.setdefault("headers", {}).setdefault("Retry-After", RETRY_AFTER)
    # FastAPI's 422 schemas, now referred to by nothing, would still be listed.
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # the first refers to the second
        others = {key: value for key, value in schema.items() if key != "components"}
        others["schemas"] = {key: value for key, value in components.items() if key != name}
        if f"#/components/schemas/{name}" not in json.dumps(others):
            components.pop(name, None)


def document_api_key(schema: dict[str, Any]) -> None:
    """Add the 401 to every operation that declares a security scheme and lacks one."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and operation.get("security"):
                operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)


def install_offline_docs(app: FastAPI) -> None:
    """Serve the assets and the ``/docs`` and ``/redoc`` pages from this app."""
    build_schema: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build_schema()
        # Both idempotent: the schema is cached and reused.
        document_api_key(schema)
        document_problems(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS_URL}/oauth2-redirect"

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS_URL}/{name}"

    def guarded(page: HTMLResponse) -> HTMLResponse:
        page.headers.update(DOCS_PAGE_HEADERS)
        return page

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return guarded(
            get_swagger_ui_html(
                openapi_url=f"{request.scope.get('root_path', '')}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=oauth2_redirect_url,
                swagger_js_url=asset(request, SWAGGER_JS),
                swagger_css_url=asset(request, SWAGGER_CSS),
                swagger_favicon_url=asset(request, FAVICON),
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return guarded(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return guarded(
            get_redoc_html(
                openapi_url=f"{request.scope.get('root_path', '')}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=asset(request, REDOC_JS),
                redoc_favicon_url=asset(request, FAVICON),
                with_google_fonts=False,
            )
        )
