"""Small convolutional building blocks shared by the model packages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """k x k convolution (no bias: BN follows), batch norm, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, k: int = 3):
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class Residual(nn.Module):
    """Two 3x3 convolutions with an identity shortcut."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = ConvBN(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))
