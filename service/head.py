"""HEAD wherever GET is (RFC 9110 9.3.2): load balancers, uptime checkers and link
checkers probe with it, and FastAPI routes answer HEAD only where it is declared."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    """Route a HEAD request as the GET of the same path and send the GET's status and
    headers (Content-Length included) without its body. A path without GET answers 405
    as it would for GET, with its ``Allow`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the body's chunks are dropped; its last message ends it
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            # The server reads the method from this scope as the answer goes out: as GET,
            # uvicorn waited for Content-Length bytes of body, raised on the empty one and
            # dropped the keep-alive connection. So the answer goes out as HEAD's.
            scope["method"] = "HEAD"
            try:
                await send(message)
            finally:
                scope["method"] = "GET"

        # The scope itself, not a copy: the router records the matched route in it, and the
        # metrics outside read that route (a copy left every HEAD "unmatched").
        scope["method"] = "GET"
        try:
            await self.app(scope, receive, send_headers_only)
        finally:
            scope["method"] = "HEAD"
