"""Seed 000 losses and seed 004 assignment on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from models.landmark.loss import LossConfig, Targets, assign, landmark_loss, similarity_matrix
from models.landmark.scenes import LABELS

STRIDE = 8
GRID = 4  # a 32x32 input: cell centres at 4, 12, 20, 28
CENTRES = (
    torch.stack(torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")[::-1], -1)
    .reshape(-1, 2)
    .float()
    * STRIDE
    + STRIDE / 2
)


def _assign(labels, ignore=None, conf=None, **config):
    conf = torch.zeros(1, GRID * GRID, 2) if conf is None else conf
    ignore = torch.zeros(0, 2) if ignore is None else ignore
    return assign([labels], [ignore], conf, CENTRES, STRIDE, LossConfig(**config))


def test_cell_centres_are_row_major():
    assert CENTRES[1].tolist() == [12.0, 4.0]
    assert CENTRES[GRID].tolist() == [4.0, 12.0]


def test_small_landmark_takes_only_its_own_cell_and_the_most_confident_anchor():
    conf = torch.zeros(1, GRID * GRID, 2)
    conf[0, 1, 1] = 3.0  # anchor 1 of cell 1 is the more confident one
    t = _assign(torch.tensor([[3.0, 12.0, 4.0, 12.0]]), conf=conf)
    assert t.positive.nonzero().tolist() == [[0, 1, 1]]
    assert t.classes[0, 1, 1] == 3 and t.classes[0, 1, 0] == len(LABELS)
    assert t.points[0, 1, 1].tolist() == [12.0, 4.0]
    # The other anchor of the landmark cell learns confidence 0 but is not background.
    assert t.conf_negative[0, 1, 0] and not t.background[0, 1, 0]
    assert t.background.sum() == (GRID * GRID - 1) * 2


def test_centre_sampling_is_scale_aware():
    # Width 48 -> radius clamp(48 / 4, 4, 12) = 12 px: the cells whose centres are at
    # 8 px (three) and 11.3 px (two) from the point join the containing cell.
    label = torch.tensor([[0.0, 12.0, 4.0, 48.0]])
    on = _assign(label)
    assert sorted(on.positive.any(-1)[0].nonzero().flatten().tolist()) == [0, 1, 2, 4, 5, 6]
    off = _assign(label, center_sampling=False)
    assert off.positive.any(-1)[0].nonzero().flatten().tolist() == [1]


def test_two_landmarks_in_one_cell_take_both_anchors_nearest_to_most_confident():
    conf = torch.zeros(1, GRID * GRID, 2)
    conf[0, 5, 0] = 2.0
    labels = torch.tensor([[1.0, 10.0, 10.0, 12.0], [2.0, 14.0, 14.0, 12.0]])
    t = _assign(labels, conf=conf, center_sampling=False)
    # Cell 5 (centre 12, 12): both at equal distance, the first in order gets anchor 0.
    assert t.positive[0, 5].tolist() == [True, True]
    assert sorted(t.classes[0, 5].tolist()) == [1, 2]


def test_mined_points_are_removed_from_background_only():
    t = _assign(torch.zeros(0, 4), ignore=torch.tensor([[28.0, 28.0]]))
    ignored = (~t.background[0, :, 0]).nonzero().flatten().tolist()
    # Cells within 1.5 cells (12 px) of (28, 28): centres (28,28), (20,28), (28,20), (20,20).
    assert sorted(ignored) == [10, 11, 14, 15]
    assert not t.positive.any()


def _outputs(cells: int = 2):
    logits = torch.zeros(1, cells, 1, len(LABELS) + 1, requires_grad=True)
    conf = torch.zeros(1, cells, 1, requires_grad=True)
    points = torch.full((1, cells, 1, 2), 10.0, requires_grad=True)
    return {"class_logits": logits, "confidence_logits": conf, "points": points}


def _targets():
    k = len(LABELS)
    positive = torch.tensor([[[True], [False]]])
    return Targets(
        positive=positive,
        background=~positive,
        conf_negative=~positive,
        classes=torch.tensor([[[0], [k]]]),
        points=torch.tensor([[[[14.0, 10.0]], [[0.0, 0.0]]]]),
    )


def test_hand_computed_losses_with_uniform_predictions():
    # All logits 0: every class has p = 1/9. Positive of class stop (0), one background.
    out = _outputs()
    terms = landmark_loss(out, _targets(), similarity_matrix(False), STRIDE, LossConfig())
    per_class_pos = math.log(9) + 8 * math.log(9 / 8)  # -log p_y + 8 x -log(1 - p_k)
    assert terms["class"].item() == pytest.approx(per_class_pos + math.log(9), rel=1e-5)
    assert terms["confidence"].item() == pytest.approx(2 * math.log(2), rel=1e-5)
    # Point off by 4 px = 0.5 cell in x: smooth-L1 (beta 0.1) = 0.5 - 0.05, weighted by p_y.
    assert terms["localization"].item() == pytest.approx(0.45 / 9, rel=1e-5)


def test_similarity_lowers_the_cost_of_confusing_alike_signs():
    out = _outputs()
    terms = landmark_loss(out, _targets(), similarity_matrix(True), STRIDE, LossConfig())
    # stop's row: no_entry costs 0.5, speed_limit 0.8, the other six columns 1.
    per_class_pos = math.log(9) + (8 - 0.5 - 0.2) * math.log(9 / 8)
    assert terms["class"].item() == pytest.approx(per_class_pos + math.log(9), rel=1e-5)


def test_similarity_matrix_shape_and_diagonal():
    s = similarity_matrix(True)
    assert s.shape == (len(LABELS), len(LABELS) + 1)
    assert torch.all(s[:, :-1].diagonal() == 1) and torch.all(s[:, -1] == 1)
    assert torch.equal(s[:, :-1], s[:, :-1].T) and s.min() >= 0 and s.max() <= 1
    assert torch.all(similarity_matrix(False) == 1)


def test_localization_weight_is_detached_and_switchable():
    out = _outputs()
    landmark_loss(out, _targets(), similarity_matrix(False), STRIDE, LossConfig())[
        "localization"
    ].backward()
    assert out["class_logits"].grad is None or torch.all(out["class_logits"].grad == 0)
    # The point is 4 px left of its target: descending the gradient moves it right.
    assert out["points"].grad[0, 0, 0, 0] < 0
    unweighted = landmark_loss(
        _outputs(),
        _targets(),
        similarity_matrix(False),
        STRIDE,
        LossConfig(class_weighted_localization=False),
    )
    assert unweighted["localization"].item() == pytest.approx(0.45, rel=1e-5)


def test_background_cells_never_enter_localization():
    out = _outputs()
    t = _targets()
    t.points[0, 1, 0] = torch.tensor([500.0, 500.0])  # absurd target on the background cell
    terms = landmark_loss(out, t, similarity_matrix(False), STRIDE, LossConfig())
    assert terms["localization"].item() == pytest.approx(0.45 / 9, rel=1e-5)
