"""Occluded-face batches: augmented real faces with synthetic occluders on whole-block
rectangles of the K x K grid (batched in torch, generated fresh every step).

A third of the faces stay clean (FROM); the rest get a pattern drawn uniformly from the
225 rectangles, and an occluder sprite stretched over that rectangle with each edge moved
by up to ``jitter`` of a block, so the pattern with the highest IoU is still the label.
Every sample also comes clean (same augmentation, no occluder) for the embedding metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.occlusion.faces import FaceBank
from models.occlusion.patterns import NO_OCCLUSION, pattern_table

MEAN = (0.5, 0.5, 0.5)  # faces are normalised to [-1, 1], as face-recognition nets usually are
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SynthConfig:
    grid: int = 5  # K: the face is a K x K grid of blocks
    clean_fraction: float = 1 / 3  # share of faces left unoccluded (FROM: about a third)
    jitter: float = 0.15  # occluder edges move up to this fraction of a block
    max_rotation: float = 8.0  # degrees of face augmentation
    max_shift: float = 4.0  # pixels
    scale_range: tuple[float, float] = (0.93, 1.07)
    grey_fraction: float = 0.3  # colour faces turned grey (most built-in faces are grey)


@dataclass
class Batch:
    """``occluded`` / ``clean`` (N, 3, H, W) normalised float32; ``pattern`` (N,) int64;
    ``identity`` (N,) int64 (row of the face bank's identities); ``teacher`` (N, 128) or None;
    ``face`` (N,) index into the face bank."""

    occluded: torch.Tensor
    clean: torch.Tensor
    pattern: torch.Tensor
    identity: torch.Tensor
    teacher: torch.Tensor | None
    face: torch.Tensor


def normalise(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in 0..1 -> the model's input normalisation."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Synthesizer:
    """Draws batches from one split's faces and occluder sprites."""

    def __init__(self, faces: FaceBank, sprites: np.ndarray, config: SynthConfig | None = None):
        self.config = config or SynthConfig()
        self.faces = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 255.0
        self.identities = torch.from_numpy(faces.identities)
        self.teacher = None if faces.teacher is None else torch.from_numpy(faces.teacher)
        self.sprites = torch.from_numpy(sprites).permute(0, 3, 1, 2).float() / 255.0
        table = pattern_table(self.config.grid)
        # (P, 4) row_start, row_end, col_start, col_end; the clean pattern's row is unused.
        self.blocks = torch.tensor([b if b is not None else (0, 0, 0, 0) for b in table])

    @property
    def height(self) -> int:
        return self.faces.shape[2]

    @property
    def width(self) -> int:
        return self.faces.shape[3]

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random similarity warp, horizontal flip and photometric jitter, (N, 3, H, W)."""
        c, n = self.config, x.shape[0]
        u = lambda: torch.rand(n, generator=g)  # noqa: E731
        angle = (u() * 2 - 1) * math.radians(c.max_rotation)
        scale = c.scale_range[0] + u() * (c.scale_range[1] - c.scale_range[0])
        flip = torch.where(u() < 0.5, -1.0, 1.0)
        tx = (u() * 2 - 1) * c.max_shift * 2 / self.width
        ty = (u() * 2 - 1) * c.max_shift * 2 / self.height
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        aspect = self.height / self.width
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin * aspect, tx], 1),
                torch.stack([sin / aspect * flip, cos, ty], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        grey = x.mean(1, keepdim=True).expand_as(x)
        x = torch.where((u() < c.grey_fraction)[:, None, None, None], grey, x)
        contrast = (0.7 + 0.6 * u())[:, None, None, None]
        bright = ((u() - 0.5) * 0.3)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + bright
        x = x + torch.randn(x.shape, generator=g) * 0.02 * u()[:, None, None, None]
        return x.clamp(0, 1)

    def occluder_boxes(self, pattern: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """(N, 4) ``x0, y0, x1, y1`` pixels: the pattern's blocks with jittered edges."""
        k, h, w = self.config.grid, self.height, self.width
        b = self.blocks[pattern].float()
        bh, bw = h / k, w / k
        jit = (torch.rand(len(pattern), 4, generator=g) * 2 - 1) * self.config.jitter
        y0 = b[:, 0] * bh + jit[:, 0] * bh
        y1 = b[:, 1] * bh + jit[:, 1] * bh
        x0 = b[:, 2] * bw + jit[:, 2] * bw
        x1 = b[:, 3] * bw + jit[:, 3] * bw
        return torch.stack([x0, y0, x1, y1], 1)

    def place(self, x: torch.Tensor, pattern: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Composite one random sprite over each occluded sample's jittered pattern box."""
        n, h, w = x.shape[0], self.height, self.width
        occluded = pattern != NO_OCCLUSION
        if not occluded.any():
            return x
        box = self.occluder_boxes(pattern, g)
        bw = (box[:, 2] - box[:, 0]).clamp(min=1.0)
        bh = (box[:, 3] - box[:, 1]).clamp(min=1.0)
        cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        zero = torch.zeros(n)
        # Output pixel (normalised xn) -> sprite coordinate u = (x_pix - cx) / (bw / 2).
        theta = torch.stack(
            [
                torch.stack([w / bw * flip, zero, (w - 2 * cx) / bw * flip], 1),
                torch.stack([zero, h / bh, (h - 2 * cy) / bh], 1),
            ],
            1,
        )
        idx = torch.randint(len(self.sprites), (n,), generator=g)
        sprite = self.sprites[idx]
        tint = (0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)).expand(n, 3, 1, 1)
        sprite = torch.cat([(sprite[:, :3] * tint).clamp(0, 1), sprite[:, 3:]], 1)
        grid = F.affine_grid(theta, [n, 4, h, w], align_corners=False)
        layer = F.grid_sample(
            sprite, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        alpha = layer[:, 3:] * occluded[:, None, None, None].float()
        return x * (1 - alpha) + layer[:, :3] * alpha

    def batch(self, size: int, g: torch.Generator, faces: torch.Tensor | None = None) -> Batch:
        """One batch; ``faces`` (N,) picks the faces, else they are drawn at random."""
        if faces is None:
            faces = torch.randint(len(self.faces), (size,), generator=g)
        n = len(faces)
        clean = self._augment(self.faces[faces], g)
        count = len(self.blocks)
        pattern = torch.randint(1, count, (n,), generator=g)
        keep_clean = torch.rand(n, generator=g) < self.config.clean_fraction
        pattern = torch.where(keep_clean, torch.full_like(pattern, NO_OCCLUSION), pattern)
        occluded = self.place(clean, pattern, g)
        return Batch(
            occluded=normalise(occluded),
            clean=normalise(clean),
            pattern=pattern,
            identity=self.identities[faces],
            teacher=None if self.teacher is None else self.teacher[faces],
            face=faces,
        )


def fixed_set(synth: Synthesizer, per_face: int, seed: int, batch: int = 256) -> Batch:
    """A reproducible evaluation set: ``per_face`` samples of every face of the split."""
    g = torch.Generator().manual_seed(seed)
    faces = torch.arange(len(synth.faces)).repeat(per_face)
    parts = [synth.batch(0, g, faces[i : i + batch]) for i in range(0, len(faces), batch)]
    return Batch(
        occluded=torch.cat([p.occluded for p in parts]),
        clean=torch.cat([p.clean for p in parts]),
        pattern=torch.cat([p.pattern for p in parts]),
        identity=torch.cat([p.identity for p in parts]),
        teacher=None if parts[0].teacher is None else torch.cat([p.teacher for p in parts]),  # type: ignore[misc]
        face=torch.cat([p.face for p in parts]),
    )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalised (N, 3, H, W) -> (N, H, W, 3) uint8 RGB, for plots and ONNX-side checks."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    y = (x * std + mean).clamp(0, 1) * 255
    return y.round().byte().permute(0, 2, 3, 1).numpy()
