from __future__ import annotations

import math

import pytest
import torch

from models.attention.loss import abn_loss, finetune_loss, map_loss


def _out(att: list[float], per: list[float], amap: torch.Tensor | None = None) -> dict:
    out = {"attention_logits": torch.tensor([att]), "perception_logits": torch.tensor([per])}
    if amap is not None:
        out["attention_map"] = amap
    return out


def test_abn_loss_is_the_sum_of_both_cross_entropies() -> None:
    # Uniform logits over 2 classes: each cross-entropy is log 2.
    terms = abn_loss(_out([0.0, 0.0], [5.0, -5.0]), torch.tensor([0]))
    assert terms["attention"].item() == pytest.approx(math.log(2))
    assert terms["perception"].item() == pytest.approx(math.log(1 + math.exp(-10)), abs=1e-6)
    assert terms["total"].item() == pytest.approx(
        terms["attention"].item() + terms["perception"].item()
    )


def test_map_loss_is_the_squared_l2_distance_per_map_averaged_over_the_batch() -> None:
    m = torch.zeros(2, 1, 4, 4)
    teacher = torch.zeros(2, 1, 4, 4)
    teacher[0, 0, :2, :2] = 1.0  # 4 cells off by 1 -> 4
    teacher[1, 0, 0, 0] = 0.5  # one cell off by 0.5 -> 0.25
    assert map_loss(m, teacher).item() == pytest.approx((4 + 0.25) / 2)
    assert map_loss(teacher, teacher).item() == 0.0


def test_finetune_loss_adds_gamma_times_the_map_term() -> None:
    amap = torch.zeros(1, 1, 2, 2)
    teacher = torch.ones(1, 1, 2, 2)
    out = _out([0.0, 0.0], [0.0, 0.0], amap)
    terms = finetune_loss(out, torch.tensor([1]), teacher, gamma=0.25)
    assert terms["map"].item() == pytest.approx(4.0)
    assert terms["total"].item() == pytest.approx(2 * math.log(2) + 0.25 * 4.0)


def test_map_loss_counts_only_samples_with_a_teacher() -> None:
    m = torch.zeros(2, 1, 2, 2)
    teacher = torch.ones(2, 1, 2, 2)
    has = torch.tensor([True, False])
    assert map_loss(m, teacher, has).item() == pytest.approx(4.0)
    assert map_loss(m, teacher, torch.tensor([False, False])).item() == 0.0
