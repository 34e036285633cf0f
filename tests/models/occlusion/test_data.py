"""Occluders and batches: sprites fill their box, placement covers the pattern's blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.occlusion.data import SynthConfig, Synthesizer, fixed_set, to_uint8
from models.occlusion.faces import FaceBank
from models.occlusion.occluders import KINDS, SPRITE, sprite_bank
from models.occlusion.patterns import NO_OCCLUSION, pattern_box, pattern_count

H, W = 112, 96


def grey_faces(n: int = 4) -> FaceBank:
    images = np.full((n, H, W, 3), 128, np.uint8)
    return FaceBank(
        images,
        np.arange(n, dtype=np.int64),
        np.ones((n, 128), np.float32),
        tuple(f"grey{i}" for i in range(n)),
        np.zeros(n, bool),
    )


def red_sprites(n: int = 3) -> np.ndarray:
    sprites = np.zeros((n, SPRITE, SPRITE, 4), np.uint8)
    sprites[..., 0] = 255
    sprites[..., 3] = 255
    return sprites


def still(jitter: float) -> SynthConfig:
    """No face augmentation: the face stays grey, so red pixels are the occluder."""
    return SynthConfig(
        jitter=jitter, max_rotation=0.0, max_shift=0.0, scale_range=(1.0, 1.0), grey_fraction=0.0
    )


def occluder_pixels(x: torch.Tensor, normalised: bool = True) -> np.ndarray:
    """(N, H, W) bool: where the red occluder is (the face is grey); ``x`` is a normalised
    batch, or 0..1 pixels (``normalised=False``)."""
    if normalised:
        rgb = to_uint8(x).astype(int)
    else:
        rgb = (x.clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy().astype(int)
    return (rgb[..., 0] - rgb[..., 1]) > 100


def test_sprite_bank_kinds_and_alpha_touches_every_edge() -> None:
    sprites, kinds = sprite_bank("train", 2 * len(KINDS))
    assert sprites.shape == (2 * len(KINDS), SPRITE, SPRITE, 4) and sprites.dtype == np.uint8
    assert set(kinds.tolist()) == set(range(len(KINDS)))
    alpha = sprites[..., 3] > 64
    for edge in (alpha[:, 0, :], alpha[:, -1, :], alpha[:, :, 0], alpha[:, :, -1]):
        assert edge.any(axis=1).all()


def test_splits_draw_different_occluders() -> None:
    train, _ = sprite_bank("train", 16)
    test, _ = sprite_bank("test", 16)
    assert not np.array_equal(train, test)
    assert np.array_equal(test, sprite_bank("test", 16)[0])  # reproducible


def test_placement_without_jitter_covers_exactly_the_blocks() -> None:
    synth = Synthesizer(grey_faces(), red_sprites(), still(0.0))
    g = torch.Generator().manual_seed(0)
    patterns = torch.arange(1, pattern_count(5))
    x = synth.place(torch.full((len(patterns), 3, H, W), 0.5), patterns, g)
    covered = occluder_pixels(x, normalised=False)
    for mask, pid in zip(covered, patterns.tolist(), strict=True):
        x0, y0, x1, y1 = pattern_box(5, pid, H, W)  # type: ignore[misc]
        want = np.zeros((H, W), bool)
        want[round(y0) : round(y1), round(x0) : round(x1)] = True
        # Bilinear edges: at most the pixel row/column straddling each edge may differ.
        differ = mask ^ want
        assert differ.sum() <= 2 * (H + W), pid
        inner = np.zeros((H, W), bool)
        inner[round(y0) + 1 : round(y1) - 1, round(x0) + 1 : round(x1) - 1] = True
        assert mask[inner].all()
        outer = np.ones((H, W), bool)
        outer[max(0, round(y0) - 1) : round(y1) + 1, max(0, round(x0) - 1) : round(x1) + 1] = False
        assert not mask[outer].any()


def test_jitter_keeps_the_occluder_near_its_blocks_and_clean_faces_clean() -> None:
    jitter = 0.15
    synth = Synthesizer(grey_faces(), red_sprites(), still(jitter))
    g = torch.Generator().manual_seed(1)
    batch = synth.batch(96, g)
    covered = occluder_pixels(batch.occluded)
    margin_y, margin_x = jitter * H / 5 + 1, jitter * W / 5 + 1
    assert (batch.pattern == NO_OCCLUSION).any() and (batch.pattern != NO_OCCLUSION).any()
    for mask, pid in zip(covered, batch.pattern.tolist(), strict=True):
        if pid == NO_OCCLUSION:
            assert not mask.any()
            continue
        x0, y0, x1, y1 = pattern_box(5, pid, H, W)  # type: ignore[misc]
        ys, xs = np.nonzero(mask)
        assert ys.min() >= y0 - margin_y and ys.max() < y1 + margin_y
        assert xs.min() >= x0 - margin_x and xs.max() < x1 + margin_x
        core = mask[
            int(y0 + margin_y) : int(y1 - margin_y), int(x0 + margin_x) : int(x1 - margin_x)
        ]
        assert core.all()


def test_clean_fraction_and_fixed_set_reproducible() -> None:
    synth = Synthesizer(grey_faces(), red_sprites(), SynthConfig())
    batch = synth.batch(300, torch.Generator().manual_seed(2))
    assert (batch.pattern == NO_OCCLUSION).float().mean().item() == pytest.approx(1 / 3, abs=0.08)
    assert batch.occluded.shape == batch.clean.shape == (300, 3, H, W)
    a, b = fixed_set(synth, 3, seed=5), fixed_set(synth, 3, seed=5)
    assert torch.equal(a.occluded, b.occluded) and torch.equal(a.pattern, b.pattern)
    assert sorted(a.face.tolist()) == sorted(list(range(4)) * 3)
