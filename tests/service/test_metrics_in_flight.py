"""vision_http_requests_in_flight: the per-pod signal the custom-metric HPA scales on."""

from __future__ import annotations

import anyio
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service.metrics import MetricsMiddleware, create_metrics


def test_gauge_counts_work_but_not_probes() -> None:
    metrics = create_metrics()
    seen: dict[str, float] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen[scope["path"]] = metrics.in_flight._value.get()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = MetricsMiddleware(app, metrics)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    async def main() -> None:
        for path in ("/recognize", "/v2/models/x/infer", "/health/ready", "/v2/health/live"):
            await middleware({"type": "http", "path": path, "method": "POST"}, receive, send)

    anyio.run(main)
    assert seen == {
        "/recognize": 1,
        "/v2/models/x/infer": 1,
        "/health/ready": 0,
        "/v2/health/live": 0,
    }
    assert metrics.in_flight._value.get() == 0


def test_gauge_is_exposed(client: TestClient) -> None:
    client.get("/models")
    assert "vision_http_requests_in_flight 0.0" in client.get("/metrics").text
