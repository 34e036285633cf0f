"""Product-style garment images whose outline carries the gender label (seed 003's domain).

No gender-labelled clothing set can be had on these machines (see SPEC), so garments are
generated: a symmetric silhouette polygon per garment type, with cut parameters drawn from
ranges that differ between womenswear and menswear, and a share of blouses and women's
trousers cut exactly like a shirt or men's trousers (the classes overlap there), filled
with a random colour and texture that say nothing about the label, over a plain
backdrop or a crop of a real photograph (models/common/backgrounds.py: the train/val/test
photographs are disjoint). The exact outline of each garment is kept as a contour label.

* ``generate``: garments with labels (0 = female, 1 = male), kinds and outline maps;
* ``colour_augment``: the seed's colour transformation (swap channels, shift one channel)
  on a bounded share of images, with a bounded shift;
* ``photo_crops``: random crops of the real photographs (contour training with teacher maps);
* ``load_image_folder``: a real data set a user brings, ``root/female/*``, ``root/male/*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from models.common.backgrounds import backgrounds, random_crop
from models.common.images import image_files, read_images
from service.imaging import letterbox

LABELS = ("female", "male")
# Garment types per class; a type's cut parameters are drawn in ``_silhouette``.
KINDS: dict[str, tuple[str, ...]] = {
    "female": ("dress", "skirt", "blouse", "womens_trousers"),
    "male": ("suit_jacket", "shirt", "mens_trousers"),
}
# What is behind a garment: a plain light-grey product-shot backdrop, a plain backdrop of any
# colour, or a crop of a real photograph (half of the images, GarmentConfig.photo_background).
BACKDROPS = ("plain_light", "plain_colour", "photo")
SUPERSAMPLE = 2  # polygons are drawn at this multiple of the size, then box-filtered
PAD_VALUE = 114  # letterbox border grey (uint8), the same in training, export and service


@dataclass(frozen=True)
class GarmentConfig:
    size: int = 128  # square image side in pixels
    fill: tuple[float, float] = (0.55, 0.9)  # garment's longer side as a share of the image
    rotation: float = 8.0  # max rotation in degrees either way
    photo_background: float = 0.5  # share of images over a photograph (rest: plain backdrop)
    # Share of blouses and of women's trousers cut exactly like menswear (a shirt, straight
    # trousers): the classes overlap there, and only chance can tell those apart.
    overlap: float = 0.1
    background_gain: tuple[float, float] = (0.5, 1.0)  # photographs are dimmed by this


@dataclass(frozen=True)
class ColourAugmentConfig:
    share: float = 0.3  # at most this share of images is colour-transformed (the seed's bound)
    max_shift: int = 40  # largest change of one channel's values (0..255 scale)


@dataclass
class Garments:
    """``images (N, S, S, 3) uint8``, ``labels (N,) int64`` (index into LABELS), ``kinds
    (N,)`` garment type names, ``outlines (N, S, S) uint8`` 0/1 exact garment outlines,
    ``backdrops (N,)`` one of BACKDROPS per image."""

    images: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    outlines: np.ndarray
    backdrops: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _mirror(right: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A closed symmetric outline from its right half (x >= 0), listed top to bottom."""
    left = [(-x, y) for x, y in reversed(right) if x > 0]
    return right + left


