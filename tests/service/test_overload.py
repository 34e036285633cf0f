"""Overload over loopback against a real ``python -m service.serve`` (committed landmark
model, one ONNX thread, one decode thread, a small bounded queue):

1. capacity: closed loop at the queue's size, the throughput of 200s (req/s);
2. overload: open loop offering 2x that rate: every request is answered, accepted ones
   200, the rest 503 problem+json with ``Retry-After``, nothing else, no dropped connection;
3. recovery: right after, one client at a time gets 200s at close to the unloaded latency;
4. memory: the server's RSS after each 2.5 s phase of the overload: it rises to a
   high-water mark and then stays flat (checked in the long run).

Bounded in count and time (about 10 s by default). The longer run, whose figures the
README reports, is ``OVERLOAD_SECONDS=60 python -m pytest tests/service/test_overload.py -s
-p no:cacheprovider`` (prints one JSON line of figures).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.live_server import LiveProcess, live_process

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
OVERLOAD_SECONDS = float(os.environ.get("OVERLOAD_SECONDS", "2.5"))
QUEUE_SIZE = 8
# Recovery: the median latency of one client after the overload, against before it. The
# margin is for a machine whose other work (CI, training) comes and goes between the two.
RECOVERY_P50_FACTOR = 3.0
# Overload comes in phases of this length, RSS read after each.
PHASE_SECONDS = 2.5
# The closed-loop capacity is an estimate, low when the load generator (on the same cores)
# happens to lag: 2x a low estimate was once served in full, no 503 (2 runs in 9). A phase
# that saw no 503 yet is followed by one offering this much more, at most this many times.
ESCALATION = 1.5
MAX_ESCALATIONS = 3
# The rise to the high-water mark (measured ~120 MB over the first ~1000 requests of a
# 1024x768 JPEG here, then flat): a gross leak fails the short default run...
MAX_RSS_RISE_MB = 192.0
# ...and in the long run (6+ phases), the second half must stay flat: a leak of even 10 kB
# per request would add more than this over its thousands of requests.
MAX_RSS_GROWTH_MB = 32.0


@dataclass
class Outcome:
    """Answers of a load phase: statuses, latencies (s) and what each 503 said."""

    seconds: float
    latencies: dict[int, list[float]] = field(default_factory=dict)
    retry_after: list[int] = field(default_factory=list)
    problem_types: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def add(self, response: httpx.Response, latency: float) -> None:
        self.latencies.setdefault(response.status_code, []).append(latency)
        if response.status_code == 503:
            self.retry_after.append(int(response.headers.get("retry-after", "0")))
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                self.problem_types.add(response.json()["type"])

    def count(self, status: int) -> int:
        return len(self.latencies.get(status, []))

    def rate(self, status: int = 200) -> float:
        return self.count(status) / self.seconds

    def p(self, q: float, status: int = 200) -> float:
        values = self.latencies.get(status, [])
        return float(np.percentile(values, q)) * 1000 if values else float("nan")


def photo() -> bytes:
    """A 1024x768 JPEG: decoding and resizing it is most of a request's server work."""
    ys, xs = np.mgrid[0:768, 0:1024]
    rgb = np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def post(client: httpx.AsyncClient, outcome: Outcome, image: bytes, started: float) -> None:
    try:
        response = await client.post(
            "/recognize", files={"image": ("photo.jpg", image, "image/jpeg")}
        )
    except httpx.HTTPError as exc:
        outcome.errors.append(f"{type(exc).__name__}: {exc}")
        return
    outcome.add(response, time.perf_counter() - started)


def _client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0)


async def closed_loop(url: str, image: bytes, clients: int, seconds: float) -> Outcome:
    """``clients`` back-to-back senders for ``seconds``."""
    outcome = Outcome(seconds)
    async with _client(url) as client:
        stop = time.perf_counter() + seconds

        async def sender() -> None:
            while (started := time.perf_counter()) < stop:
                await post(client, outcome, image, started)

        await asyncio.gather(*(sender() for _ in range(clients)))
    return outcome


