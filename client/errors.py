"""Typed errors raised by the client, one per status the service documents.

The service answers errors as RFC 9457 problem+json (``type``, ``title``, ``status``,
``detail``; under ``/v2`` an ``error`` member repeats the detail, and an older server's V2
routes sent ``{"error": "..."}`` alone); each becomes an :class:`ApiError` subclass
carrying the same fields.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

# Retry-After's delay-seconds: ASCII digits (str.isdigit also takes superscripts and other
# scripts' digits).
DELAY_SECONDS = re.compile(r"[0-9]+")
# A day: longer is no retry hint a client should wait on (and 400 digits overflow a float).
MAX_RETRY_AFTER_S = 86_400


class VisionError(Exception):
    """Base of every error this client raises."""


class TransportError(VisionError):
    """The request got no answer: the connection failed, timed out or was closed. A server
    refusing a body early (413 for a body far over its limit, also 401 or 503 before the
    body is read) may close the connection before the client has sent it all, so an upload
    that ends this way may have been refused rather than lost. ``__cause__`` is httpx's."""


class UnexpectedResponse(VisionError):
    """A success status whose body is not what the endpoint answers (not JSON, or not the
    response model: another server or a proxy's page). ``__cause__`` says what failed."""


class ApiError(VisionError):
    """The service answered with an error status."""

    status: int = 0

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str = "",
        type: str = "about:blank",
        body: Any = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}" if title else f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.title = title
        self.type = type
        self.body = body
        self.headers = headers if headers is not None else httpx.Headers()

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt with its fields when pickled (a multiprocessing worker's error reaches
        the parent as itself; Exception's default passes only the message back)."""
        fields = {
            "title": self.title,
            "type": self.type,
            "body": self.body,
            "headers": list(self.headers.multi_items()),
        }
        return (_rebuild, (type(self), self.status, self.detail, fields))


def _rebuild(cls: type[ApiError], status: int, detail: str, fields: dict[str, Any]) -> ApiError:
    headers = httpx.Headers(fields.pop("headers"))
    return cls(status, detail, headers=headers, **fields)


class BadRequest(ApiError):
    """400: not a decodable image, or a malformed V2 request."""


class Unauthorized(ApiError):
    """401: API keys are configured and none or a wrong one was sent."""


class Forbidden(ApiError):
    """403: the API key is valid but may not do this: ``reload_model`` with admin keys
    configured and the key sent not one of them, or ``attention_correct(save=True)`` with
    feedback keys configured and the key sent neither one of them nor an admin key."""


class NotFound(ApiError):
    """404: no such route or V2 model, or a model endpoint whose model this server does not
    serve."""


class RequestTimeout(ApiError):
    """408: the request body stopped arriving for the server's ``BODY_TIMEOUT_S``; the
    connection was closed. Sending again may succeed."""


class Conflict(ApiError):
    """409: ``reload_model`` found a new version that failed to load; the version that was
    serving keeps serving (``body["serving_version"]``)."""


class PayloadTooLarge(ApiError):
    """413: the upload exceeds the size or pixel limit."""


class UnsupportedMediaType(ApiError):
    """415: the upload's content type is not an image, or the body is not a multipart form."""


class InvalidRequest(ApiError):
    """422: a missing field or an out-of-range parameter (``errors`` lists them)."""

    @property
    def errors(self) -> list[Any]:
        found = self.body.get("errors") if isinstance(self.body, dict) else None
        return list(found) if isinstance(found, list) else []


class ServiceUnavailable(ApiError):
    """503: not ready (a model failed to load) or overloaded; retry after ``retry_after``.
    This client does not retry by itself: sending the request again is the caller's choice."""

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait, from ``Retry-After`` as seconds or as an HTTP date (RFC 9110);
        None when the header is missing or unreadable."""
        value = self.headers.get("retry-after")
        if value is None:
            return None
        if DELAY_SECONDS.fullmatch(value.strip()):  # digits only (RFC 9110 10.2.3)
            return float(min(int(value), MAX_RETRY_AFTER_S))
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may lack the zone
            when = when.replace(tzinfo=UTC)
        return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER_S)


class ServerError(ApiError):
    """A 5xx other than 503: the service failed (or, as StoreFull, refused to store)."""


class StoreFull(ServerError):
    """507: ``attention_correct(save=True)`` found the teacher-record store at its limit
    (the server's FEEDBACK_MAX_RECORDS); nothing was stored, and retrying does not help
    until records are removed or the limit is raised."""


STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    503: ServiceUnavailable,
    507: StoreFull,
}


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed error for an error response (problem+json, V2 ``error``, or plain text)."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    title, type_, detail = response.reason_phrase, "about:blank", ""
    if isinstance(body, dict):
        found = body.get("detail", body.get("error"))
        # A string from this service; another server's (FastAPI's list of errors) as JSON.
        detail = found if isinstance(found, str) else "" if found is None else json.dumps(found)
        title = str(body.get("title", title))
        type_ = str(body.get("type", type_))
    elif isinstance(body, str):
        detail = body
    cls = STATUS_ERRORS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else ApiError
    return cls(
        response.status_code,
        detail or title,
        title=title,
        type=type_,
        body=body,
        headers=response.headers,
    )
