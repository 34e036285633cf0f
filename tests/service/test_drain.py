"""SIGTERM drains a real ``python -m service.serve`` process: the request in flight
finishes with its answer, new connections are refused, and the process exits within the
configured grace period (``GRACEFUL_SHUTDOWN_S``), also when a client never finishes.
The same process runs with ``VISION_LOG_FORMAT=json``: every line it writes is JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.fakes import write_model
from tests.service.images import encode, scene

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 3
START_TIMEOUT_S = 60.0
BOUNDARY = "drain-boundary"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    write_model(tmp_path / "repository")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VISION_")},
        "VISION_MODEL_REPOSITORY": str(tmp_path / "repository"),
        "VISION_FEEDBACK_DB": str(tmp_path / "feedback.sqlite3"),
        "VISION_PROVIDERS": "cpu",
        "VISION_INTRA_OP_THREADS": "1",
        "VISION_LOG_FORMAT": "json",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GRACEFUL_SHUTDOWN_S": str(GRACE_S),
    }
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.serve"], cwd=ROOT, env=env, stderr=sink
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, stderr.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield Served(process, port, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


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


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, rest


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(served: Served) -> None:
    body = multipart(encode(scene()))
    in_flight = start_request(served.port, body, len(body) // 2)
    time.sleep(0.3)  # the server has read the headers: the request is in flight
    terminated = time.monotonic()
    served.process.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + GRACE_S
    while not refused(served.port):
        assert time.monotonic() < deadline, "new connections still accepted while draining"
        time.sleep(0.05)

    in_flight.sendall(body[len(body) // 2 :])
    status, answer = read_response(in_flight)
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
    served: Served,
) -> None:
    body = multipart(encode(scene()))
    stalled = start_request(served.port, body, 10)  # the rest never comes
    time.sleep(0.3)
    terminated = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(timeout=GRACE_S + 10)
    elapsed = time.monotonic() - terminated
    stalled.close()
    assert elapsed < GRACE_S + 1.5, f"took {elapsed:.1f}s for a {GRACE_S}s grace period"
