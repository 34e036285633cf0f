"""Synthetic occluders with exact extents: RGBA sprites whose alpha fills their bounding box.

Eight kinds, drawn procedurally: sunglasses, mouth masks, scarves, hands, textured
rectangles (book covers, phones), ellipses (cups), random blobs and noise patches. Their
textures are crops of the real photographs in ``models.common.backgrounds``, whose split
the occluders inherit, so the test split's occluders use photographs and random draws that
training never saw. Every sprite is cropped to the bounding box of its alpha and resized
to ``SPRITE`` x ``SPRITE``, so stretched over a box it covers exactly that box.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.common.backgrounds import backgrounds

SPRITE = 64  # sprite side in pixels (RGBA)
KINDS = (
    "sunglasses",
    "mouth_mask",
    "scarf",
    "hand",
    "textured_rect",
    "ellipse",
    "blob",
    "noise",
)
# Skin tones (RGB) for hands, from light to dark.
SKIN = ((241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 56, 30))


def _texture(rng: np.random.Generator, photos: tuple[np.ndarray, ...], size: int) -> Image.Image:
    """A random crop of one photograph, resized to size x size."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(24, max(25, min(h, w) // 2)))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    return crop.resize((size, size), Image.Resampling.BILINEAR)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    c = rng.integers(0, 256, 3)
    return int(c[0]), int(c[1]), int(c[2])


