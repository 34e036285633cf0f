"""Images into the tensors the exported graphs take."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.common.backgrounds import IMAGENET_MEAN, IMAGENET_STD


def to_tensor(
    images: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 RGB -> float32 ``(N, 3, H, W)``, ``(x / 255 - mean) / std``:
    the normalisation the export writes into config.json's ``preprocess``."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean_ = torch.tensor(mean).view(1, 3, 1, 1)
    std_ = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - mean_) / std_).contiguous()
