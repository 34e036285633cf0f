"""Held-out measures: pattern accuracy, IoU, occluded-vs-not, verification scores."""

from __future__ import annotations

import numpy as np
import pytest

from models.occlusion.evaluate import auc, best_threshold, blocks_of, pair_scores, pattern_metrics
from models.occlusion.patterns import pattern_id


def test_pattern_metrics_by_hand() -> None:
    one = pattern_id(5, (0, 1, 0, 1))  # one block
    two = pattern_id(5, (0, 1, 0, 2))  # two blocks, containing `one`
    true = np.array([0, one, one, two])
    pred = np.array([0, one, 0, one])
    m = pattern_metrics(pred, true, 5, 112, 96)
    assert m["pattern_exact"] == 0.5
    assert m["pattern_exact_occluded"] == pytest.approx(1 / 3)
    assert m["occluded_vs_not"] == 0.75
    assert m["clean_called_occluded"] == 0.0
    assert m["occluded_called_clean"] == pytest.approx(1 / 3)
    assert m["one_block_called_clean"] == 0.5
    # IoU over the occluded faces: 1 (exact), 0 (called clean), 0.5 (one of two blocks).
    assert m["mean_iou_occluded"] == pytest.approx(0.5)
    assert m["mean_iou_all"] == pytest.approx(2.5 / 4)
    assert blocks_of(5, two) == 2 and blocks_of(5, 0) == 0


def test_auc_and_threshold() -> None:
    same, diff = np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.75, 0.2])
    assert auc(same, diff) == pytest.approx(8 / 9)
    assert auc(np.array([0.5]), np.array([0.5])) == 0.5  # a tie counts half
    t = best_threshold(np.array([0.9, 0.8]), np.array([0.1, 0.2]))
    assert 0.2 < t <= 0.8


def test_pair_scores_split_same_and_different_faces() -> None:
    emb = np.eye(3, dtype=np.float32)[[0, 0, 1]]  # samples 0 and 1 are one face
    same, diff = pair_scores(emb, emb, np.array([7, 7, 9]))
    assert sorted(same.tolist()) == [1.0, 1.0]  # (0, 1) and (1, 0), never a sample with itself
    assert diff.tolist() == [0.0, 0.0, 0.0, 0.0]
