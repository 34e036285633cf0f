"""Whole answers only: no byte ranges.

Starlette's file responses (the editor page, its assets, the docs' assets) honour a
``Range`` header and answer a bad one with a text/plain 400, or 416, where RFC 9110 asks an
unknown unit to be ignored, and where every other error here is problem+json. These files
are a few tens of kilobytes, so nothing is gained by ranges: the server ignores the header,
as RFC 9110 (14.2) allows, and says it does not take ranges (``Accept-Ranges: none``).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_RANGE_FIELDS = frozenset({b"range", b"if-range"})


class IgnoreRangeMiddleware:
    """Drop ``Range`` and ``If-Range`` from requests; answer ``Accept-Ranges: none`` where
    the app offered ranges."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if any(name.lower() in _RANGE_FIELDS for name, _ in headers):
            scope["headers"] = [(n, v) for n, v in headers if n.lower() not in _RANGE_FIELDS]

        async def send_no_ranges(message: Message) -> None:
            if message["type"] == "http.response.start":
                fields = message.get("headers", [])
                if any(name.lower() == b"accept-ranges" for name, _ in fields):
                    kept = [(n, v) for n, v in fields if n.lower() != b"accept-ranges"]
                    message = {**message, "headers": [*kept, (b"accept-ranges", b"none")]}
            await send(message)

        await self.app(scope, receive, send_no_ranges)
