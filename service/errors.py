"""Service exceptions and their mapping to ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service.logs import REQUEST_ID_HEADER, REQUEST_ID_SCOPE_KEY, printable, request_id_var
from service.paths import route_path
from service.schemas import PROBLEM_MEDIA_TYPE
from service.timing import SERVER_TIMING_HEADER, scope_header

logger = logging.getLogger(__name__)

# A name or label the client sent is quoted back in an error cut to this many characters:
# enough to spot a typo, and a 100 kB value does not come back as a 100 kB error.
MAX_ECHOED_CHARS = 80


def echo(value: str) -> str:
    """``value`` quoted (repr) for an error message, cut to MAX_ECHOED_CHARS."""
    return repr(value if len(value) <= MAX_ECHOED_CHARS else value[:MAX_ECHOED_CHARS] + "...")


# Seconds a client should wait before retrying a 503; model loading takes seconds, not minutes.
DEFAULT_RETRY_AFTER_S = 5
# A full queue drains in a few batch times: a second is ample before retrying.
OVERLOADED_RETRY_AFTER_S = 1
# nginx's "client closed request": not in HTTPStatus, used only for logs and metrics.
CLIENT_CLOSED_REQUEST = 499
# Problem types are URNs: identifiers that nobody is tempted to dereference (RFC 9457 3.1.1).
PROBLEM_TYPE_PREFIX = "urn:vision-service:problem:"
# The Open Inference Protocol's paths. Its clients read an error's message from an "error"
# member (tritonclient: ``json.loads(body)["error"]``, else "an exception occurred in the
# client while decoding the response"); what is answered on these paths before a V2 route
# runs (404, 405, 413, the upload gate's 401, 503 and 408) is still problem+json, with the
# detail in an "error" extension member too (RFC 9457 3.2).
V2_PATH_PREFIX = "/v2"


def protocol_members(path: str, detail: str) -> dict[str, str]:
    """The extension members a problem document on ``path`` carries for its protocol's
    clients: ``{"error": detail}`` under V2_PATH_PREFIX, none elsewhere."""
    if path == V2_PATH_PREFIX or path.startswith(V2_PATH_PREFIX + "/"):
        return {"error": detail}
    return {}


def problem_document(
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    extra: Mapping[str, Any] | None = None,
    path: str = "",
) -> dict[str, Any]:
    """An RFC 9457 problem document: its members, ``extra`` extension members, and what
    the request's ``path`` wants for its protocol (``protocol_members``)."""
    return {
        "type": type_,
        "title": title,
        "status": int(status),
        "detail": detail,
        **jsonable_encoder(extra or {}),
        **protocol_members(path, detail),
    }


class ServiceError(Exception):
    """Base of every error the service answers deliberately; carries its HTTP mapping."""

    status: ClassVar[int] = HTTPStatus.INTERNAL_SERVER_ERROR
    title: ClassVar[str] = "Internal error"
    type: ClassVar[str] = PROBLEM_TYPE_PREFIX + "internal"

    def __init__(self, detail: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})

    @property
    def headers(self) -> dict[str, str]:
        """Headers the response must carry."""
        return {}

    def document(self, path: str = "") -> dict[str, Any]:
        """The problem document for this error on a request for ``path``."""
        return problem_document(self.status, self.title, self.detail, self.type, self.extra, path)


class InvalidImage(ServiceError):
    status = HTTPStatus.BAD_REQUEST
    title = "Invalid image"
    type = PROBLEM_TYPE_PREFIX + "invalid-image"


class InvalidMask(InvalidImage):
    """The attention mask upload cannot be decoded (400, like a bad image)."""

    title = "Invalid mask"
    type = PROBLEM_TYPE_PREFIX + "invalid-mask"


class InvalidField(ServiceError):
    """A form field the request validator cannot judge alone (e.g. an unknown label)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    title = "Invalid field"
    type = PROBLEM_TYPE_PREFIX + "invalid-field"


class ReloadFailed(ServiceError):
    """A new version could not be loaded; the version that was serving keeps serving."""

    status = HTTPStatus.CONFLICT
    title = "Reload failed"
    type = PROBLEM_TYPE_PREFIX + "reload-failed"


class PayloadTooLarge(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    title = "Payload too large"
    type = PROBLEM_TYPE_PREFIX + "payload-too-large"


class RequestTimeout(ServiceError):
    """The request body stopped arriving for longer than ``body_timeout_s``, or its head
    for longer than ``header_timeout_s`` (408); the connection is closed, since the rest may
    still come."""

    status = HTTPStatus.REQUEST_TIMEOUT
    title = "Request timeout"
    type = PROBLEM_TYPE_PREFIX + "request-timeout"


class UnsupportedMediaType(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    title = "Unsupported media type"
    type = PROBLEM_TYPE_PREFIX + "unsupported-media-type"


class FormContentCoding(UnsupportedMediaType):
    """A form sent with a Content-Encoding: the 415 says which codings are taken (none)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Accept-Encoding": "identity"}


