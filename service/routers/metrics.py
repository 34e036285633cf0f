"""Prometheus exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.dependencies import MetricsDep

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def get_metrics(metrics: MetricsDep) -> Response:
    """Expose request and inference metrics in Prometheus text format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
