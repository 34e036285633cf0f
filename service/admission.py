"""Early 503: refuse an upload before its body is read when its model's queue is full.

The batchers (service/batching.py) bound each graph's queue, but FastAPI reads and parses a
multipart body before the handler can ask for a slot; under overload that parsing alone
keeps the event loop busy, and the 503s (and the accepted requests behind them) wait for
it. This middleware looks at the path first: a POST to a model endpoint whose model has a
full graph has its body drained unparsed (closing with it unread would reset the
connection and could lose the answer) and is answered 503 problem+json with Retry-After;
a body beyond the upload limit is not drained, the connection closes instead. Requests
without a valid API key (when keys are set) pass through to get their 401.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.dependencies import check_api_key
from service.errors import Overloaded, ServiceError
from service.limits import BodyLimits, drain_body, release_body, send_problem
from service.paths import route_path
from service.runtime import ModelRegistry
from service.settings import Settings

# POST path -> the setting naming the model that serves it.
MODEL_ENDPOINTS: Mapping[str, str] = {
    "/recognize": "recognize_model",
    "/attention": "attention_model",
    "/attention/correct": "attention_model",
    "/gender": "gender_model",
    "/occlusion": "occlusion_model",
    "/faces/verify": "occlusion_model",
}


class AdmissionMiddleware:
    """503 before the body is read for a model endpoint whose model has a full queue."""

    def __init__(
        self, app: ASGIApp, limits: BodyLimits, endpoints: Mapping[str, str] = MODEL_ENDPOINTS
    ) -> None:
        self.app = app
        self.limits = limits
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            rejection = self._rejection(scope)
            if rejection is not None:
                # Read and dropped unparsed; past the upload limit the connection closes.
                # Dropping holds no memory: the upload gate's reservation goes back first.
                release_body(scope)
                path = route_path(scope)
                drained = await drain_body(receive, 0, self.limits.for_path(path))
                await send_problem(send, rejection, close=not drained, path=path)
                return
        await self.app(scope, receive, send)

    def _rejection(self, scope: Scope) -> Overloaded | None:
        attribute = self.endpoints.get(route_path(scope))
        if attribute is None:
            return None
        state = scope["app"].state
        settings: Settings = state.settings
        registry: ModelRegistry = state.registry
        name = getattr(settings, attribute, None)
        model = registry.get(name) if isinstance(name, str) else None
        if model is None:
            return None
        full = [batcher for batcher in model.batchers.values() if batcher.full]
        if not full:
            return None
        try:
            check_api_key(Request(scope), settings)  # the routes' own key check
        except ServiceError:
            return None  # no or a wrong key: the route answers its 401
        return full[0].overloaded()
