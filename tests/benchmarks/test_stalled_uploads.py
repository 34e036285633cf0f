"""The stalled-upload benchmark end to end at a token size: with the gate the stalled
connections past its count are refused and the rest time out, without it all of them
time out, and a fresh upload is refused only while the gate is full. Memory figures are
read from a full run, not asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import stalled_uploads
from service.limits import BODY_OVERHEAD_BYTES

pytestmark = pytest.mark.slow


def test_the_gate_refuses_past_its_count_and_every_stalled_body_times_out(
    tmp_path: Path,
) -> None:
    # Room for two stalled uploads, not three (nor two and a fresh 640x480 upload).
    reserved = stalled_uploads.declared_length(20_000) + BODY_OVERHEAD_BYTES
    budget = 2 * reserved + 1000
    argv = ["--clients", "4", "--bytes", "20000", "--max-body-bytes-in-flight", str(budget)]
    # The timeout leaves room for the memory to settle (0.5 s or more) and the checks
    # between the stall and the first 408.
    timeout_s = 5.0
    argv += ["--body-timeout", str(timeout_s), "--out", str(tmp_path)]
    report = stalled_uploads.main(argv)
    gated, open_ = report["runs"]
    assert gated["max_body_bytes_in_flight"] == budget
    # Past the gate: refused, the body drained until it stalled, then closed with the 503.
    assert gated["answers"] == {"408": 2, "503": 2}
    assert open_["answers"] == {"408": 4}
    # The gauge counts what the gate holds and what it is draining alike.
    assert gated["during"]["in_flight"] == open_["during"]["in_flight"] == 4
    assert gated["during"]["body_bytes_in_flight"] == 2 * reserved
    assert open_["during"]["body_bytes_in_flight"] == 4 * reserved
    assert gated["refused"] == {"full": 3, "stalled": 2}  # the fresh upload was refused too
    assert open_["refused"] == {"stalled": 4}
    assert gated["during"]["upload"]["status"] == 503
    assert open_["during"]["upload"]["status"] == 200
    for run in (gated, open_):
        assert run["during"]["health_status"] == 200
        assert run["after"]["upload"]["status"] == 200
        # Each answer came a body timeout after that client's last byte, none before.
        first, last = run["answer_after_s"]
        assert timeout_s * 0.95 <= first <= last < timeout_s + 5
    # The gate's own cost: one positive figure per round (time spent, not asserted).
    assert len(report["gate_overhead_us"]) == stalled_uploads.OVERHEAD_ROUNDS
    assert all(value > 0 for value in report["gate_overhead_us"])
    text = (tmp_path / "stalled_uploads.md").read_text()
    assert "2 x 408, 2 x 503" in text and "4 x 408" in text
    assert (tmp_path / "stalled_uploads.json").is_file()
