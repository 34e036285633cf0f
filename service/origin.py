"""Requests from web pages to a server without API keys.

With no keys configured (``make run``'s default, a developer's machine) anyone who reaches
the port may store teacher records and reload models, and that includes any web page the
user opens: a form POST to ``http://localhost:8000/models/attention/reload`` or a
multipart POST to ``/attention/correct?save=true`` needs no CORS preflight, so the page
cannot read the answer but the server acts on it. Browsers say where such a request comes
from (``Sec-Fetch-Site``; ``Origin`` in older ones): a request that changes something is
accepted only from the server's own origin (not from another port of the same host, which
browsers count as the same site, nor a sibling subdomain). A page on a name the attacker
controls that is re-pointed at this server (DNS rebinding) is same-origin to the browser,
so the ``Host`` it names (and ``X-Forwarded-Host``, when a proxy sends one) must also be
this server's: an IP address, ``localhost``, or a name in ``VISION_ALLOWED_HOSTS``.
Clients outside a browser (curl, the Python client) send neither ``Sec-Fetch-Site`` nor
``Origin`` and pass. With keys, a page cannot send one (a custom header needs a preflight
this server never grants, and a rebound page does not have the key), so the check is not
installed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden
from service.limits import send_problem
from service.paths import route_path

# Methods that change nothing here: answered whatever their origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values of a request the server's own page (or the user, typing a URL) sent.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def host_name(name: str) -> str:
    """A host name as DNS compares it: lower case, no trailing dot (``localhost.`` is
    ``localhost``), non-ASCII labels in their IDNA form (what a browser sends)."""
    name = name.lower().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return name
    return name


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    """(host name without brackets, port) of a ``Host`` or an origin's netloc; the port is
    the scheme's default when absent, None when it does not parse."""
    parts = urlsplit(f"//{netloc}")
    host = host_name(parts.hostname or "")
    try:
        port = parts.port
    except ValueError:
        return (host, None)
    return (host, port if port is not None else DEFAULT_PORTS.get(scheme))


def is_local_name(host: str) -> bool:
    """Whether ``host`` (no port, no brackets) cannot be a name an attacker re-points at
    this server: an IP address, ``localhost`` or a name under it (RFC 6761)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def refusal(headers: Headers, allowed_hosts: Collection[str]) -> str | None:
    """Why a browser's request may not change anything (where it comes from), or None for
    the server's own page and for a client that is not a browser."""
    fetch_site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if fetch_site is None and origin is None:
        return None  # not a browser: curl, the Python client
    # The names the request was sent to: a proxy that rewrites Host says the one the browser
    # used in X-Forwarded-Host (the first, when proxies chain).
    names = [headers.get("host", "")]
    if "x-forwarded-host" in headers:
        names.append(headers["x-forwarded-host"].split(",")[0].strip())
    if fetch_site is not None and fetch_site not in OWN_FETCH_SITES:
        return f"another origin (Sec-Fetch-Site: {fetch_site[:20]})"
    if fetch_site is None and origin is not None:
        if origin == "null":  # a sandboxed frame, a file:// page, a redirect across sites
            return "an opaque origin (Origin: null)"
        # Either name may match: another site's page cannot set X-Forwarded-Host (a custom
        # header needs a preflight).
        parts = urlsplit(origin)
        own = _host_port(parts.netloc, parts.scheme)
        if own[1] is None or all(_host_port(n, parts.scheme) != own for n in names):
            return f"another origin ({origin[:100]})"
    if "*" in allowed_hosts:
        return None
    # Every name must be allowed: a rebound page could add a local X-Forwarded-Host (a
    # same-origin page may set any header), so neither alone may vouch for the other.
    for name in names:
        host = _host_port(name, "http")[0]
        if not is_local_name(host) and host not in allowed_hosts:
            return (
                f"a page that calls this server {host[:100]!r}, a name that is not in "
                "VISION_ALLOWED_HOSTS (a name re-pointed at this server, DNS rebinding, "
                "looks the same)"
            )
    return None


class SameSiteMiddleware:
    """403 problem+json for a request that changes something (not GET, HEAD or OPTIONS)
    and that a browser sends from a page other than the server's own; install only
    without API keys. ``allowed_hosts``: host names besides IP addresses and localhost
    under which the server's own page may change something (``*``: any); a port, case or
    a trailing dot in them does not matter."""

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str] = ()) -> None:
        self.app = app
        # As the Host is compared: "Gpu-Box.lan.:8000" is gpu-box.lan.
        self.allowed_hosts = frozenset(
            host if host == "*" else _host_port(host, "http")[0] for host in allowed_hosts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            source = refusal(Headers(scope=scope), self.allowed_hosts)
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