class MalformedRequest(ServiceError):
    """Bytes the HTTP/1.1 parser refuses (a bad request line, header field, length or chunk
    size), answered by the connection's protocol itself (service/protocol.py)."""

    status = HTTPStatus.BAD_REQUEST
    title = "Malformed request"
    type = PROBLEM_TYPE_PREFIX + "malformed-request"


class UnclosedForm(ServiceError):
    """A multipart body that ended before its closing boundary (``--boundary--``): the
    parser drops the part it was reading, which would otherwise pass for a missing field."""

    status = HTTPStatus.BAD_REQUEST
    title = "Unclosed multipart body"
    type = PROBLEM_TYPE_PREFIX + "unclosed-multipart-body"


class InvalidForm(ServiceError):
    """A multipart body the form parser refuses (broken framing, a part without a name,
    more fields or files than it takes): Starlette's 400, given this service's type."""

    status = HTTPStatus.BAD_REQUEST
    title = "Invalid multipart body"
    type = PROBLEM_TYPE_PREFIX + "invalid-multipart-body"


class UnsupportedTransferCoding(ServiceError):
    """A body sent with a transfer coding other than chunked (``gzip, chunked``). RFC 9112
    asks for 501, but the coding is the client's choice to undo: a 4xx, as every answer to
    what a client sent is here."""

    status = HTTPStatus.BAD_REQUEST
    title = "Unsupported transfer coding"
    type = PROBLEM_TYPE_PREFIX + "unsupported-transfer-coding"


class HeaderFieldsTooLarge(ServiceError):
    """The request head passed ``max_header_bytes`` (431); the connection is closed."""

    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    title = "Request header fields too large"
    type = PROBLEM_TYPE_PREFIX + "request-header-fields-too-large"


class URITooLong(ServiceError):
    """A request target longer than the HTTP parser reads (414); the connection is closed."""

    status = HTTPStatus.REQUEST_URI_TOO_LONG
    title = "URI too long"
    type = PROBLEM_TYPE_PREFIX + "uri-too-long"


class Unauthorized(ServiceError):
    status = HTTPStatus.UNAUTHORIZED
    title = "Unauthorized"
    type = PROBLEM_TYPE_PREFIX + "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A valid API key that may not do this (reloading models needs an admin key)."""

    status = HTTPStatus.FORBIDDEN
    title = "Forbidden"
    type = PROBLEM_TYPE_PREFIX + "forbidden"


class ModelNotFound(ServiceError):
    status = HTTPStatus.NOT_FOUND
    title = "Model not found"
    type = PROBLEM_TYPE_PREFIX + "model-not-found"


class NotReady(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    title = "Service not ready"
    type = PROBLEM_TYPE_PREFIX + "not-ready"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int = DEFAULT_RETRY_AFTER_S,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, extra=extra)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Overloaded(NotReady):
    """A model's bounded queue is full: retry shortly rather than wait without bound (503)."""

    title = "Service overloaded"
    type = PROBLEM_TYPE_PREFIX + "overloaded"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int = OVERLOADED_RETRY_AFTER_S,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, retry_after=retry_after, extra=extra)


class ClientClosedRequest(ServiceError):
    """The client went away before its request reached the model; nobody reads the answer,
    the status (nginx's 499) is for logs and metrics."""

    status = CLIENT_CLOSED_REQUEST
    title = "Client closed request"
    type = PROBLEM_TYPE_PREFIX + "client-closed-request"


class StoreUnavailable(NotReady):
    """The teacher-record database is unreachable, read-only, full or failing (503): the
    request may be retried; what was stored before is untouched."""

    title = "Teacher-record store unavailable"
    type = PROBLEM_TYPE_PREFIX + "store-unavailable"


class StoreFull(ServiceError):
    """The teacher-record store holds ``feedback_max_records`` records (507): nothing was
    stored. Retrying does not help until records are removed or the limit is raised."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    title = "Teacher-record store full"
    type = PROBLEM_TYPE_PREFIX + "store-full"


class UploadStorageUnavailable(NotReady):
    """The temporary directory that uploads over ``upload_spool_bytes`` are spooled to is
    full or failing (503): the server's condition, to be retried, not a malformed request."""

    title = "Upload storage unavailable"
    type = PROBLEM_TYPE_PREFIX + "upload-storage-unavailable"


