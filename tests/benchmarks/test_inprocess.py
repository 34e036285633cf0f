"""benchmarks/inprocess.py: requests reach the real application over ASGI, every endpoint
and level gets a row, and an answer other than 200 stops the measurement."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import pytest

from benchmarks import naive_app
from benchmarks.inprocess import NOMINAL_PORT, collections_timed, main, measure, split_request
from benchmarks.loadgen import multipart_request
from benchmarks.run import HOST


def test_a_request_splits_into_path_headers_and_body() -> None:
    raw = multipart_request(
        HOST, NOMINAL_PORT, "/upload", "image", "a.jpg", b"\xff\xd8xy", "image/jpeg"
    )
    path, headers, body = split_request(raw)
    assert path == "/upload"
    names = dict(headers)
    assert names[b"content-type"].startswith(b"multipart/form-data; boundary=")
    assert int(names[b"content-length"]) == len(body)
    assert b"\xff\xd8xy" in body


def test_an_answer_other_than_200_stops_the_measurement() -> None:
    raw = multipart_request(HOST, NOMINAL_PORT, "/nowhere", "image", "a.jpg", b"x", "image/jpeg")
    with pytest.raises(RuntimeError, match="404"):
        asyncio.run(measure(naive_app.app, raw, requests=2, concurrency=1))


def test_the_collections_inside_the_block_are_timed_and_counted() -> None:
    gc.collect()
    callbacks = list(gc.callbacks)
    with collections_timed() as collected:
        gc.collect(0)
        gc.collect(2)
    assert collected["count"] == 2
    assert collected["seconds"] > 0
    gc.collect()  # after the block: not counted, and the callback is gone
    assert collected["count"] == 2
    assert gc.callbacks == callbacks


def test_a_request_that_leaves_cycles_shows_collections_in_its_row() -> None:
    async def cyclic_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        for _ in range(2000):  # garbage only the cyclic collector frees
            node: list[Any] = []
            node.append(node)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    raw = multipart_request(HOST, NOMINAL_PORT, "/", "image", "a.jpg", b"x", "image/jpeg")
    row = asyncio.run(measure(cyclic_app, raw, requests=20, concurrency=2))
    # 40 000 cycles against a young-generation threshold of 700 allocations
    assert row["gc_collections"] >= 10
    assert row["gc_ms"] > 0


def test_a_row_per_endpoint_and_level_and_the_environment_put_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = dict(os.environ)
    rows = main(["--requests", "4", "--concurrency", "1", "2"])
    assert dict(os.environ) == before
    assert [(r["endpoint"].split(" ")[0], r["concurrency"]) for r in rows] == [
        ("service", 1),
        ("service", 2),
        ("floor:", 1),
        ("floor:", 2),
    ]
    for row in rows:
        assert row["requests"] == 4
        assert row["wall_ms"] > 0
        # The loop's thread is one of the process's threads and its clock's window lies
        # inside the process clock's (the margin is for float rounding only).
        assert 0 < row["loop_cpu_ms"] <= row["process_cpu_ms"] + 1e-9
        assert row["gc_ms"] >= 0 and row["gc_collections"] >= 0
    out = capsys.readouterr().out
    assert out.startswith("in-process pipeline, back to back: decode ")
    assert len([line for line in out.splitlines() if line.startswith("|")]) == 2 + len(rows)
