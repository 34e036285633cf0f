"""The path a request is routed on, for the middlewares that act before routing."""

from __future__ import annotations

from collections.abc import Collection

from starlette.routing import compile_path
from starlette.types import Scope

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
