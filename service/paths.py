"""The path a request is routed on, for the middlewares that act before routing."""

from __future__ import annotations

from starlette.types import Scope


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
