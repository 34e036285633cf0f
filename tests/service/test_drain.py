"""SIGTERM drains a real ``python -m service.serve`` process: the request in flight
finishes with its answer, new connections are refused, and the process exits within the
configured grace period (``GRACEFUL_SHUTDOWN_S``), also when a client never finishes.
The same process runs with ``VISION_LOG_FORMAT=json``: every line it writes is JSON."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live_server import LiveProcess, live_process
from tests.service.fakes import process_env
from tests.service.images import encode, scene
from tests.service.test_api_metrics import samples
from tests.service.test_protocol import read_responses

GRACE_S = 3
BOUNDARY = "drain-boundary"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[LiveProcess]:
    env = process_env(tmp_path, VISION_LOG_FORMAT="json", GRACEFUL_SHUTDOWN_S=str(GRACE_S))
    with live_process(env, tmp_path / "stderr.log") as process:
        yield process


def multipart(image: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def start_request(port: int, body: bytes, sent: int) -> socket.socket:
    """A POST /recognize whose headers and first ``sent`` body bytes are on the wire."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: in-flight-1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:sent])
    return sock


def wait_in_flight(served: LiveProcess) -> None:
    """Until the server counts one request in flight: its headers are in and the app has
    it (uvicorn's shutdown would close a connection whose request had not started)."""
    deadline = time.monotonic() + 10
    while True:
        metrics = samples(httpx.get(f"{served.url}/metrics").text)
        if metrics[("vision_http_requests_in_flight", ())] >= 1:
            return
        assert time.monotonic() < deadline, "the request never reached the app"
        time.sleep(0.02)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(served: LiveProcess) -> None:
    body = multipart(encode(scene()))
    in_flight = start_request(served.port, body, len(body) // 2)
    wait_in_flight(served)
    terminated = time.monotonic()
    served.process.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + GRACE_S
    while not refused(served.port):
        assert time.monotonic() < deadline, "new connections still accepted while draining"
        time.sleep(0.05)

    in_flight.sendall(body[len(body) // 2 :])
    ((status, answer),) = read_responses(in_flight, 1)
    in_flight.close()
    assert status == 200 and json.loads(answer)["model"]["name"] == "landmark"

    # uvicorn re-raises the signal once drained, so a clean drain ends "killed by SIGTERM".
    assert served.process.wait(timeout=GRACE_S + 5) in (0, -signal.SIGTERM)
    assert time.monotonic() - terminated < GRACE_S + 1.0

    lines = [line for line in served.stderr.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is a JSON record
    access = [r for r in records if r.get("request_id") == "in-flight-1"]
    assert [(r["path"], r["status"]) for r in access] == [("/recognize", 200)]


def test_sigterm_exits_within_the_grace_period_when_a_client_never_finishes(
    served: LiveProcess,
) -> None:
    body = multipart(encode(scene()))
    stalled = start_request(served.port, body, 10)  # the rest never comes
    wait_in_flight(served)
    terminated = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(timeout=GRACE_S + 10)
    elapsed = time.monotonic() - terminated
    stalled.close()
    assert elapsed < GRACE_S + 1.5, f"took {elapsed:.1f}s for a {GRACE_S}s grace period"
