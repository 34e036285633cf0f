"""benchmarks/wrk.py drives the real wrk binary: the upload reaches the server as sent, and
wrk's counts and percentiles come back. No timing is asserted."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from benchmarks import run, wrk
from benchmarks.loadgen import multipart_body

pytestmark = pytest.mark.slow

# Seconds per wrk run: its shortest.
SECONDS = 1


@pytest.fixture(scope="module")
def upload_url() -> Iterator[str]:
    """The naive peer's upload-only route: 200 for a multipart upload with an ``image``
    file, 422 for anything else."""
    if not wrk.available():
        pytest.skip("wrk is not installed (apt-get install wrk)")
    command = [sys.executable, "-m", "uvicorn", "benchmarks.naive_app:app", "--host", run.HOST]
    command += ["--port", "{port}", "--log-level", "warning", "--no-access-log"]
    with run.server(command, {}, "/openapi.json") as (port, _):
        yield f"http://{run.HOST}:{port}/upload"


def test_a_well_formed_upload_is_answered_200_every_time(upload_url: str) -> None:
    content_type, body = multipart_body("image", "photo.jpg", b"\xff" * 5000, "image/jpeg")
    row = wrk.closed_loop(upload_url, content_type, body, concurrency=2, duration_s=SECONDS)
    assert row["answers"] > 0 and row["status_400_up"] == 0 and row["errors"] == 0, row
    assert row["ok"] == row["answers"], row
    # The Lua hook's fields land in the right keys: percentiles in order, in ms.
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] < 1000 * SECONDS, row
    # Throughput is the 200s over wrk's own measured wall time (a busy machine stretches it
    # past SECONDS, so the ratio is checked against wrk's figure, not the nominal one).
    assert 0.9 * SECONDS <= row["seconds"] < SECONDS + 10, row
    assert row["throughput_rps"] == pytest.approx(row["ok"] / row["seconds"]), row


def test_refused_answers_count_against_throughput(upload_url: str) -> None:
    """The same body under a Content-Type that is not multipart: every answer a 422."""
    _, body = multipart_body("image", "photo.jpg", b"\xff" * 5000, "image/jpeg")
    row = wrk.closed_loop(upload_url, "text/plain", body, concurrency=1, duration_s=SECONDS)
    assert row["answers"] > 0 and row["status_400_up"] == row["answers"], row
    assert row["ok"] == 0 and row["throughput_rps"] == 0.0, row


@pytest.mark.parametrize(("asked", "run_for"), [(0.4, 1), (1.0, 1), (2.5, 3), (5.0, 5)])
def test_wrk_runs_whole_seconds_at_least_as_long_as_asked(asked: float, run_for: int) -> None:
    assert wrk.whole_seconds(asked) == run_for


def test_a_server_that_is_not_there_is_an_error_not_a_result() -> None:
    if not wrk.available():
        pytest.skip("wrk is not installed (apt-get install wrk)")
    url = f"http://{run.HOST}:{run.free_port()}/upload"
    with pytest.raises(RuntimeError, match="unable to connect"):
        wrk.closed_loop(url, "text/plain", b"x", concurrency=1, duration_s=SECONDS)
