"""Occlusion-robust face embedding with an occlusion-pattern head (seed 001, FROM-like).

    face (N, 3, 112, 96) -> backbone -> mid features (N, C3, 14, 12)
                                     -> feature map f (N, C4, 7, 6)
    mid features -> mask decoder (3x3 conv, stride-2 3x3 conv, sigmoid) -> mask M (N, C4, 7, 6)
    M -> 1x1 conv + flatten + linear -> pattern logits (N, P)   (P = 226 for a 5 x 5 grid)
    f * M (masking the corrupted features; ``masking=False`` uses f, the ablation)
          -> BN + dropout + flatten + linear + BN -> embedding (N, D)

The mask is what the pattern is predicted from, so the pattern loss shapes the mask: the
seed's "occlusion indication information" (features of the occluded area).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.common.checkpoint import read_checkpoint, rebuild
from models.common.checkpoint import save_checkpoint as save_checkpoint
from models.common.layers import ConvBN, Residual
from models.occlusion.patterns import pattern_count


@dataclass(frozen=True)
class OcclusionNetConfig:
    grid: int = 5  # K: the pattern grid over the face; P = (K(K+1)/2)^2 + 1 patterns
    height: int = 112  # input face height in pixels (aligned face)
    width: int = 96  # input face width in pixels
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)  # channels at strides 2, 4, 8, 16
    pattern_width: int = 16  # channels of the mask reduction before the pattern classifier
    embedding_dim: int = 128  # D; 128 like dlib's teacher embedding
    dropout: float = 0.2  # before the embedding layer
    masking: bool = True  # False: the ablation, features are not multiplied by the mask

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the feature map and the mask (stride 16, rounded up)."""
        return (-(-self.height // 16), -(-self.width // 16))

    @property
    def patterns(self) -> int:
        return pattern_count(self.grid)


class OcclusionNet(nn.Module):
    def __init__(self, config: OcclusionNetConfig | None = None):
        super().__init__()
        self.config = c = config or OcclusionNetConfig()
        w1, w2, w3, w4 = c.widths
        h, w = c.feature_size
        self.stem = nn.Sequential(ConvBN(3, w1, stride=2), ConvBN(w1, w2, stride=2))
        self.stage3 = nn.Sequential(ConvBN(w2, w3, stride=2), Residual(w3))
        self.stage4 = nn.Sequential(ConvBN(w3, w4, stride=2), Residual(w4))
        # FROM's mask decoder: convolutions down to the last feature map's size, sigmoid.
        self.mask_decoder = nn.Sequential(
            ConvBN(w3, w3),
            nn.Conv2d(w3, w4, 3, 2, 1),
        )
        self.pattern_head = nn.Sequential(
            nn.Conv2d(w4, c.pattern_width, 1, bias=False),
            nn.BatchNorm2d(c.pattern_width),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(c.pattern_width * h * w, c.patterns),
        )
        self.embedding_head = nn.Sequential(
            nn.BatchNorm2d(w4),
            nn.Dropout(c.dropout),
            nn.Flatten(),
            nn.Linear(w4 * h * w, c.embedding_dim),
            nn.BatchNorm1d(c.embedding_dim),
        )

    def forward(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        """``face`` (N, 3, H, W) normalised -> ``pattern_logits`` (N, P), ``embedding``
        (N, D) (not normalised), ``mask`` (N, C4, h, w) in 0..1, ``features`` (N, C4, h, w)."""
        mid = self.stage3(self.stem(face))  # (N, C3, H/8, W/8)
        features = self.stage4(mid)  # (N, C4, h, w)
        mask = torch.sigmoid(self.mask_decoder(mid))  # (N, C4, h, w)
        used = features * mask if self.config.masking else features
        return {
            "pattern_logits": self.pattern_head(mask),
            "embedding": self.embedding_head(used),
            "mask": mask,
            "features": features,
        }


class OcclusionExport(nn.Module):
    """The served graph: face -> pattern logits (N, P), L2-normalised embedding (N, D)."""

    def __init__(self, net: OcclusionNet):
        super().__init__()
        self.net = net

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(face)
        emb = out["embedding"]
        return out["pattern_logits"], emb / emb.norm(dim=1, keepdim=True).clamp(min=1e-6)


def load_checkpoint(path) -> tuple[OcclusionNet, dict]:
    """The network (eval mode) and the whole checkpoint dict."""
    ckpt = read_checkpoint(path)
    return rebuild(ckpt, OcclusionNet, OcclusionNetConfig), ckpt
