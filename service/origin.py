"""Cross-site requests to a server without API keys.

With no keys configured (``make run``'s default, a developer's machine) anyone who reaches
the port may store teacher records and reload models, and that includes any web page the
user opens: a form POST to ``http://localhost:8000/models/attention/reload`` or a
multipart POST to ``/attention/correct?save=true`` needs no CORS preflight, so the page
cannot read the answer but the server acts on it. Browsers say where such a request comes
from (``Sec-Fetch-Site``; ``Origin`` in older ones); a request that changes something
and comes from another site is refused with 403. Clients outside a browser (curl, the
Python client) send neither header and pass. With keys, a cross-site page cannot send
one (a custom header needs a preflight this server never grants), so the check is not
installed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden
from service.limits import send_problem
from service.paths import route_path

# Methods that change nothing here: answered whatever their origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site(headers: Headers) -> str | None:
    """Where a browser says the request comes from, when that is another site; None for a
    same-origin or same-site request and for a client that is not a browser."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return "another site (Sec-Fetch-Site: cross-site)" if fetch_site == "cross-site" else None
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin == "null":  # a sandboxed frame, a file:// page, a redirect across sites
        return "an opaque origin (Origin: null)"
    if urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        return f"another origin ({origin[:100]})"
    return None


class SameSiteMiddleware:
    """403 problem+json for a request that changes something (not GET, HEAD or OPTIONS)
    and that a browser says comes from another site; install only without API keys."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            source = cross_site(Headers(scope=scope))
            if source is not None:
                error = Forbidden(
                    f"a request from {source} may not change anything on a server without "
                    "API keys (VISION_API_KEYS): a web page could otherwise store teacher "
                    "records or reload models in its visitor's name"
                )
                # The body is not read: the connection closes after the answer.
                await send_problem(send, error, close=True, path=route_path(scope))
                return
        await self.app(scope, receive, send)