async def open_loop(
    url: str, image: bytes, rate: float, seconds: float, outcome: Outcome | None = None
) -> Outcome:
    """Requests started every 1/rate s whatever the server does; latency from the
    scheduled start, so a slow server cannot slow the offered load down. Answers are
    added to ``outcome`` when given (phases of one run)."""
    outcome = outcome or Outcome(0.0)
    outcome.seconds += seconds
    async with _client(url) as client:
        begin = time.perf_counter()
        tasks = []
        for index in range(int(rate * seconds)):
            scheduled = begin + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.create_task(post(client, outcome, image, scheduled)))
        await asyncio.gather(*tasks)
    return outcome


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProcess]:
    tmp = tmp_path_factory.mktemp("overload")
    env = {
        "VISION_MODEL_REPOSITORY": str(REPOSITORY),
        "VISION_MODELS": '["landmark"]',
        "VISION_FEEDBACK_DB": str(tmp / "feedback.sqlite3"),
        "VISION_PROVIDERS": "cpu",
        "VISION_INTRA_OP_THREADS": "1",
        "VISION_DECODE_THREADS": "1",
        "VISION_BATCH_QUEUE_SIZE": str(QUEUE_SIZE),
        "VISION_LOG_LEVEL": "WARNING",
    }
    with live_process(env, tmp / "stderr.log") as process:
        yield process


def test_twice_the_capacity_is_answered_and_recovers_at_once(server: LiveProcess) -> None:
    image = photo()
    asyncio.run(closed_loop(server.url, image, 2, 1.0))  # warm-up: pools, caches, arenas
    unloaded = asyncio.run(closed_loop(server.url, image, 1, 1.5))
    capacity = asyncio.run(closed_loop(server.url, image, QUEUE_SIZE, 2.0))
    assert capacity.count(200) > 0 and not capacity.errors
    offered = [2 * capacity.rate()]
    overload = Outcome(0.0)
    rss = [rss_mb(server.process.pid)]
    phases = max(1, round(OVERLOAD_SECONDS / PHASE_SECONDS))
    while True:
        asyncio.run(open_loop(server.url, image, offered[-1], PHASE_SECONDS, overload))
        rss.append(rss_mb(server.process.pid))
        if len(offered) >= phases and (
            overload.count(503) > 0 or len(offered) >= phases + MAX_ESCALATIONS
        ):
            break
        offered.append(offered[-1] * (ESCALATION if overload.count(503) == 0 else 1.0))
    recovery = asyncio.run(closed_loop(server.url, image, 1, 1.5))

    figures = {
        "capacity_rps": round(capacity.rate(), 1),
        "offered_rps": [round(rate, 1) for rate in offered],  # one per phase
        "overload_seconds": OVERLOAD_SECONDS,
        "sent": sum(len(v) for v in overload.latencies.values()) + len(overload.errors),
        "ok_200": overload.count(200),
        "rejected_503": overload.count(503),
        "other_status": {k: len(v) for k, v in overload.latencies.items() if k not in (200, 503)},
        "transport_errors": len(overload.errors),
        "accepted_rps": round(overload.rate(), 1),
        "unloaded_p50_ms": round(unloaded.p(50), 1),
        "overload_p99_200_ms": round(overload.p(99), 1),
        "overload_p99_503_ms": round(overload.p(99, 503), 1),
        "recovery_p50_ms": round(recovery.p(50), 1),
        "rss_mb_after_each_phase": [round(value, 1) for value in rss],
    }
    print("\noverload figures:", json.dumps(figures))

    # Every request answered: no dropped connections, no status but 200 and 503.
    assert not overload.errors, overload.errors[:3]
    assert set(overload.latencies) <= {200, 503}, figures
    # The bounded queue sheds the excess; the accepted keep flowing near capacity.
    assert overload.count(503) > 0 and overload.count(200) > 0, figures
    assert overload.rate() >= 0.5 * capacity.rate(), figures
    assert overload.retry_after and min(overload.retry_after) >= 1
    assert overload.problem_types == {"urn:vision-service:problem:overloaded"}
    # Load gone, service back: every request succeeds at about the unloaded latency.
    assert set(recovery.latencies) == {200} and not recovery.errors
    assert recovery.p(50) <= RECOVERY_P50_FACTOR * unloaded.p(50) + 5.0, figures
    # Memory: the first phases take the process to its high-water mark (buffers of many
    # concurrent uploads, one malloc arena per thread); after that it must stay flat.
    assert rss[-1] - rss[0] <= MAX_RSS_RISE_MB, figures
    if len(rss) >= 6:
        settled = rss[len(rss) // 2 :]
        assert max(settled) - settled[0] <= MAX_RSS_GROWTH_MB, figures
