"""Held-out measures: pattern accuracy, IoU, occluded-vs-not, verification scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.occlusion.data import Batch
from models.occlusion.evaluate import (
    auc,
    best_threshold,
    blocks_of,
    evaluate,
    pair_scores,
    pattern_metrics,
)
from models.occlusion.patterns import NO_OCCLUSION, pattern_id


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


def test_two_photos_of_one_person_are_a_same_pair() -> None:
    """A perfect verifier on two people with two photos each scores AUC 1: pairs are made
    by identity, not by face-bank row (it scored 0.83 when two photos were "different")."""
    identity = torch.tensor([0, 0, 1, 1])
    images = torch.zeros(4, 3, 112, 96)
    images[:, 0, 0, 0] = identity.float()  # the "photo" carries its person for predict()
    data = Batch(
        occluded=images,
        clean=images,
        pattern=torch.tensor([NO_OCCLUSION, pattern_id(5, (0, 1, 0, 1))] * 2),
        identity=identity,
        teacher=None,
        face=torch.arange(4),  # four different photos
    )

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        person = x[:, 0, 0, 0].astype(int)
        logits = np.zeros((len(x), 3), np.float32)
        logits[:, NO_OCCLUSION] = 1
        return logits, np.eye(2, dtype=np.float32)[person]

    m = evaluate(predict, data, grid=5)
    assert m["verify_auc"] == 1.0 and m["verify_balanced_accuracy"] == 1.0
    assert m["different_mean_cos"] == 0.0 and m["identities"] == 2
