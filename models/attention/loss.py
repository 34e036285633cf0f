"""Losses of seed 002: L = Latt + Lper for training; + gamma * ||M' - M||^2 for fine-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def abn_loss(out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Softmax cross-entropy of both heads (equal weights) and their sum ``total``."""
    att = F.cross_entropy(out["attention_logits"], labels)
    per = F.cross_entropy(out["perception_logits"], labels)
    return {"attention": att, "perception": per, "total": att + per}


def map_loss(
    attention_map: torch.Tensor, teacher: torch.Tensor, has_teacher: torch.Tensor | None = None
) -> torch.Tensor:
    """``||M' - M||^2``: squared L2 distance over the map's cells, mean over the batch (over
    the samples that have a teacher map, when ``has_teacher`` marks them)."""
    per_sample = (teacher - attention_map).pow(2).flatten(1).sum(dim=1)
    if has_teacher is None:
        return per_sample.mean()
    weight = has_teacher.to(per_sample.dtype)
    return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)


def finetune_loss(
    out: dict[str, torch.Tensor],
    labels: torch.Tensor,
    teacher: torch.Tensor,
    gamma: float,
    has_teacher: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``Latt + Lper + gamma * ||M' - M||^2`` (the second embodiment)."""
    terms = abn_loss(out, labels)
    terms["map"] = map_loss(out["attention_map"], teacher, has_teacher)
    terms["total"] = terms["total"] + gamma * terms["map"]
    return terms
