"""The overload-against-queue benchmark end to end at a token load: each queue size gets its
own server, every level is answered, and the ratios are those of the rows. No latency is
asserted (figures come from a full run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import overload_queue

pytestmark = pytest.mark.slow


def test_each_queue_size_is_measured_and_reported(tmp_path: Path) -> None:
    argv = ["--queue-sizes", "4", "1", "--duration", "0.5", "--warmup", "0.2"]
    report = overload_queue.main([*argv, "--out", str(tmp_path)])
    assert [run["queue_size"] for run in report["runs"]] == [4, 1]
    for run in report["runs"]:
        over = run["overload"]
        assert run["base"]["throughput_rps"] > 0 and over["ok"] > 0
        assert over["offered_rps"] == pytest.approx(2 * run["base"]["throughput_rps"])
        assert run["overload_p99_vs_one_client"] == pytest.approx(
            over["p99_ms"] / run["one_client"]["p99_ms"]
        )
        assert run["overload_p99_vs_base"] == pytest.approx(over["p99_ms"] / run["base"]["p99_ms"])
    markdown = (tmp_path / "overload_queue.md").read_text()
    assert markdown.count("\n| 4 |") == 1 and markdown.count("\n| 1 |") == 1
    assert report["command"].startswith("python -m benchmarks.overload_queue")
