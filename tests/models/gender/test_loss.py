from __future__ import annotations

import math

import torch

from models.gender.loss import balanced_bce, gender_loss


def _target() -> torch.Tensor:
    target = torch.zeros(1, 1, 10, 10)
    target[..., 4, :] = 1.0  # one edge row: 10 % edge pixels
    return target


def test_edges_and_non_edges_weigh_the_same_in_total() -> None:
    target = _target()
    # Logit 0 everywhere: every pixel costs log 2; balanced, both classes contribute half.
    # Edges (10 %) weigh 0.9 each, non-edges (90 %) 0.1 each: 18 log 2 over 100 pixels.
    loss = balanced_bce(torch.zeros_like(target), target)
    torch.testing.assert_close(loss, torch.tensor(0.18 * math.log(2.0)))
    # Missing every edge costs as much as a false alarm everywhere else.
    missed = balanced_bce(torch.where(target > 0, -5.0, -5.0), target)
    alarms = balanced_bce(torch.where(target > 0, 5.0, 5.0), target)
    torch.testing.assert_close(missed, alarms, rtol=1e-4, atol=1e-4)


def test_perfect_prediction_costs_little_and_ignored_pixels_nothing() -> None:
    target = _target()
    perfect = torch.where(target > 0, 8.0, -8.0)
    assert float(balanced_bce(perfect, target)) < 1e-3
    wrong_below = perfect.clone()
    wrong_below[..., 7:, :] = 8.0  # false alarms in rows 7-9
    valid = torch.ones_like(target)
    valid[..., 7:, :] = 0.0  # ... which are ignored
    assert float(balanced_bce(wrong_below, target, valid)) < 1e-3
    assert float(balanced_bce(wrong_below, target)) > 0.1


def test_gender_loss_is_softmax_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    expected = -(logits.log_softmax(-1)[[0, 1], [0, 1]]).mean()
    torch.testing.assert_close(gender_loss(logits, labels), expected)
