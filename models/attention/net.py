"""Attention Branch Network (seed 002) with an attention map that can be replaced.

    image -> feature extractor -> feature map f (K x h x w)
          -> attention branch: conv block -> 1x1 conv to C (classes) -> BN -> ReLU
                 (a) 1x1 conv C -> C + global average pooling = attention-branch logits
                 (b) 1x1 conv C -> 1 -> BN -> sigmoid = attention map M (1 x h x w, 0..1)
          -> synthesis: f * M (the seed's pixel-wise product, every channel)
             or (1 + M) * f (ABN's residual form), chosen by ``synthesis``
          -> perception branch: residual stage + GAP + FC = perception logits

``forward(image, attention=M')`` replaces M by an edited map (the first embodiment); the
two halves are exported separately (``FeaturesExport`` and ``PerceptionExport``) so that
the service applies an edited map without re-running the feature extractor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.common.checkpoint import read_checkpoint, rebuild
from models.common.checkpoint import save_checkpoint as save_checkpoint
from models.common.layers import ConvBN, Residual

SYNTHESES = ("multiply", "residual")


@dataclass(frozen=True)
class AttentionNetConfig:
    num_classes: int = 10
    input_size: int = 64  # square canvas side in pixels; a multiple of the stride
    stem_width: int = 24  # channels at stride 2
    feature_width: int = 64  # K: channels of the feature map at stride 4
    perception_width: int = 128  # channels of the perception branch at stride 8
    feature_blocks: int = 1  # residual blocks at stride 4 in the feature extractor
    perception_blocks: int = 1  # residual blocks in the perception branch
    synthesis: str = "multiply"  # "multiply": f * M (seed 002); "residual": (1 + M) * f

    @property
    def stride(self) -> int:
        return 4

    @property
    def map_size(self) -> int:
        return self.input_size // self.stride


class AttentionNet(nn.Module):
    def __init__(self, config: AttentionNetConfig | None = None):
        super().__init__()
        self.config = config = config or AttentionNetConfig()
        if config.synthesis not in SYNTHESES:
            raise ValueError(f"synthesis must be one of {SYNTHESES}, not {config.synthesis!r}")
        s, k, p, c = (
            config.stem_width,
            config.feature_width,
            config.perception_width,
            config.num_classes,
        )
        self.features = nn.Sequential(
            ConvBN(3, s, stride=2),
            Residual(s),
            ConvBN(s, k, stride=2),
            *(Residual(k) for _ in range(config.feature_blocks)),
        )
        # Attention branch: a stride-1 conv block, then K -> C (ABN: 1x1 conv, BN, ReLU).
        self.attention_block = nn.Sequential(
            Residual(k),
            nn.Conv2d(k, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        )
        self.attention_head = nn.Conv2d(c, c, 1)  # + GAP = attention-branch logits
        self.map_head = nn.Sequential(nn.Conv2d(c, 1, 1, bias=False), nn.BatchNorm2d(1))
        self.perception = nn.Sequential(
            ConvBN(k, p, stride=2), *(Residual(p) for _ in range(config.perception_blocks))
        )
        self.classifier = nn.Linear(p, c)

    def extract(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature map, attention map (N, 1, h, w) in 0..1, attention-branch logits."""
        features = self.features(image)
        a = self.attention_block(features)
        return {
            "features": features,
            "attention_map": torch.sigmoid(self.map_head(a)),
            "attention_logits": self.attention_head(a).mean(dim=(2, 3)),
        }

    def perceive(self, features: torch.Tensor, attention_map: torch.Tensor) -> torch.Tensor:
        """Perception logits from a feature map and any (N, 1, h, w) map in 0..1."""
        if self.config.synthesis == "multiply":
            synthesized = features * attention_map
        else:
            synthesized = features * (1.0 + attention_map)
        return self.classifier(self.perception(synthesized).mean(dim=(2, 3)))

    def forward(
        self, image: torch.Tensor, attention: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """All outputs; ``attention`` (N, 1, h, w) replaces the model's own map when given."""
        out = self.extract(image)
        used = out["attention_map"] if attention is None else attention
        out["perception_logits"] = self.perceive(out["features"], used)
        return out


class FeaturesExport(nn.Module):
    """Graph 1: image -> feature_map, attention_map, attention_probs."""

    def __init__(self, net: AttentionNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net.extract(image)
        return out["features"], out["attention_map"], out["attention_logits"].softmax(-1)


class PerceptionExport(nn.Module):
    """Graph 2: feature_map + attention_map -> perception_probs."""

    def __init__(self, net: AttentionNet):
        super().__init__()
        self.net = net

    def forward(self, feature_map: torch.Tensor, attention_map: torch.Tensor) -> torch.Tensor:
        return self.net.perceive(feature_map, attention_map).softmax(-1)


def grow_from(net: AttentionNet, smaller: AttentionNet) -> list[str]:
    """Copy ``smaller``'s weights into ``net``, which has the same widths but more residual
    blocks; each extra block starts as the identity (its last batch norm's scale and shift
    are zero, so ``relu(x + 0) = x`` on the non-negative input), so ``net`` starts out
    computing exactly what ``smaller`` does. Returns the names of the new parameters."""
    a, b = asdict(net.config), asdict(smaller.config)
    for key in ("feature_blocks", "perception_blocks"):
        if a.pop(key) < b.pop(key):
            raise ValueError(f"cannot grow to fewer {key}")
    if a != b:
        raise ValueError(f"only the block counts may differ: {a} vs {b}")
    missing, unexpected = net.load_state_dict(smaller.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"unexpected weights: {unexpected}")
    for name, module in net.named_modules():
        if isinstance(module, Residual) and any(m.startswith(name + ".") for m in missing):
            bn = module.conv2[1]
            nn.init.zeros_(bn.weight)
            nn.init.zeros_(bn.bias)
    return list(missing)


def load_checkpoint(path) -> tuple[AttentionNet, dict]:
    """The network (eval mode) and the whole checkpoint dict."""
    ckpt = read_checkpoint(path)
    return rebuild(ckpt, AttentionNet, AttentionNetConfig), ckpt