def _top(rng: np.random.Generator, kind: str) -> list[tuple[float, float]]:
    """Right half of a top (blouse, shirt, jacket, dress bodice); shoulder half-width ~0.5."""
    female = kind in ("blouse", "dress")
    shoulder = _u(rng, 0.40, 0.48) if female else _u(rng, 0.48, 0.56)
    if kind == "suit_jacket":
        shoulder += 0.04  # padded shoulders
    neck = _u(rng, 0.12, 0.18)
    depth = {
        "blouse": _u(rng, 0.10, 0.30),
        "dress": _u(rng, 0.05, 0.30),
        "shirt": _u(rng, 0.0, 0.08),
        "suit_jacket": _u(rng, 0.25, 0.55),  # the lapels' V
    }[kind]
    drop = _u(rng, 0.07, 0.12) if female else _u(rng, 0.02, 0.06)
    chest = shoulder * _u(rng, 0.85, 0.95)
    armpit = _u(rng, 0.30, 0.40)
    length = {"blouse": _u(rng, 0.75, 1.05), "dress": _u(rng, 0.45, 0.6)}.get(kind) or _u(
        rng, 0.95, 1.25
    )
    waist_ratio = _u(rng, 0.60, 0.80) if female else _u(rng, 0.88, 1.0)
    hem_ratio = _u(rng, 1.0, 1.2) if kind == "blouse" else _u(rng, 0.92, 1.0)
    if kind == "dress":
        hem_ratio = waist_ratio
    waist_y = armpit + (length - armpit) * (0.55 if kind != "dress" else 1.0)
    sleeve = {
        "blouse": rng.choice([0.0, _u(rng, 0.1, 0.25), _u(rng, 0.45, 0.7)]),
        "dress": rng.choice([0.0, _u(rng, 0.1, 0.25)]),
        "shirt": rng.choice([_u(rng, 0.25, 0.38), _u(rng, 0.85, 1.05)]),
        "suit_jacket": _u(rng, 0.85, 1.05),
    }[kind]
    angle = math.radians(_u(rng, 12, 35))
    points = [(0.0, depth), (neck, 0.0)]
    if kind == "shirt":
        points = [(0.0, depth), (neck * 0.9, -0.04), (neck * 1.05, 0.0)]  # the collar
    points.append((shoulder, drop))
    if sleeve > 0:
        cuff = _u(rng, 0.14, 0.22) * (1.2 if sleeve < 0.4 else 1.0)
        end = (shoulder + sleeve * math.sin(angle), drop + sleeve * math.cos(angle))
        inner = (end[0] - cuff * math.cos(angle), end[1] + cuff * math.sin(angle))
        points += [end, inner]
    points.append((chest, armpit))
    waist = chest * waist_ratio
    if kind != "dress":
        points.append((waist, waist_y))
        points.append(((waist + chest * hem_ratio) / 2, (waist_y + length) / 2))
        points.append((chest * hem_ratio, length))
        points.append((0.0, length + (0.03 if kind == "suit_jacket" else 0.0)))
    else:
        points.append((waist, waist_y))
    return points


def _bottom(
    rng: np.random.Generator, kind: str, waist: float, top: float
) -> list[tuple[float, float]]:
    """Right half of a skirt or trousers hanging from a waist of half-width ``waist`` at
    ``y = top``, listed from the waist down to the centre line."""
    if kind in ("skirt", "dress"):
        length = _u(rng, 0.7, 1.5)
        hip = waist * _u(rng, 1.1, 1.3)
        hem = waist * _u(rng, 1.2, 2.2)
        points = [(waist, top), (hip, top + 0.25 * length)]
        for t in np.linspace(1.0, 0.0, 5):  # a slightly curved hem, lower at the sides
            points.append((hem * t, top + length + 0.06 * t * t * hem))
        return points
    length = _u(rng, 1.6, 2.1)
    hip = waist * _u(rng, 1.02, 1.15)
    crotch = top + _u(rng, 0.25, 0.35) * length / 1.8
    if kind == "womens_trousers":
        if rng.random() < 0.5:  # flared
            leg, outer = _u(rng, 0.6, 0.85), hip * _u(rng, 1.08, 1.35)
        else:  # skinny
            leg, outer = _u(rng, 0.26, 0.36), hip * _u(rng, 0.68, 0.8)
    else:
        leg = _u(rng, 0.44, 0.55)
        outer = hip * _u(rng, 0.88, 1.0)
    inner = max(outer - leg * hip, 0.03)
    return [
        (waist, top),
        (hip, top + 0.12 * length),
        (outer, top + length),
        (inner, top + length),
        (0.0, crotch),
    ]


# Womenswear types that are sometimes cut exactly like a menswear type.
MENSWEAR_CUT = {"blouse": "shirt", "womens_trousers": "mens_trousers"}


def _silhouette(
    rng: np.random.Generator, kind: str, overlap: float = 0.0
) -> list[tuple[float, float]]:
    """A closed outline of garment ``kind`` in its own units (y down); with probability
    ``overlap`` a blouse or women's trousers get the menswear cut."""
    if kind in MENSWEAR_CUT and rng.random() < overlap:
        kind = MENSWEAR_CUT[kind]
    if kind in ("blouse", "shirt", "suit_jacket"):
        return _mirror(_top(rng, kind))
    if kind == "dress":
        bodice = _top(rng, kind)
        waist_x, waist_y = bodice[-1]
        return _mirror(bodice[:-1] + _bottom(rng, kind, waist_x, waist_y))
    if kind in ("skirt", "womens_trousers", "mens_trousers"):
        waist = _u(rng, 0.32, 0.42) if kind != "mens_trousers" else _u(rng, 0.38, 0.46)
        return _mirror([(0.0, 0.0), *_bottom(rng, kind, waist, 0.0)])
    raise ValueError(f"unknown garment kind {kind!r}")


