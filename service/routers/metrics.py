"""Prometheus exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.dependencies import MetricsDep

router = APIRouter(tags=["operations"])


METRICS_EXAMPLE = """# HELP vision_http_requests_total HTTP requests by endpoint, method and status.
# TYPE vision_http_requests_total counter
vision_http_requests_total{endpoint="/recognize",method="POST",status="200"} 42.0
# HELP vision_http_requests_in_flight Requests being handled now, probes and scrapes excluded.
# TYPE vision_http_requests_in_flight gauge
vision_http_requests_in_flight 1.0
"""


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST: {"example": METRICS_EXAMPLE}},
        }
    },
)
async def get_metrics(metrics: MetricsDep) -> Response:
    """Expose request and inference metrics in Prometheus text format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