class ModelLoadError(Exception):
    """A model could not be loaded; the message is the reason shown in health and /models."""


def problem_response(
    status: int,
    *,
    title: str,
    detail: str,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    path: str = "",
) -> JSONResponse:
    """``problem_document`` as a problem+json response with ``headers``."""
    return JSONResponse(
        problem_document(status, title, detail, type_, extra, path),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def status_phrase(status: int) -> str:
    """The status's reason phrase: the title of an ``about:blank`` problem (RFC 9457 4.2.1)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def service_error_response(exc: ServiceError, path: str) -> JSONResponse:
    """``exc`` as a problem+json response to a request for ``path``."""
    return problem_response(
        exc.status,
        title=exc.title,
        detail=exc.detail,
        type_=exc.type,
        headers=exc.headers,
        extra=exc.extra,
        path=path,
    )


async def _handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    # An overload refusal is the access line's alone (at a 2x overload, thousands a minute),
    # wherever it was decided: the middlewares' early ones are not logged either.
    if exc.status >= 500 and not isinstance(exc, Overloaded):
        logger.warning(
            "%s %s -> %d: %s", request.method, printable(request.url.path), exc.status, exc
        )
    return service_error_response(exc, route_path(request.scope))


# FastAPI's message when a file field came as a plain value (a part without a filename):
# it names a Python class, which tells a client nothing.
_NOT_A_FILE = "Expected UploadFile"


def _slim(error: Mapping[str, Any]) -> dict[str, Any]:
    """A validation error's location, message and type: ``input`` may echo back a whole
    upload, and the rest is enough to act on."""
    slim = {k: v for k, v in error.items() if k in ("loc", "msg", "type")}
    if _NOT_A_FILE in str(slim.get("msg", "")):
        slim["msg"] = "expected a file: a multipart part with a filename, not a plain form value"
    return slim


def _describe_validation_error(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    return f"{location}: {error.get('msg', 'invalid')}"


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    slim = [_slim(error) for error in exc.errors()]
    detail = "; ".join(_describe_validation_error(error) for error in slim) or "invalid request"
    return problem_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        title="Invalid request",
        detail=detail,
        type_=PROBLEM_TYPE_PREFIX + "invalid-request",
        extra={"errors": slim},
        path=route_path(request.scope),
    )


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, OSError):
        # FastAPI answers any failure while parsing a form with 400; an OSError there is
        # the server's temporary storage for spooled uploads (full tmpfs), not the client.
        reason = exc.__cause__.strerror or type(exc.__cause__).__name__
        logger.error(
            "%s %s: spooling the upload failed: %s",
            request.method,
            printable(request.url.path),
            exc.__cause__,
        )
        storage = UploadStorageUnavailable(f"the upload could not be buffered ({reason}); retry")
        return await _handle_service_error(request, storage)
    if exc.status_code == HTTPStatus.BAD_REQUEST and isinstance(
        exc.__context__, MultiPartException
    ):
        # Starlette's form parser: raised inside its ``except``, so the cause is the context.
        message = str(exc.detail)
        if "exceeded maximum size" in message:
            form_error: ServiceError = PayloadTooLarge(
                f"a form field other than an upload is over the parser's limit: {message}"
            )
        else:
            form_error = InvalidForm(f"the multipart body could not be parsed: {message}")
        return await _handle_service_error(request, form_error)
    # about:blank means "no more than the status says", so the title is the status phrase.
    return problem_response(
        exc.status_code,
        title=status_phrase(exc.status_code),
        detail=str(exc.detail),
        headers=exc.headers,
        path=route_path(request.scope),
    )


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Runs outside RequestIdMiddleware and ServerTimingMiddleware (Starlette's outermost
    # error middleware), so the request's ID and timings come back from the scope.
    request_id: str | None = request.scope.get(REQUEST_ID_SCOPE_KEY)
    token = request_id_var.set(request_id) if request_id else None
    try:
        logger.exception("unhandled error on %s %s", request.method, printable(request.url.path))
    finally:
        if token is not None:
            request_id_var.reset(token)
    headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
    timing = scope_header(request.scope)
    if timing is not None:
        headers[SERVER_TIMING_HEADER.decode("ascii")] = timing
    return problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        title=status_phrase(HTTPStatus.INTERNAL_SERVER_ERROR),
        detail="the server failed to handle the request",
        headers=headers or None,
        path=route_path(request.scope),
    )


def install_exception_handlers(app: FastAPI) -> None:
    """Answer every error, expected or not, as problem+json."""
    app.add_exception_handler(ServiceError, _handle_service_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(Exception, _handle_unexpected)