def _draw(kind: str, rng: np.random.Generator, photos: tuple[np.ndarray, ...]) -> Image.Image:
    """One RGBA occluder on a 2*SPRITE canvas (cropped to its alpha afterwards)."""
    n = 2 * SPRITE
    rgb = Image.new("RGB", (n, n), _colour(rng))
    alpha = Image.new("L", (n, n), 0)
    draw_a, draw_c = ImageDraw.Draw(alpha), ImageDraw.Draw(rgb)
    if kind == "sunglasses":
        lens = tuple(int(v) for v in rng.integers(0, 60, 3))
        rgb = Image.new("RGB", (n, n), lens)
        draw_c = ImageDraw.Draw(rgb)
        gap = int(rng.integers(4, 20))
        w = (n - gap) // 2
        for x0 in (0, n - w):
            box = (x0, 0, x0 + w, n - 1)
            if rng.random() < 0.5:
                draw_a.ellipse(box, fill=255)
            else:
                draw_a.rounded_rectangle(box, radius=int(rng.integers(4, 30)), fill=255)
        draw_a.rectangle((w - 2, n // 4, n - w + 2, n // 4 + int(rng.integers(3, 10))), fill=255)
        # A highlight on each lens: real sunglasses reflect.
        for x0 in (0, n - w):
            draw_c.ellipse(
                (x0 + w // 5, n // 6, x0 + w // 2, n // 3), fill=tuple(v + 60 for v in lens)
            )
    elif kind == "mouth_mask":
        base = ((220, 230, 240), (120, 170, 220), (30, 30, 30), (240, 240, 240))[rng.integers(4)]
        rgb = Image.new("RGB", (n, n), base)
        draw_c = ImageDraw.Draw(rgb)
        draw_a.rounded_rectangle((0, 0, n - 1, n - 1), radius=int(rng.integers(10, 50)), fill=255)
        for i in range(1, 4):  # pleats
            y = i * n // 4
            draw_c.line(
                (0, y, n, y + int(rng.integers(-6, 7))),
                fill=tuple(max(0, v - 40) for v in base),
                width=2,
            )
    elif kind == "scarf":
        a, b = _colour(rng), _colour(rng)
        period = int(rng.integers(6, 24))
        for y in range(0, n, period):
            if rng.random() < 0.6:
                draw_c.rectangle((0, y, n, y + period // 2), fill=a)
            else:
                draw_c.rectangle((0, y, n, y + period // 2), fill=b)
        if rng.random() < 0.5:
            for x in range(0, n, period):
                draw_c.line((x, 0, x, n), fill=b, width=2)
        top = [(x, int(rng.integers(0, 12))) for x in range(0, n + 1, 16)]
        draw_a.polygon([*top, (n, n), (0, n)], fill=255)
    elif kind == "hand":
        tone = np.array(SKIN[rng.integers(len(SKIN))]) + rng.integers(-15, 16, 3)
        colour = tuple(int(v) for v in np.clip(tone, 0, 255))
        rgb = Image.new("RGB", (n, n), colour)
        draw_c = ImageDraw.Draw(rgb)
        palm_top = int(n * rng.uniform(0.35, 0.5))
        draw_a.rounded_rectangle((8, palm_top, n - 8, n - 1), radius=20, fill=255)
        fw = (n - 16) // 4
        for i in range(4):
            top = int(rng.integers(0, palm_top // 2))
            x0 = 8 + i * fw
            draw_a.rounded_rectangle(
                (x0 + 1, top, x0 + fw - 2, palm_top + 10), radius=fw // 2, fill=255
            )
            draw_c.line(
                (x0 + fw - 2, top + 10, x0 + fw - 2, palm_top),
                fill=tuple(max(0, v - 50) for v in colour),
                width=1,
            )
        draw_a.ellipse((0, palm_top + 10, 30, n - 20), fill=255)  # thumb
    elif kind == "textured_rect":
        rgb = _texture(rng, photos, n)
        draw_a.rectangle((0, 0, n - 1, n - 1), fill=255)
    elif kind == "ellipse":
        rgb = _texture(rng, photos, n) if rng.random() < 0.5 else rgb
        draw_a.ellipse((0, 0, n - 1, n - 1), fill=255)
    elif kind == "blob":
        rgb = _texture(rng, photos, n) if rng.random() < 0.7 else rgb
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 12))))
        radii = rng.uniform(0.5, 1.0, len(angles)) * n / 2
        pts = [
            (n / 2 + r * np.cos(t), n / 2 + r * np.sin(t))
            for r, t in zip(radii, angles, strict=True)
        ]
        draw_a.polygon(pts, fill=255)
    elif kind == "noise":
        cells = int(rng.integers(2, 16))
        small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        rgb = Image.fromarray(small).resize((n, n), Image.Resampling.BICUBIC)
        draw_a.rectangle((0, 0, n - 1, n - 1), fill=255)
    else:
        raise ValueError(f"unknown occluder kind {kind!r}")
    # Soft shading so that flat occluders are not one colour.
    shade = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.15), n)[:, None, None]
    out = np.clip(np.asarray(rgb, np.float32) * shade, 0, 255).astype(np.uint8)
    rgba = Image.fromarray(out).convert("RGBA")
    rgba.putalpha(alpha.filter(ImageFilter.GaussianBlur(0.6)))
    return rgba


def make_sprite(kind: str, rng: np.random.Generator, photos: tuple[np.ndarray, ...]) -> np.ndarray:
    """(SPRITE, SPRITE, 4) uint8 RGBA whose alpha touches all four edges."""
    rgba = _draw(kind, rng, photos)
    box = rgba.getchannel("A").point(lambda v: 255 if v > 127 else 0).getbbox()
    assert box is not None
    rgba = rgba.crop(box).resize((SPRITE, SPRITE), Image.Resampling.BILINEAR)
    return np.asarray(rgba)


def sprite_bank(split: str, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` sprites of one split, kinds in rotation: (count, SPRITE, SPRITE, 4) uint8 and
    their kind indices (count,). Seeds differ per split, textures come from the split's
    photographs."""
    split_seed = {"train": 0, "val": 1, "test": 2}[split]
    rng = np.random.default_rng([seed, split_seed, 1001])
    photos = backgrounds(split)
    kinds = np.arange(count) % len(KINDS)
    sprites = np.stack([make_sprite(KINDS[k], rng, photos) for k in kinds])
    return sprites, kinds
