"""benchmarks/bombs.py: every crafted file is one Pillow decodes whole, and one the service
refuses with a 413 before decoding."""

from __future__ import annotations

import pytest

from benchmarks.bombs import CASES, main


def test_every_crafted_file_decodes_in_pillow_and_is_refused_by_the_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = main(["--small"])
    assert len(rows) == len(CASES)
    for row in rows:
        assert row["pillow_s"] > 0  # measure() loaded it: Pillow alone would decode it
        assert row["service_status"] == 413, row
        assert row["detail"]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)
