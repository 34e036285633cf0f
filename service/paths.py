"""The path a request is routed on, for the middlewares that act before routing."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import quote

from starlette.responses import RedirectResponse
from starlette.routing import Match, Router, compile_path
from starlette.types import Receive, Scope, Send

# Paths of probes and scrapes, asked every few seconds (routed paths, less a root_path):
# under these prefixes nothing counts as a request in flight, and the probes themselves log
# their access lines only at DEBUG (a scanner's /metrics.php or /health/x stays at INFO).
PROBE_PREFIXES = ("/health/", "/v2/health/", "/metrics")
PROBE_PATHS = frozenset(
    {"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"}
)


def route_path(scope: Scope) -> str:
    """``scope["path"]`` without the ``root_path`` it starts with. ASGI servers put the
    mount prefix in both (a proxy's ``/vision``, uvicorn's ``--root-path``), and routes are
    matched without it, as Starlette's router does (``get_route_path``); so must the body
    limits, admission and metrics that look at a path before routing."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if not root or not path.startswith(root):
        return path
    rest = path[len(root) :]
    return rest if rest == "" or rest.startswith("/") else path


class RouteTemplates:
    """Route path templates (``/v2/models/{name}/infer``), matched as the router matches
    them, for the middlewares that must know a request's route before routing."""

    def __init__(self, templates: Collection[str]) -> None:
        self._patterns = tuple((template, compile_path(template)[0]) for template in templates)

    def match(self, path: str) -> str | None:
        """The first template ``path`` (a ``route_path``) matches; None when none does."""
        return next((template for template, pattern in self._patterns if pattern.match(path)), None)


class RelativeSlashRedirect:
    """The router's fallback: a path that matches no route but would without its trailing
    slash (or with one) is redirected there, as Starlette's ``redirect_slashes`` does, but
    by a relative ``Location`` (``../models``, ``./ui/``). Starlette's names the URL from
    the ``Host`` header, so a forged ``Host`` made the answer point at another site (cache
    poisoning), and a proxy serving the service under a path prefix lost the prefix; a
    relative reference resolves against what the client itself asked for.

    Two or more trailing slashes are a 404: the reference from ``/models//`` is
    ``../../models`` under RFC 3986 (browsers, curl), but Python's ``urljoin`` and httpx
    drop empty segments and would follow it to ``/models`` one level up."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.not_found = router.default
        # The router's own redirect would run first and name the Host.
        router.redirect_slashes = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        location = self.location(scope) if scope["type"] == "http" else None
        if location is None:
            await self.not_found(scope, receive, send)
            return
        await RedirectResponse(location, status_code=307)(scope, receive, send)

    def location(self, scope: Scope) -> str | None:
        """The relative reference to the path with a route; None when there is none."""
        path = route_path(scope)
        if path in ("", "/"):
            return None
        # The path as sent (percent-encoded), for the segment the reference repeats.
        raw = bytes(scope.get("raw_path") or quote(str(scope["path"])).encode()).decode("latin-1")
        trailing = len(path) - len(path.rstrip("/"))
        if trailing > 1 or trailing != len(raw) - len(raw.rstrip("/")):
            return None  # see above; or an encoded slash (%2F) at the end, which none names
        if trailing:
            target, segment = path[:-1], raw[:-1].rsplit("/", 1)[-1]
            reference = f"../{segment}"
        else:
            target, segment = path + "/", raw.rsplit("/", 1)[-1]
            reference = f"./{segment}/"  # "./" so that a segment "a:b" is no scheme
        if segment in ("", ".", ".."):
            return None  # the root, or a dot segment the reference would resolve away
        redirect_scope = {**scope, "path": str(scope.get("root_path", "")) + target}
        if not any(
            route.matches(redirect_scope)[0] is not Match.NONE for route in self.router.routes
        ):
            return None
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        return f"{reference}?{query}" if query else reference
