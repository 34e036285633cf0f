"""Server-Timing (service/timing.py): each answer says where its time went, stage by stage,
and the access line carries the same figures."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.logs import ACCESS_LOGGER
from service.main import create_app
from service.runtime import load_model
from service.settings import BatchPolicy
from service.timing import Timings, timings_var
from service.workers import WorkerPool
from tests.service.conftest import make_settings
from tests.service.images import encode, scene

ENTRY = re.compile(r'^(?P<name>[a-z-]+);dur=(?P<dur>[0-9.]+)(?:;desc="(?P<desc>[^"]*)")?$')


def parse(header: str) -> dict[str, tuple[float, str | None]]:
    """``Server-Timing`` as name -> (milliseconds, description); fails on a malformed entry."""
    entries = {}
    for part in header.split(", "):
        match = ENTRY.match(part)
        assert match, f"malformed Server-Timing entry {part!r} in {header!r}"
        entries[match["name"]] = (float(match["dur"]), match["desc"])
    return entries


def _post(client: TestClient) -> dict[str, tuple[float, str | None]]:
    image = encode(Image.fromarray(scene()), "PNG")
    response = client.post("/recognize", files={"image": ("a.png", image, "image/png")})
    assert response.status_code == 200, response.text
    return parse(response.headers["server-timing"])


def test_an_answer_says_where_its_time_went(client: TestClient) -> None:
    timing = _post(client)
    assert list(timing) == ["decode-wait", "decode", "queue", "infer", "app"]
    # One client: the request ran alone, its run slot free (an uncontended acquire).
    assert timing["queue"][0] < 1.0
    assert timing["infer"][1] == "batch of 1"
    assert all(ms > 0 for name, (ms, _) in timing.items() if name != "queue")
    # app spans the whole request, so it holds the stages inside it.
    assert timing["app"][0] >= sum(timing[s][0] for s in ("decode-wait", "decode", "infer"))


def test_the_access_line_carries_the_stages(repo: Path, json_log: io.StringIO) -> None:
    with TestClient(create_app(make_settings(repo))) as client:
        timing = _post(client)
    access = [
        line
        for line in map(json.loads, json_log.getvalue().splitlines())
        if line["logger"] == ACCESS_LOGGER and line["path"] == "/recognize"
    ]
    assert len(access) == 1
    for stage in ("decode-wait", "decode", "queue", "infer"):
        assert access[0][f"{stage.replace('-', '_')}_ms"] == round(timing[stage][0], 3)


def test_an_answer_from_a_middleware_carries_app_time_only(repo: Path) -> None:
    settings = make_settings(repo, max_upload_bytes=1000)
    with TestClient(create_app(settings)) as client:
        response = client.post("/recognize", files={"image": ("a.png", b"\0" * 5000, "image/png")})
    assert response.status_code == 413
    assert list(parse(response.headers["server-timing"])) == ["app"]


def test_server_timing_can_be_turned_off(repo: Path, json_log: io.StringIO) -> None:
    with TestClient(create_app(make_settings(repo, server_timing=False))) as client:
        image = encode(Image.fromarray(scene()), "PNG")
        response = client.post("/recognize", files={"image": ("a.png", image, "image/png")})
    assert response.status_code == 200
    assert "server-timing" not in response.headers
    access = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert not any("decode_ms" in line for line in access)


def test_batched_requests_report_their_queue_wait_and_batch(repo: Path) -> None:
    """Three requests submitted together run as one batch; each request's own Timings
    gets the batch's run time and rows, and how long it waited in the queue."""
    model = load_model("landmark", make_settings(repo))
    assert model.ready, model.error
    batcher = model.batcher()
    batcher.policy = BatchPolicy(max_size=8, max_delay_s=30.0, queue_size=16)
    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, 160, 160), dtype=np.float32) for _ in range(3)]

    async def one(image: np.ndarray, reservation: object) -> Timings:
        timings = Timings()
        timings_var.set(timings)  # this task's own context
        await batcher.infer({"image": image}, reservation=reservation)  # type: ignore[arg-type]
        return timings

    async def together() -> list[Timings]:
        # Every slot is taken before any request is queued, so the batch waits for all.
        reservations = [batcher.reserve() for _ in images]
        return await asyncio.gather(*(one(i, r) for i, r in zip(images, reservations, strict=True)))

    results = asyncio.run(together())
    assert [t.rows for t in results] == [3, 3, 3]
    runs = {t.stages_ms["infer"] for t in results}
    assert len(runs) == 1 and runs.pop() > 0  # one run, shared
    assert all(t.stages_ms["queue"] >= 0 for t in results)
    # The first queued waited for the other two to be queued; the last did not wait longer.
    assert results[0].stages_ms["queue"] >= results[2].stages_ms["queue"]


def test_a_lone_request_that_waits_for_a_run_slot_reports_the_wait(repo: Path) -> None:
    """alone() saw nothing running, but the worker held the only run slot (BATCH_PARALLEL
    1) while forming a batch: the lone request's wait for it is its queue time."""
    model = load_model("landmark", make_settings(repo, batch_parallel=1))
    assert model.ready, model.error
    batcher = model.batcher()
    image = np.random.default_rng(0).random((1, 3, 160, 160), dtype=np.float32)
    held_s = 0.2

    async def scenario() -> Timings:
        batcher._bind_loop()
        assert batcher._run_slots is not None
        await batcher._run_slots.acquire()  # as the worker does while it forms a batch
        timings = Timings()

        async def lone() -> None:
            timings_var.set(timings)
            with batcher.slot() as reservation:
                await batcher.run_alone(
                    lambda: ({"image": image}, None),
                    reservation=reservation,
                    pool=WorkerPool(1, "t"),
                )

        task = asyncio.create_task(lone())
        await asyncio.sleep(held_s)
        batcher._run_slots.release()
        await task
        return timings

    timings = asyncio.run(scenario())
    assert timings.stages_ms["queue"] >= 0.9 * held_s * 1000
    assert timings.rows == 1 and timings.stages_ms["infer"] > 0
