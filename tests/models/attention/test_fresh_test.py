"""models/attention/fresh_test.py: a second placement of the same test items, paired by item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.attention import export
from models.attention.fresh_test import main, wilson_interval
from models.attention.train import TrainConfig

REPOSITORY = Path(__file__).resolve().parents[3] / "models" / "repository"


def test_wilson_interval_matches_a_worked_value() -> None:
    # 50 of 100: the textbook 95 % Wilson interval is 0.4038-0.5962.
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.40383, abs=1e-4) and high == pytest.approx(0.59617, abs=1e-4)
    low, high = wilson_interval(100, 100)  # never past 1, never a zero width
    assert high == pytest.approx(1.0) and 0.95 < low < 1.0


def test_a_fresh_placement_moves_the_items_but_keeps_their_order() -> None:
    config = TrainConfig()
    original, _ = export.test_split(config, pairs=0, single=50)
    fresh, _ = export.test_split(config, pairs=0, single=50, seed=5)
    np.testing.assert_array_equal(original.labels[:, 0], fresh.labels[:, 0])
    assert not np.array_equal(original.images, fresh.images)
    assert not np.array_equal(original.boxes, fresh.boxes)
    again, _ = export.test_split(config, pairs=0, single=50)  # the export's placement is fixed
    np.testing.assert_array_equal(original.images, again.images)


def test_the_report_is_consistent_and_the_exports_seed_is_refused() -> None:
    with pytest.raises(SystemExit, match="not a fresh one"):
        main(["--version", "6", "--seed", "1000", "--repository", str(REPOSITORY)])
    report = main(
        ["--version", "6", "--seed", "5", "--count", "200", "--repository", str(REPOSITORY)]
    )
    original, fresh = report["placements"]["original"], report["placements"]["fresh"]
    paired = report["paired_by_item"]
    assert report["test_items"] == 200
    # Discordant pairs are exactly what separates the two correct counts.
    assert original["correct"] - fresh["correct"] == (
        paired["only_original_right"] - paired["only_fresh_right"]
    )
    for row in (original, fresh):
        assert row["perception_accuracy"] == row["correct"] / 200
        assert row["wilson_95"][0] < row["perception_accuracy"] < row["wilson_95"][1]
