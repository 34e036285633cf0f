"""Losses of seed 003: class-balanced contour cross-entropy (HED/RCF) and softmax CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def balanced_bce(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """HED's class-balanced sigmoid cross-entropy, summed over pixels, mean over images.

    ``logits``/``target`` (N, 1, H, W), target 0/1; ``valid`` (N, 1, H, W) 0/1 marks the
    pixels that count (RCF ignores uncertain teacher pixels). Per image, edge pixels are
    weighted by the share of non-edge pixels and vice versa (edges are rare), as HED does;
    the sum is divided by the pixel count so the loss does not grow with the image.
    """
    valid = torch.ones_like(target) if valid is None else valid
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos = (target * valid).flatten(1).sum(1)
    neg = ((1 - target) * valid).flatten(1).sum(1)
    total = (pos + neg).clamp(min=1.0)
    w_pos = (neg / total)[:, None, None, None]
    w_neg = (pos / total)[:, None, None, None]
    weight = valid * (target * w_pos + (1 - target) * w_neg)
    # Normalised per image by its pixel count, then a mean over the batch.
    return ((weight * bce).flatten(1).sum(1) / total).mean()


def gender_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the female/male classifier."""
    return F.cross_entropy(logits, labels)
