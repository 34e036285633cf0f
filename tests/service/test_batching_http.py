"""Dynamic batching seen through HTTP: the early 503, grouping, departed clients, max delay.

tests/service/test_batching.py drives ``Batcher`` directly; these tests go through the
whole app (middlewares, routes, ``infer_images``), where each of these behaviours has its
own wiring that a Batcher unit test cannot see. Batches are decided by who holds a slot
and by a runner that blocks until told, never by the clock; the one timing test asserts
only generous bounds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
import numpy.typing as npt
import pytest
from anyio.from_thread import BlockingPortal
from fastapi.testclient import TestClient
from starlette.types import Message

from service.batching import Batcher
from service.main import create_app
from service.metrics import Metrics
from tests.service.conftest import assert_problem, make_settings
from tests.service.images import encode, scene

# Long enough never to expire in a test: a batch waits for slot holders, not for the clock.
PATIENT_S = 30.0
PATIENT_MS = PATIENT_S * 1000
# The graph labels of the fake landmark model's metrics.
GRAPH = {"model": "landmark", "version": "1", "graph": "model"}


class GateRunner:
    """Wraps a session: records the rows of every run, and holds the first run inside
    (``entered`` set) until ``release`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        self.batches.append(int(next(iter(feeds.values())).shape[0]))
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(PATIENT_S), "the test never released the first run"
        result: dict[str, npt.NDArray[Any]] = self.inner.run(feeds, output_names)
        return result


def _batcher(client: TestClient) -> Batcher:
    batcher: Batcher = client.app.state.registry.get("landmark").batcher()  # type: ignore[attr-defined]
    return batcher


def _metrics(client: TestClient) -> Metrics:
    metrics: Metrics = client.app.state.metrics  # type: ignore[attr-defined]
    return metrics


def _sample(client: TestClient, name: str, **labels: str) -> float:
    """A sample's value in the app's registry, 0 when it was never recorded."""
    value = _metrics(client).registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _portal(client: TestClient) -> BlockingPortal:
    """The portal whose event loop runs the app (set while the client is open)."""
    assert client.portal is not None
    return client.portal


def _post(client: TestClient, data: bytes) -> Any:
    return client.post("/recognize", files={"image": ("x.png", data, "image/png")})


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = PATIENT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def test_admission_refuses_a_full_models_upload_before_parsing_its_body(repo: Path) -> None:
    """Guards AdmissionMiddleware's early 503 (``_rejection``): with the landmark graph's
    queue full, a POST to /recognize is refused before FastAPI parses its form. The bodies
    here cannot be parsed into a request at all (no ``image`` field; broken multipart), so
    a 503 proves the refusal came first: without the middleware the route would answer
    their 422 and 400 and never reach ``batcher.slot()``, the other source of 503s."""
    settings = make_settings(repo, batch_queue_size=1)
    no_image = {"files": {"photo": ("x.png", encode(scene()), "image/png")}}
    garbage = {
        "content": b"this is no multipart body",
        "headers": {"content-type": "multipart/form-data; boundary=nothing-here"},
    }
    with TestClient(create_app(settings)) as client:
        batcher = _batcher(client)
        held = _portal(client).call(batcher.reserve)
        assert batcher.full
        try:
            refused = [client.post("/recognize", **kw) for kw in (no_image, garbage)]
        finally:
            _portal(client).call(held.release)
        # With a free slot the same bodies get what parsing them makes of them.
        parsed = [client.post("/recognize", **kw) for kw in (no_image, garbage)]
        rejected = _sample(client, "vision_batch_rejected_total", **GRAPH, reason="queue_full")
        answered_503 = _sample(
            client,
            "vision_http_requests_total",
            endpoint="/recognize",
            method="POST",
            status="503",
        )
    for response in refused:
        body = assert_problem(response, 503)
        assert body["type"].endswith("overloaded")
        assert response.headers["retry-after"] == "1"
        assert "connection" not in response.headers  # drained: keep-alive stays usable
    assert [response.status_code for response in parsed] == [422, 400]
    assert rejected == 2 and answered_503 == 2


@pytest.mark.parametrize(("batching", "runs"), [(True, [1, 3]), (False, [1, 1, 1, 1])])
def test_http_requests_that_queue_together_run_as_one_batch(
    repo: Path, batching: bool, runs: list[int]
) -> None:
    """Guards that HTTP requests are ever batched (``infer_images`` takes the lone path
    only when ``batcher.alone()``): the first request is held inside its run, three more
    arrive meanwhile and take slots, then the first is let go. With batching on the three
    run as one batch (two runs for four requests); with it off each runs alone. Taking the
    lone path for every single-image request would make it four runs either way. One run
    at a time (BATCH_PARALLEL 1) and a patient max delay make the grouping deterministic:
    the next batch waits for every slot holder to queue."""
    uploads = [encode(scene(box=(8 * k, 8 * k, 8 * k + 16, 8 * k + 16))) for k in range(4)]
    settings = make_settings(
        repo, batching=batching, batch_parallel=1, batch_max_delay_ms=PATIENT_MS
    )
    with TestClient(create_app(settings)) as client:
        expected = [_post(client, data).json() for data in uploads]
        before = _sample(client, "vision_batch_size_count", **GRAPH)
        batcher = _batcher(client)
        runner = GateRunner(batcher.runner)
        batcher.runner = runner
        try:
            with ThreadPoolExecutor(len(uploads)) as pool:
                first = pool.submit(_post, client, uploads[0])
                assert runner.entered.wait(PATIENT_S), "the first request never ran"
                rest = [pool.submit(_post, client, data) for data in uploads[1:]]
                # The three others are admitted (decoding, queued or waiting to run).
                _wait_until(lambda: batcher.slots == len(rest), "the others took their slots")
                runner.release.set()
                responses = [first.result(PATIENT_S), *(f.result(PATIENT_S) for f in rest)]
        finally:
            runner.release.set()  # never leave a request stuck in the runner
        count = _sample(client, "vision_batch_size_count", **GRAPH) - before
    assert [response.status_code for response in responses] == [200] * len(uploads)
    assert [response.json() for response in responses] == expected  # split back by rows
    assert runner.batches == runs
    assert count == len(runs)


def test_a_queued_http_request_whose_client_left_never_reaches_the_model(repo: Path) -> None:
    """Guards that routes hand ``request.is_disconnected`` to the batcher (``infer_images``
    passes it as ``disconnected``): a request whose client sent its whole body and then
    disconnected while queued is dropped before its batch runs, counted as client_gone and
    answered 499 for the request metrics. Driven at the ASGI level, the only way to send
    an ``http.disconnect``; a held slot keeps the request off the lone path and the batch
    waiting (patient max delay) until the disconnect has been sent."""
    settings = make_settings(repo, batch_max_delay_ms=PATIENT_MS)
    request = httpx.Request(
        "POST",
        "http://testserver/recognize",
        files={"image": ("x.png", encode(scene()), "image/png")},
    )
    body = request.read()
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()
    ]
    with TestClient(create_app(settings)) as client:
        batcher = _batcher(client)
        runner = GateRunner(batcher.runner)
        runner.release.set()  # nothing to hold here: it only counts runs
        batcher.runner = runner
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/recognize",
            "raw_path": b"/recognize",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("testclient", 50000),
            "server": ("testserver", 80),
            "extensions": {},
            "state": dict(client.app_state),
        }

        async def scenario() -> list[Message]:
            sent: list[Message] = []
            gone = asyncio.Event()
            body_sent = False

            async def receive() -> Message:
                nonlocal body_sent
                if not body_sent:
                    body_sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                # Once gone, answered without awaiting: Request.is_disconnected polls
                # receive() in an already cancelled scope.
                if not gone.is_set():
                    await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                sent.append(message)

            held = batcher.reserve()  # company still "decoding": the batch waits for it
            try:
                app = asyncio.ensure_future(client.app(scope, receive, send))
                deadline = time.monotonic() + PATIENT_S
                while batcher.queued < 1 and not app.done():
                    assert time.monotonic() < deadline, "the request never queued"
                    await asyncio.sleep(0.005)
                gone.set()  # the client leaves while its request waits in the queue
            finally:
                held.release()
            await asyncio.wait_for(app, PATIENT_S)
            return sent

        sent = _portal(client).call(scenario)
        client_gone = _sample(client, "vision_batch_rejected_total", **GRAPH, reason="client_gone")
        answered_499 = _sample(
            client,
            "vision_http_requests_total",
            endpoint="/recognize",
            method="POST",
            status="499",
        )
        # The model itself still serves the next client.
        assert _post(client, encode(scene())).status_code == 200
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [499]
    assert runner.batches == [1]  # only the last request's run: the departed one never ran
    assert client_gone == 1 and answered_499 == 1


def test_a_queued_request_waits_at_most_max_delay_for_a_slot_holder(repo: Path) -> None:
    """Guards the batcher's max delay deadline (``_gather``): a request queued while
    another slot is held by a request that never arrives runs alone after max delay
    (50 ms), instead of waiting for that company for ever. Bounds are generous: it must
    finish within seconds, in a batch of one, after waiting at least the delay."""
    max_delay_s = 0.05
    settings = make_settings(repo, batch_max_delay_ms=max_delay_s * 1000)
    with TestClient(create_app(settings)) as client:
        batcher = _batcher(client)
        held = _portal(client).call(batcher.reserve)
        try:
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(_post, client, encode(scene()))
                done, _ = wait([future], timeout=5.0)
                finished_while_held = bool(done)
                _portal(client).call(held.release)
                response = future.result(PATIENT_S)
        finally:
            _portal(client).call(held.release)
        batches = _sample(client, "vision_batch_size_count", **GRAPH)
        rows = _sample(client, "vision_batch_size_sum", **GRAPH)
        waited = _sample(client, "vision_batch_queue_duration_seconds_sum", **GRAPH)
    assert finished_while_held, "the request waited for a slot holder past max delay"
    assert response.status_code == 200
    assert (batches, rows) == (1, 1)
    # The deadline really was waited for (1 ms: timer granularity).
    assert waited >= max_delay_s - 0.001
