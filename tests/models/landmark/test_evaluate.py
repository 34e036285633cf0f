"""Decoding and metrics on hand-built outputs."""

from __future__ import annotations

import numpy as np
import pytest

from models.landmark.evaluate import decode, match, score_at_recall, summarize

K = 8


def _outputs(cells):
    """cells: {cell: (anchor, class, class_prob, confidence, (u, v))} for a 2-anchor grid."""
    probs = np.zeros((4, 2, K + 1), np.float32)
    probs[..., K] = 1.0
    conf = np.full((4, 2), 0.01, np.float32)
    points = np.zeros((4, 2, 2), np.float32)
    for cell, (anchor, cls, p, c, uv) in cells.items():
        probs[cell, anchor] = (1 - p) / K
        probs[cell, anchor, cls] = p
        conf[cell, anchor] = c
        points[cell, anchor] = uv
    return probs, conf, points


def test_best_anchor_threshold_and_nms():
    probs, conf, points = _outputs(
        {
            0: (1, 2, 0.9, 0.9, (10, 10)),
            1: (0, 2, 0.8, 0.8, (12, 11)),  # duplicate of the same landmark, 2.2 px away
            2: (0, 5, 0.9, 0.5, (40, 40)),
            3: (1, 3, 0.9, 0.04, (60, 60)),  # below the confidence threshold
        }
    )
    conf[0, 0] = 0.3  # the other anchor of cell 0 is less confident: not used
    probs[0, 0, 7] = 1.0
    det = decode(probs, conf, points, confidence_threshold=0.05, min_score=0.1, nms_radius=6)
    assert det.classes.tolist() == [2, 5]
    np.testing.assert_allclose(det.scores, [0.81, 0.45], rtol=1e-6)
    np.testing.assert_allclose(det.points, [[10, 10], [40, 40]])
    none = decode(probs, conf, points, confidence_threshold=0.05, min_score=0.9, nms_radius=6)
    assert len(none.scores) == 0


def test_match_and_summary():
    probs, conf, points = _outputs(
        {
            0: (0, 1, 1.0, 0.9, (10, 10)),
            1: (0, 4, 1.0, 0.6, (50, 50)),
            2: (0, 2, 1.0, 0.3, (90, 90)),
        }
    )
    det = decode(probs, conf, points, confidence_threshold=0.05, min_score=0.05, nms_radius=6)
    labels = np.array([[1, 13, 10, 20], [3, 50, 51, 20], [0, 200, 200, 20]], np.float32)
    m = match(det, labels)
    assert m.matched.tolist() == [True, True, False]
    assert m.correct.tolist() == [True, False, False]
    s = summarize([m], K, operating_score=0.5)
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(2 / 3)
    assert s["class_accuracy"] == 0.5 and s["mean_point_error_px"] == pytest.approx(2.0)
    assert s["recall_at_precision_95"] == pytest.approx(2 / 3)
    assert s["recall_by_class"]["0"] == 0.0 and s["recall_by_class"]["1"] == 1.0
    assert score_at_recall([m], 0.5) == pytest.approx(0.6, rel=1e-6)
