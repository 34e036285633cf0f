"""benchmarks/gil_cost.py: the added work lands where each place says (the loop or the
decode pool's thread, holding the GIL or not), and a run has a row per place and amount."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gil_cost import PLACES, Added, SpinningPool, main, spin, with_loop_work
from service.workers import WorkerPool


def test_spin_runs_for_the_time_asked() -> None:
    started = time.perf_counter()
    spin(0.02)
    assert time.perf_counter() - started >= 0.02


def test_the_hash_work_is_sized_by_the_rate() -> None:
    added = Added(rate=1_000_000.0)  # a megabyte a second
    added.set(PLACES[1], 0.002)
    assert len(added._blob) == 2000
    added.set(None, 0.0)
    assert added._blob == b""


@pytest.mark.parametrize("place", [None, *PLACES])
def test_work_is_added_only_where_its_place_says(place: str | None) -> None:
    seen: list[str] = []

    class Recording(Added):
        def on_loop(self) -> None:
            if self.place in PLACES[:2]:
                seen.append(f"loop in {threading.current_thread().name}")

        def in_thread(self) -> None:
            if self.place == PLACES[2]:
                seen.append(f"thread in {threading.current_thread().name}")

    added = Recording(rate=1e9)
    added.set(place, 0.0001)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append("app")

    async def scenario() -> str:
        await with_loop_work(app, added)({"type": "http"}, None, None)
        pool = SpinningPool(WorkerPool(1, "decode"), added)
        try:
            return await pool.run(lambda: threading.current_thread().name)
        finally:
            pool.close()

    worker = asyncio.run(scenario())
    assert worker.startswith("decode")
    expected = {
        None: ["app"],
        PLACES[0]: [f"loop in {threading.current_thread().name}", "app"],
        PLACES[1]: [f"loop in {threading.current_thread().name}", "app"],
        PLACES[2]: ["app", f"thread in {worker}"],
    }
    assert seen == expected[place]


def test_a_run_has_a_row_per_place_and_amount(tmp_path: Path) -> None:
    report = main(
        [
            "--requests", "6",
            "--concurrency", "2",
            "--rounds", "2",
            "--added-ms", "0.1", "0.3",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    rows = report["rows"]
    assert [(row["place"], row["added_ms"]) for row in rows] == [("nothing added", 0.0)] + [
        (place, ms) for place in PLACES for ms in (0.1, 0.3)
    ]
    assert rows[0]["slope"] is None
    for row in rows:
        assert len(row["rounds_wall_ms"]) == 2
        assert all(wall > 0 for wall in row["rounds_wall_ms"])
        if row["added_ms"]:
            added = row["wall_ms"] - rows[0]["wall_ms"]
            assert row["slope"] == pytest.approx(added / row["added_ms"])
    middleware = report["middleware"]
    names = [row["app"] for row in middleware]
    assert names[0] == "as served" and names[-1] == "without any"
    # One row per layer the served app has, each left out once.
    assert len(names) == len(set(names)) > 4
    assert all(name.startswith("without ") and name.endswith("Middleware") for name in names[1:-1])
    assert middleware[0]["saved_us"] == 0
    for row in middleware:
        assert len(row["rounds_loop_cpu_ms"]) == 2
        assert row["loop_cpu_ms"] > 0
    written = json.loads((tmp_path / "gil_cost.json").read_text())
    assert (written["rows"], written["middleware"]) == (rows, middleware)
    table = [
        line for line in (tmp_path / "gil_cost.md").read_text().splitlines() if line[:2] == "| "
    ]
    assert len(table) == 2 + len(rows) + len(middleware)


def test_an_amount_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--added-ms", "0"])
    assert "--added-ms must be positive" in capsys.readouterr().err
