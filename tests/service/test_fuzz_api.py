"""Property-based fuzzing of every operation in the service's own OpenAPI schema
(schemathesis): whatever the generated request, the answer is never a 5xx, and it is what
the schema documents (status, media type, body schema, headers).

The app serves every committed model (lifespan run), with API keys off. The number of
examples per operation is ``FUZZ_EXAMPLES`` (default 20, what CI runs); the longer run is

    FUZZ_EXAMPLES=500 python -m pytest tests/service/test_fuzz_api.py -p no:cacheprovider

or, against a running server, ``st run http://127.0.0.1:8000/openapi.json
--checks not_a_server_error --max-examples 500`` (schemathesis' CLI).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    CheckContext,
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.transport import Response
from schemathesis.python.asgi import shutdown_lifespans

from service.admission import MODEL_ENDPOINTS
from service.main import create_app
from tests.service.conftest import make_settings

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
FEEDBACK_DIR = tempfile.TemporaryDirectory(prefix="fuzz-feedback-")
# Requests sent, by operation and status: printed at the end (`-s` shows it; README figures).
SENT: Counter[tuple[str, int]] = Counter()
NOT_SERVED: Counter[str] = Counter()  # the 503s no_server_error let through, by path

# Schemathesis runs the app's lifespan (models loaded) once, on its first request.
app = create_app(make_settings(REPOSITORY, feedback_db=Path(FEEDBACK_DIR.name) / "f.sqlite3"))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _stop_the_app() -> Iterator[None]:
    yield
    operations = {operation for operation, _ in SENT}
    statuses = Counter[int]()
    for (_, status), count in SENT.items():
        statuses[int(status)] += count
    print(
        f"\nschemathesis: {SENT.total()} requests over {len(operations)} operations, "
        f"statuses {dict(sorted(statuses.items()))}; 503 not-ready of endpoints without "
        f"their model: {dict(NOT_SERVED)}"
    )
    shutdown_lifespans()
    FEEDBACK_DIR.cleanup()


def unserved_paths() -> set[str]:
    """Model endpoints whose model is not in the repository (they answer 503 not-ready)."""
    settings, registry = app.state.settings, app.state.registry
    return {
        path
        for path, attribute in MODEL_ENDPOINTS.items()
        if not (model := registry.get(getattr(settings, attribute, None) or "")) or not model.ready
    }


@schemathesis.check
def no_server_error(ctx: CheckContext, response: Response, case: schemathesis.Case) -> None:
    """schemathesis' not_a_server_error, except the documented 503 not-ready (problem+json
    with Retry-After) of an endpoint whose model is not in the repository at all."""
    if (
        response.status_code == 503
        and case.operation.path in unserved_paths()
        and response.headers.get("retry-after")
        and response.json().get("type") == "urn:vision-service:problem:not-ready"
    ):
        NOT_SERVED[case.operation.path] += 1
        return
    not_a_server_error(ctx, response, case)


# Beyond "never a 5xx": every answer is one the schema documents, in its status, media type,
# body (problem documents against Problem) and headers (Retry-After on every 503).
CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every CI run; FUZZ_EXAMPLES widens the search
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented_never_5xx(case: schemathesis.Case) -> None:
    response = case.call_and_validate(checks=CHECKS)
    SENT[(case.operation.label, response.status_code)] += 1
