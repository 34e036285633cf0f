"""Typed errors built from the service's error responses (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from client import RequestTimeout, ServiceUnavailable, UnsupportedMediaType
from client.errors import error_from_response


def unavailable(retry_after: str | bytes | None) -> ServiceUnavailable:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    response = httpx.Response(
        503,
        json={"type": "about:blank", "title": "Service Unavailable", "detail": "busy"},
        headers=headers,
    )
    error = error_from_response(response)
    assert isinstance(error, ServiceUnavailable)
    return error


@pytest.mark.parametrize(("header", "seconds"), [("5", 5.0), ("0", 0.0), (" 120 ", 120.0)])
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert unavailable(header).retry_after == seconds


def test_retry_after_as_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    waited = unavailable(format_datetime(when, usegmt=True)).retry_after
    assert waited is not None and 100 < waited <= 120


def test_retry_after_as_a_far_date_is_capped_as_seconds_are() -> None:
    assert unavailable("Wed, 21 Oct 2099 07:28:00 GMT").retry_after == 86_400.0


@pytest.mark.parametrize(
    ("detail", "said"),
    [(None, "Service Unavailable"), ([{"loc": ["body"]}], '[{"loc": ["body"]}]'), (3, "3")],
)
def test_a_detail_that_is_no_string_is_said_as_json(detail: object, said: str) -> None:
    """Another server's (a proxy's, FastAPI's list of errors): None was "None"."""
    problem = {"title": "Service Unavailable", "detail": detail}
    assert error_from_response(httpx.Response(503, json=problem)).detail == said


def test_retry_after_in_the_past_is_now() -> None:
    assert unavailable("Wed, 21 Oct 2015 07:28:00 GMT").retry_after == 0.0


# RFC 9110's delay-seconds is digits only: float() took "inf" (a retry loop would sleep
# for ever), "nan" and "1e9".
# A superscript two (latin-1 byte 0xb2) and an Arabic-Indic three: str.isdigit takes both.
@pytest.mark.parametrize(
    "header",
    [None, "soon", "", "0.5", "-3", "inf", "nan", "1e9", b"\xb2", "\u0663".encode()],
)
def test_retry_after_missing_or_unreadable(header: str | bytes | None) -> None:
    assert unavailable(header).retry_after is None


def test_a_stalled_body_is_a_request_timeout() -> None:
    problem = {
        "type": "urn:vision-service:problem:request-timeout",
        "title": "Request timeout",
        "status": 408,
        "detail": "no part of the request body arrived for 30 s (VISION_BODY_TIMEOUT_S)",
    }
    error = error_from_response(httpx.Response(408, json=problem))
    assert isinstance(error, RequestTimeout)
    assert error.status == 408 and error.type.endswith("request-timeout")
    assert "VISION_BODY_TIMEOUT_S" in error.detail


def test_a_415_is_unsupported_media_type() -> None:
    problem = {"type": "about:blank", "title": "Unsupported media type", "detail": "not a form"}
    error = error_from_response(httpx.Response(415, json=problem))
    assert isinstance(error, UnsupportedMediaType) and error.detail == "not a form"


def test_a_retry_after_of_400_digits_is_capped_not_an_overflow() -> None:
    assert unavailable("9" * 400).retry_after == 86_400.0


def test_errors_survive_pickling_with_their_fields() -> None:
    """A multiprocessing worker's error reaches the parent as itself: Exception's default
    pickling called ``__init__`` with the message alone and failed."""
    import copy
    import pickle

    error = unavailable("7")
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(again) is ServiceUnavailable and again.retry_after == 7.0
        assert (again.status, again.detail, again.title) == (503, "busy", "Service Unavailable")
        assert again.body == error.body and str(again) == str(error)
