"""A real uvicorn server on a free loopback port, in a thread, for clients that need a socket
(tritonclient, the Python client's sync and async halves); or the container's entry
command, ``python -m service.serve``, as a process of its own (signals, load, logs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

ROOT = Path(__file__).resolve().parents[1]

# Starting means loading and warming tiny fake models: well under a second, even on a
# machine busy with training; the margin is for that machine.
START_TIMEOUT_S = 30.0


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` (lifespan included) on 127.0.0.1; yields the base URL."""
    with uvicorn_thread(app) as (port, _):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def uvicorn_thread(app: ASGIApp, **options: Any) -> Iterator[tuple[int, uvicorn.Server]]:
    """Serve ``app`` on 127.0.0.1 in a thread, with these ``uvicorn.Config`` options (an
    ``http`` protocol, a ``loop``) over quiet defaults; yields the port and the server."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it Nagle + delayed ACKs add ~40 ms to every small binary V2 response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    defaults: dict[str, Any] = {"log_level": "warning", "lifespan": "on", "access_log": False}
    server = uvicorn.Server(uvicorn.Config(app, **(defaults | options)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield port, server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class LiveProcess:
    """A running ``python -m service.serve``; its stderr goes to the file ``stderr``."""

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


@contextmanager
def live_process(env: Mapping[str, str], stderr: Path) -> Iterator[LiveProcess]:
    """Start the entry command on a free loopback port with ``env`` (over this environment,
    less any VISION_* of the developer's) and wait until /health/ready answers 200; the
    process is killed on exit if it is still running."""
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VISION_")},
        "HOST": "127.0.0.1",
        "PORT": str(port),
        **env,
    }
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.serve"], cwd=ROOT, env=full_env, stderr=sink
        )
    try:
        deadline = time.monotonic() + 2 * START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {stderr.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.1)
        yield LiveProcess(process, port, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
