"""The slow-heads benchmark end to end at a token size: with the header timeout every idle
connection is closed without a word and every slow head gets 408, both at the timeout;
without it all of them are still open when the watch ends. Memory figures are read from
a full run, not asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import slow_heads

pytestmark = pytest.mark.slow


def test_idle_and_slow_heads_are_closed_at_the_timeout_and_held_without_it(
    tmp_path: Path,
) -> None:
    timeout_s = 1.5
    argv = ["--clients", "3", "--header-timeout", str(timeout_s), "--drip-interval", "0.25"]
    report = slow_heads.main([*argv, "--out", str(tmp_path)])
    timed, open_ = report["runs"]
    idle, slow = timed["connections"]["idle"], timed["connections"]["slow head"]
    assert (idle["closed_by_server"], idle["still_open"], idle["answers"]) == (3, 0, {"none": 3})
    assert (slow["closed_by_server"], slow["still_open"], slow["answers"]) == (3, 0, {"408": 3})
    for kind in (idle, slow):
        first, last = kind["closed_after_s"]
        assert timeout_s * 0.95 <= first <= last < timeout_s + slow_heads.GRACE_S
    # The benchmark's HTTP client's own keep-alive connection may time out idle too.
    assert timed["timed_out"]["headers"] == 3 and timed["timed_out"]["idle"] >= 3
    for kind in open_["connections"].values():
        assert (kind["closed_by_server"], kind["still_open"]) == (0, 3)
    assert open_["timed_out"] == {}
    for run in (timed, open_):
        assert run["during"]["upload"]["status"] == 200
        assert run["during"]["health_status"] == 200
        assert run["after"]["upload"]["status"] == 200
    assert len(report["protocol_overhead_us"]) == slow_heads.OVERHEAD_ROUNDS
    assert "| no header timeout |" in (tmp_path / "slow_heads.md").read_text()