def _place(
    rng: np.random.Generator, outline: list[tuple[float, float]], config: GarmentConfig
) -> list[tuple[float, float]]:
    """Rotate, scale and shift an outline into supersampled image pixels."""
    pts = np.asarray(outline, np.float64)
    theta = math.radians(_u(rng, -config.rotation, config.rotation))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    pts = pts @ rot.T
    pts -= pts.min(axis=0)
    side = config.size * SUPERSAMPLE
    scale = _u(rng, *config.fill) * side / float(pts.max())
    pts *= scale
    span = pts.max(axis=0)
    offset = np.array([_u(rng, 0, side - span[0]), _u(rng, 0, side - span[1])])
    return [(float(x), float(y)) for x, y in pts + offset]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour and pattern (solid, stripes, checks, dots, noise), float32 (S, S, 3)."""
    base = rng.uniform(0, 255, 3)
    other = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pattern = rng.choice(["solid", "stripes", "checks", "dots", "noise"])
    period = _u(rng, 4, 16)
    if pattern == "stripes":
        angle = _u(rng, 0, math.pi)
        mix = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0
    elif pattern == "checks":
        mix = ((xx // period + yy // period) % 2) > 0
    elif pattern == "dots":
        mix = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (
            period / 4
        ) ** 2
    elif pattern == "noise":
        mix = rng.random((size, size)) < 0.3
    else:
        mix = np.zeros((size, size), bool)
    texture = np.where(mix[..., None], other, base).astype(np.float32)
    # Soft lighting: a gentle gradient, as studio product shots have.
    shade = 1.0 + _u(rng, -0.15, 0.15) * (yy / size - 0.5) + _u(rng, -0.1, 0.1) * (xx / size - 0.5)
    return texture * shade[..., None]


def _backdrop(
    rng: np.random.Generator, photos: tuple[np.ndarray, ...], config: GarmentConfig
) -> tuple[np.ndarray, str]:
    """A plain product-shot backdrop (light grey or any colour) or a random crop of a
    photograph: float32 ``(S, S, 3)`` and which of BACKDROPS it is."""
    size = config.size
    if not photos or rng.random() >= config.photo_background:
        coloured = rng.random() < 0.5
        colour = rng.uniform(0, 255, 3) if coloured else np.full(3, _u(rng, 200, 255))
        plain = np.broadcast_to(colour.astype(np.float32), (size, size, 3)).copy()
        return plain, "plain_colour" if coloured else "plain_light"
    return random_crop(rng, photos, size) * _u(rng, *config.background_gain), "photo"


def outline_of(mask: np.ndarray) -> np.ndarray:
    """0/1 uint8 outline of a boolean mask: pixels inside it with a neighbour outside, and
    pixels outside with a neighbour inside (a two-pixel band on the true boundary)."""
    grown = ndimage.binary_dilation(mask)
    shrunk = ndimage.binary_erosion(mask, border_value=0)
    return (grown & ~shrunk).astype(np.uint8)


def generate(
    count: int, split: str, seed: int = 0, config: GarmentConfig | None = None
) -> Garments:
    """``count`` garments, classes alternating (balanced), types uniform within a class;
    backgrounds from ``split``'s photographs; deterministic in ``seed``."""
    config = config or GarmentConfig()
    rng = np.random.default_rng(seed)
    photos = backgrounds(split)
    size, big = config.size, config.size * SUPERSAMPLE
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.arange(count, dtype=np.int64) % 2
    kinds = np.empty(count, dtype=object)
    backdrops = np.empty(count, dtype=object)
    outlines = np.empty((count, size, size), np.uint8)
    for n in range(count):
        kind = str(rng.choice(KINDS[LABELS[labels[n]]]))
        polygon = _place(rng, _silhouette(rng, kind, config.overlap), config)
        mask_img = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask_img).polygon(polygon, fill=255)
        alpha = np.asarray(mask_img.resize((size, size), Image.Resampling.BOX), np.float32) / 255
        canvas, backdrops[n] = _backdrop(rng, photos, config)
        garment = _texture(rng, size)
        canvas = alpha[..., None] * garment + (1 - alpha[..., None]) * canvas
        images[n] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        kinds[n] = kind
        outlines[n] = outline_of(alpha >= 0.5)
    return Garments(images, labels, kinds.astype(str), outlines, backdrops.astype(str))


