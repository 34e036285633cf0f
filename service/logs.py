"""Request IDs and structured logs.

Every request gets an ID: the caller's ``X-Request-ID`` when it is a sane token, else a
fresh uuid4 hex. It is echoed in the ``X-Request-ID`` response header (every response,
413s from the size limit included), attached to every log record written while the request
is handled, and written in one access line per request. With ``log_format=json`` each
record is one JSON object per line.

What is logged is the method, the path, the status, the duration and the request ID:
never a body (image bytes), a query string, or a header (API keys travel in headers).
Messages are also capped in length, so a future careless ``%r`` of an upload cannot dump
megabytes of bytes into the log.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.paths import PROBE_PATHS, route_path
from service.timing import timings_var

REQUEST_ID_HEADER = "X-Request-ID"
# Where RequestIdMiddleware leaves the ID in the ASGI scope: Starlette answers unexpected
# errors (500) outside every middleware, after the context variable below is reset.
REQUEST_ID_SCOPE_KEY = "request_id"
# A caller's ID is kept only when it is a short token: no spaces, no control characters,
# nothing that could forge a second log line or a header.
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Longest message written; an accidental dump of bytes is cut here.
MAX_MESSAGE_CHARS = 2000
# A traceback over the cap keeps its end: the innermost frames and the exception's own line,
# the part that says what went wrong, are last.
TRACEBACK_TAIL_CHARS = 1200
ACCESS_LOGGER = "service.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Attributes every LogRecord has; anything else on a record came in through ``extra=``
# (uvicorn's ``color_message`` is its message again, with terminal colour codes).
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "color_message"}
)


class RequestIdFilter(logging.Filter):
    """Puts the current request's ID on every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def _tail(record: logging.LogRecord) -> int:
    """Characters of a capped record's end to keep: a traceback's (with ``exc_info``, or
    written as the message itself, as uvicorn logs a failed startup), else none."""
    if record.exc_info or str(record.msg).startswith("Traceback (most recent call last)"):
        return TRACEBACK_TAIL_CHARS
    return 0


def _capped(text: str, tail: int = 0) -> str:
    """``text`` cut to MAX_MESSAGE_CHARS: its start, and its last ``tail`` characters."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    head = MAX_MESSAGE_CHARS - tail
    cut = len(text) - MAX_MESSAGE_CHARS
    return text[:head] + f"... [{cut} chars cut] ..." + (text[-tail:] if tail else "")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": _capped(record.getMessage(), _tail(record) if not record.exc_info else 0),
            "request_id": getattr(record, "request_id", request_id_var.get()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                plain = isinstance(value, int | float | bool | None)
                # Capped like the message: an access line's path is the client's to make long.
                entry[key] = value if plain else _capped(str(value))
        if record.exc_info:
            entry["error"] = _capped(self.formatException(record.exc_info), TRACEBACK_TAIL_CHARS)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain format with the request ID, messages capped like the JSON ones."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return _capped(super().format(record), _tail(record))


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def make_handler(log_format: str) -> logging.Handler:
    """A stderr handler with the chosen formatter and the request-ID filter."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(RequestIdFilter())
    return handler


def uvicorn_log_config(log_format: str, level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` for ``uvicorn.run(log_config=...)``: uvicorn's own
    loggers and the root logger all write through one formatter (JSON or text)."""
    formatter = (
        "service.logs.JsonFormatter" if log_format == "json" else "service.logs.TextFormatter"
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.logs.RequestIdFilter"}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"level": level},
            # The access line comes from RequestIdMiddleware (with the request ID).
            "uvicorn.access": {"level": "WARNING"},
        },
    }


# C0 and C1 controls and Unicode's line and paragraph separators: each can start a new line
# in some log viewer (NEL, U+0085, and U+2028 do in many).
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters escaped: a decoded URL path may hold a newline,
    which would forge a second line in a text log."""
    return CONTROL_CHARS.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RequestIdMiddleware:
    """Assigns the request ID, echoes it in the response and writes the access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.logger = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = _header(scope, REQUEST_ID_HEADER.lower().encode())
        request_id = offered if offered and SANE_REQUEST_ID.match(offered) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering
        # Read before routing: a mount rewrites the scope's root_path on the way in.
        quiet = route_path(scope) in PROBE_PATHS

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = printable(scope.get("path", ""))
            timings = timings_var.get()
            # decode-wait -> decode_wait_ms: a field name log tools take without quoting.
            stages = {
                f"{stage.replace('-', '_')}_ms": round(ms, 3)
                for stage, ms in (timings.stages_ms.items() if timings else ())
            }
            duration_ms = round(1000 * (time.perf_counter() - started), 2)
            # The text format shows only the message, so duration and stages go in it too
            # (the JSON format also has each as its own field).
            self.logger.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %d %.2f ms%s",
                scope.get("method", ""),
                path,
                status,
                duration_ms,
                "".join(f" {name}={ms}" for name, ms in stages.items()),
                extra={
                    "method": scope.get("method", ""),
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    **stages,
                },
            )
            request_id_var.reset(token)
