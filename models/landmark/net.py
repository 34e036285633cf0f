"""Grid landmark network (seed 000): per cell and anchor node, class, confidence and point.

The image is divided into ``rows x cols`` cells of ``stride`` pixels. Each cell has
``anchors`` anchor nodes; each node predicts class logits (landmark classes + background),
a confidence logit, and the reference point as an offset from the cell centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.common.checkpoint import read_checkpoint, rebuild
from models.common.checkpoint import save_checkpoint as save_checkpoint
from models.common.layers import ConvBN, Residual


@dataclass(frozen=True)
class LandmarkNetConfig:
    num_classes: int = 8  # landmark classes; background is one more logit
    anchors: int = 2  # anchor nodes per cell: two landmarks may share a cell
    input_size: int = 160  # square input side in pixels; a multiple of stride
    widths: tuple[int, int, int, int] = (24, 32, 64, 96)  # channels at strides 2, 4, 8, 16
    head_width: int = 64  # channels of the stride-8 fused map the head reads
    # Centre sampling makes cells up to 1.5 cells away positives, so the point offset
    # must reach past that; 2 cells from the cell centre covers it with margin.
    offset_range: float = 2.0

    @property
    def stride(self) -> int:
        return 8

    @property
    def grid(self) -> int:
        return self.input_size // self.stride


class Stage(nn.Sequential):
    """Downsample by 2, then one residual block."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(ConvBN(c_in, c_out, stride=2), Residual(c_out))


class LandmarkNet(nn.Module):
    def __init__(self, config: LandmarkNetConfig):
        super().__init__()
        self.config = config
        w2, w4, w8, w16 = config.widths
        self.stem = ConvBN(3, w2, stride=2)  # stride 2
        self.stage4 = Stage(w2, w4)  # stride 4
        self.stage8 = Stage(w4, w8)  # stride 8
        self.stage16 = Stage(w8, w16)  # stride 16: context for large landmarks
        self.lateral = nn.Conv2d(w16, w8, 1)
        self.fuse = nn.Sequential(ConvBN(w8, config.head_width), Residual(config.head_width))
        k = config.num_classes + 1
        self.outputs_per_anchor = k + 1 + 2  # class logits, confidence, (dx, dy)
        self.head = nn.Conv2d(config.head_width, config.anchors * self.outputs_per_anchor, 1)
        g = config.grid
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        # Cell centres in input pixels, row-major like the flattened cells: (C, 1, 2)
        centres = (torch.stack([xs, ys], -1).reshape(-1, 1, 2).float() + 0.5) * config.stride
        self.register_buffer("centres", centres, persistent=False)
        # Start confident about background: most cells are background, so a neutral start
        # wastes the first epochs unlearning false positives (as RetinaNet's prior).
        with torch.no_grad():
            bias = self.head.bias.view(config.anchors, self.outputs_per_anchor)
            bias.zero_()
            bias[:, config.num_classes] = 2.0
            bias[:, k] = -4.0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, S, S) normalised RGB. Returns raw outputs per cell and anchor:

        ``class_logits`` (N, C, A, K+1), ``confidence_logits`` (N, C, A),
        ``points`` (N, C, A, 2) in input pixels, with C = grid * grid cells, row-major.
        """
        s4 = self.stage4(self.stem(x))  # (N, w4, S/4, S/4)
        s8 = self.stage8(s4)  # (N, w8, S/8, S/8)
        s16 = self.stage16(s8)  # (N, w16, S/16, S/16)
        up = F.interpolate(self.lateral(s16), size=s8.shape[-2:], mode="nearest")
        feat = self.fuse(s8 + up)  # (N, head, S/8, S/8)
        out = self.head(feat)  # (N, A*P, g, g)
        n, _, g, _ = out.shape
        out = out.view(n, self.config.anchors, self.outputs_per_anchor, g * g)
        out = out.permute(0, 3, 1, 2)  # (N, C, A, P)
        k = self.config.num_classes + 1
        offsets = torch.tanh(out[..., k + 1 :]) * self.config.offset_range * self.config.stride
        return {
            "class_logits": out[..., :k],
            "confidence_logits": out[..., k],
            "points": self.centres + offsets,
        }


class LandmarkExport(nn.Module):
    """The exported graph: probabilities instead of logits, as config.json describes."""

    def __init__(self, net: LandmarkNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(image)
        return (
            out["class_logits"].softmax(-1),  # (N, C, A, K+1)
            out["confidence_logits"].sigmoid(),  # (N, C, A)
            out["points"],  # (N, C, A, 2)
        )


def load_checkpoint(path) -> tuple[LandmarkNet, dict]:
    """The network (eval mode) and the whole checkpoint dict."""
    ckpt = read_checkpoint(path)
    return rebuild(ckpt, LandmarkNet, LandmarkNetConfig), ckpt
