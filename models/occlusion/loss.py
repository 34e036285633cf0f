"""Loss = recognition error + lambda * pattern classification error (seed 001).

Recognition error: CosFace (FROM: s = 30, m = 0.35) over the training identities, plus, when
dlib's teacher embedding is there, a distillation term 1 - cos(student(occluded face),
teacher(clean face)) that pulls the occluded face's embedding to what the clean face should
give. Both terms and the pattern cross-entropy update the whole model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosFace(nn.Module):
    """Large-margin cosine loss: logits s * (cos(theta_j) - m [j = y])."""

    def __init__(self, dim: int, classes: int, s: float = 30.0, m: float = 0.35):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(embedding) @ F.normalize(self.weight).T  # (N, classes)
        margin = F.one_hot(target, cos.shape[1]).to(cos.dtype) * self.m
        return F.cross_entropy(self.s * (cos - margin), target)


def occlusion_loss(
    out: dict[str, torch.Tensor],
    pattern: torch.Tensor,
    identity: torch.Tensor,
    cosface: CosFace | None,
    teacher: torch.Tensor | None,
    pattern_weight: float = 1.0,
    distill_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Terms and ``total``; ``out`` from OcclusionNet, ``pattern``/``identity`` (N,) int64,
    ``teacher`` (N, D) clean-face embeddings or None."""
    zero = out["embedding"].new_zeros(())
    cls = cosface(out["embedding"], identity) if cosface is not None else zero
    distill = (
        (1 - F.cosine_similarity(out["embedding"], teacher, dim=1)).mean()
        if teacher is not None
        else zero
    )
    recognition = cls + distill_weight * distill
    pat = F.cross_entropy(out["pattern_logits"], pattern)
    return {
        "cosface": cls,
        "distill": distill,
        "recognition": recognition,
        "pattern": pat,
        "total": recognition + pattern_weight * pat,
    }