def colour_augment(
    images: np.ndarray, seed: int = 0, config: ColourAugmentConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Swap two colour channels or shift one channel on ``floor(share * N)`` random images
    (half each); returns the new images and a boolean mask of the changed ones.

    The seed bounds the transformation (how many images, how far a channel moves) so the
    colour distribution of the set as a whole stays, and the model does not learn colour.
    """
    config = config or ColourAugmentConfig()
    rng = np.random.default_rng(seed)
    out = images.copy()
    chosen = rng.choice(len(images), size=int(config.share * len(images)), replace=False)
    changed = np.zeros(len(images), bool)
    for i in chosen:
        if rng.random() < 0.5:
            a, b = rng.choice(3, size=2, replace=False)
            out[i][..., [a, b]] = images[i][..., [b, a]]
        else:
            channel = int(rng.integers(3))
            shift = int(rng.integers(-config.max_shift, config.max_shift + 1))
            shifted = images[i][..., channel].astype(np.int16) + shift
            out[i][..., channel] = np.clip(shifted, 0, 255).astype(np.uint8)
        changed[i] = True
    return out, changed


def photo_crops(count: int, split: str, size: int = 128, seed: int = 0) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 random crops of ``split``'s real photographs."""
    rng = np.random.default_rng(seed)
    photos = backgrounds(split)
    crops = [random_crop(rng, photos, size) for _ in range(count)]
    return np.clip(np.rint(np.stack(crops)), 0, 255).astype(np.uint8)


# Non-square shop photos (height / width) that aspect_augment draws: 3:4 portrait to 4:3
# landscape, the common product formats.
ASPECT_RANGE = (3 / 4, 4 / 3)


def as_non_square(image: np.ndarray, aspect: float, edge_pad: bool = False) -> np.ndarray:
    """A square ``(S, S, 3)`` uint8 image made an ``aspect`` (height / width) photo by
    repeating its edge rows (portrait, > 1) or columns (landscape, < 1), then fitted back
    into ``S x S`` as the service letterboxes it: the garment smaller, between grey bars
    (``edge_pad``: bars repeating the image's edge instead)."""
    size = image.shape[0]
    if aspect >= 1:
        extra = round(size * aspect) - size
        pads = ((extra // 2, extra - extra // 2), (0, 0), (0, 0))
    else:
        extra = round(size / aspect) - size
        pads = ((0, 0), (extra // 2, extra - extra // 2), (0, 0))
    photo = np.pad(image, pads, mode="edge")
    pad = "edge" if edge_pad else "constant"
    return letterbox(photo, size, size, (PAD_VALUE,) * 3, pad=pad)[0]


def aspect_augment(images: np.ndarray, seed: int, share: float) -> np.ndarray:
    """``floor(share * N)`` random images of ``(N, S, S, 3)`` uint8 made non-square photos
    (``as_non_square``, aspect log-uniform in ASPECT_RANGE) as the service would see them;
    the others unchanged. Its own generator: a share of 0 leaves every other draw as it was."""
    rng = np.random.default_rng(seed)
    out = images.copy()
    low, high = np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1])
    for i in rng.choice(len(images), size=int(share * len(images)), replace=False):
        out[i] = as_non_square(images[i], float(np.exp(rng.uniform(low, high))))
    return out


def load_image_folder(root: Path | str, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A real data set in image-folder form, ``root/female/*`` and ``root/male/*`` (the
    formats the service opens, decoded and letterboxed by the service's own code; files that
    do not decode are skipped with a warning): ``(images (N, S, S, 3) uint8, labels (N,))``.
    Both classes must have images."""
    root = Path(root)
    missing = [name for name in LABELS if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} needs one folder per class: {missing} missing")
    images, labels = [], []
    for label, name in enumerate(LABELS):
        found = 0
        for _, rgb in read_images(image_files(root / name)):
            boxed, _ = letterbox(rgb, size, size, (PAD_VALUE,) * 3)
            images.append(boxed)
            found += 1
        if not found:
            raise FileNotFoundError(f"{root / name} has no image the service could read")
        labels += [label] * found
    return np.stack(images), np.asarray(labels, np.int64)


# Share of each class an image folder gives to validation and to test.
FOLDER_HOLDOUT = 0.1


def folder_splits(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices of an image folder's train / val / test, seeded and stratified: a tenth of
    each class (at least one image) to validation, a tenth to test, the rest to training."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in range(len(LABELS)):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = max(1, round(len(members) * FOLDER_HOLDOUT))
        if len(members) < 2 * held + 1:
            raise ValueError(
                f"{len(members)} {LABELS[label]} images are too few for a validation, a test "
                "and a training share (3 at least)"
            )
        parts["val"].append(members[:held])
        parts["test"].append(members[held : 2 * held])
        parts["train"].append(members[2 * held :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
