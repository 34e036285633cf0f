"""benchmarks/jpeg_draft.py: both decode paths measured end to end on a few scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.jpeg_draft import SHARE_METRICS, main, pair
from models.landmark.evaluate import Detections


def test_main_reports_both_paths_on_the_requested_scenes(tmp_path: Path) -> None:
    returned = main(["--count", "6", "--out", str(tmp_path)])

    report = json.loads((tmp_path / "jpeg_draft.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["count"] == 6
    assert set(report["paths"]) == {"full", "draft"}
    assert report["paths"]["draft"]["draft"] is True
    assert report["paths"]["full"]["draft"] is False
    for path in report["paths"].values():
        assert path["images"] == 6
        assert path["metrics"]["labels"] == report["labels"] > 0
        for key in SHARE_METRICS:
            assert 0.0 <= path["metrics"][key] <= 1.0, key
        assert path["decode_letterbox_ms_median"] > 0
    agreement = report["agreement"]
    assert agreement["images"] == 6
    assert 0.0 <= agreement["identical_classes_share"] <= 1.0
    assert (tmp_path / "jpeg_draft.md").read_text().startswith("# JPEG draft decoding")


def test_pair_needs_the_same_class_within_the_radius_each_detection_once() -> None:
    a = Detections(
        np.array([1, 2, 1]), np.array([0.9, 0.8, 0.7]), np.array([[0, 0], [10, 10], [1, 0]], float)
    )
    b = Detections(np.array([1, 3]), np.array([0.9, 0.9]), np.array([[0.5, 0], [10, 10]], float))

    assert pair(a, b, radius=4.0) == [(0, 0, 0.5)]
