"""Prometheus metrics, one registry per app so several apps (tests) never collide."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.paths import PROBE_PREFIXES, RouteTemplates, route_path

# Request latency buckets (seconds): from a probe (0.3 ms) and a lone CPU request (2-4 ms)
# to the longest an upload may take: a body that stalls is cut at BODY_TIMEOUT_S (30 s by
# default), and a refused one drained as long.
REQUEST_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Inference buckets: a 160x160 graph runs in a few ms on GPU and tens of ms on CPU.
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Batch sizes: powers of two up to well past any max batch size in use.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Label for requests no route matched, so scanners cannot blow up the label cardinality.
UNMATCHED_ENDPOINT = "unmatched"
# Key of the lifespan state (service/main.py yields it) under which the server's connection
# protocol finds the app's metrics: it closes connections outside any request, where no
# middleware sees them (service/protocol.py).
METRICS_STATE_KEY = "vision_metrics"


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    inference_seconds: Histogram
    model_ready: Gauge
    in_flight: Gauge
    queue_seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    rejected: Counter
    feature_cache: Counter
    body_bytes_in_flight: Gauge
    bodies_refused: Counter
    connections_timed_out: Counter
    connections_refused: Counter


def create_metrics() -> Metrics:
    """Fresh collectors in a fresh registry."""
    # No "_created" series: one per counter and histogram label set, doubling what
    # Prometheus stores for a start time it reads from the counters' resets anyway.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client has no annotation here
    registry = CollectorRegistry()
    return Metrics(
        registry=registry,
        requests=Counter(
            "vision_http_requests",
            "HTTP requests by endpoint (route template), method and status code.",
            ["endpoint", "method", "status"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "vision_http_request_duration_seconds",
            "Time from request start to response end, by endpoint.",
            ["endpoint", "method"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        ),
        inference_seconds=Histogram(
            "vision_inference_duration_seconds",
            "Time inside the ONNX Runtime session, by model and version.",
            ["model", "version"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        ),
        model_ready=Gauge(
            "vision_model_ready",
            "1 when the model loaded and warmed up, else 0.",
            ["model", "version"],
            registry=registry,
        ),
        in_flight=Gauge(
            "vision_http_requests_in_flight",
            "Requests being handled now, probes and scrapes excluded (the autoscaling signal).",
            registry=registry,
        ),
        queue_seconds=Histogram(
            "vision_batch_queue_duration_seconds",
            "Time a request waited in its graph's queue before its batch started.",
            ["model", "version", "graph"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        ),
        batch_size=Histogram(
            "vision_batch_size",
            "Rows (images) per ONNX Runtime run, by graph.",
            ["model", "version", "graph"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        ),
        queue_depth=Gauge(
            "vision_batch_queue_depth",
            "Requests admitted to a graph and not yet running (being decoded or queued).",
            ["model", "version", "graph"],
            registry=registry,
        ),
        rejected=Counter(
            "vision_batch_rejected",
            "Requests that never reached the model: queue_full (503) or client_gone.",
            ["model", "version", "graph", "reason"],
            registry=registry,
        ),
        body_bytes_in_flight=Gauge(
            "vision_request_body_bytes_in_flight",
            "Bytes reserved by requests with a body being received or handled "
            "(VISION_MAX_BODY_BYTES_IN_FLIGHT caps it).",
            registry=registry,
        ),
        bodies_refused=Counter(
            "vision_request_bodies_refused",
            "Requests with a body refused by the upload gate: full (503, "
            "VISION_MAX_BODY_BYTES_IN_FLIGHT), stalled (408, VISION_BODY_TIMEOUT_S), "
            "unauthorized (401 before the body is read, when API keys are set), "
            "transfer_coding (400, a coding besides chunked), content_coding (415, a form "
            "sent with a Content-Encoding) or unclosed_form (400, a multipart body without "
            "its close delimiter).",
            ["reason"],
            registry=registry,
        ),
        connections_timed_out=Counter(
            "vision_connections_timed_out",
            "Connections closed for VISION_HEADER_TIMEOUT_S: idle (a new connection sent no "
            "request; keep-alive running out between requests is not counted), "
            "headers (a request's head was incomplete; answered 408) or body (answered "
            "early, the rest of the body stopped arriving); and for VISION_SEND_TIMEOUT_S: "
            "answer (the client took none of an answer that long; dropped).",
            ["phase"],
            registry=registry,
        ),
        connections_refused=Counter(
            "vision_connections_refused",
            "Connections the HTTP protocol answered and closed before any request reached "
            "the app: malformed (bytes that are no HTTP/1.1 request: 400), head_too_large "
            "(a request head past VISION_MAX_HEADER_BYTES: 431) or uri_too_long (a request "
            "target past the 65 535 bytes httptools parses: 414).",
            ["reason"],
            registry=registry,
        ),
        feature_cache=Counter(
            "vision_feature_cache_lookups",
            "Attention feature-cache lookups by result (hit: a correction or a repeated image "
            "skipped the features graph).",
            ["result"],
            registry=registry,
        ),
    )


class MetricsMiddleware:
    """Counts requests and times them, labelled by the matched route's path template."""

    def __init__(self, app: ASGIApp, metrics: Metrics, early_paths: Collection[str] = ()) -> None:
        self.app = app
        self.metrics = metrics
        # Route templates of requests that carry no FastAPI route when answered: those a
        # middleware answers before routing (the model endpoints' and V2 infer's early 503s,
        # 413s and 408s), and Starlette's own routes and mounts (the OpenAPI document, the
        # docs' static assets). A request for one is labelled with its template, not
        # "unmatched", so overload shows per endpoint. A fixed set, so no client can mint
        # label values with made-up paths.
        self.early_paths = RouteTemplates(early_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering
        # Probes and scrapes are not work: they would keep the in-flight gauge (and so an
        # autoscaler reading it) above zero on an idle server.
        # Read before routing: a mount rewrites the scope's root_path on the way in.
        path = route_path(scope)
        counted = not path.startswith(PROBE_PREFIXES)
        if counted:
            self.metrics.in_flight.inc()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if counted:
                self.metrics.in_flight.dec()
            endpoint = _endpoint(scope, path, self.early_paths)
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint, method).observe(
                time.perf_counter() - started
            )


def _endpoint(scope: Scope, path: str, early_paths: RouteTemplates) -> str:
    """The matched FastAPI route's template, else the template of ``early_paths`` that
    ``path`` (the routed path) matches, else UNMATCHED_ENDPOINT."""
    route: Any = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    return early_paths.match(path) or UNMATCHED_ENDPOINT
