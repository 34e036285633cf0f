"""Procedural road-landmark scenes on real photographs (synthetic data for seed 000).

No real traffic-sign data set can be had on these machines, so each scene is a random crop
of a real photograph (``models.common.backgrounds``) with traffic signs and lights rendered
into it under random size, perspective, rotation, lighting, blur, noise, partial occlusion
and clutter. Every scene is a pure function of ``(seed, split, index)``.

Coordinates are pixels of the generated scene, origin top-left, x right, y down.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from models.common.backgrounds import backgrounds

LABELS: tuple[str, ...] = (
    "stop",
    "yield",
    "no_entry",
    "speed_limit",
    "mandatory_direction",
    "pedestrian_crossing",
    "warning",
    "traffic_light",
)

# Templates are drawn at this size (pixels of the template, 4x supersampled) and shrunk
# to the landmark's size; 96 keeps the black numbers and arrows crisp before shrinking.
TEMPLATE = 96
SUPERSAMPLE = 4
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Bump when the drawing changes, so cached scene sets (models/landmark/data.py) regenerate.
GENERATOR_VERSION = 1

RED = (200, 20, 30)
BLUE = (20, 70, 180)
WHITE = (245, 245, 245)
BLACK = (15, 15, 15)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are generated; stored in the model card so data can be regenerated."""

    size: int = 160  # scene side in pixels (= model input side)
    min_landmark: float = 12.0  # smallest landmark width in scene pixels
    max_landmark: float = 56.0  # largest landmark width in scene pixels
    max_landmarks: int = 6  # landmarks per scene are uniform in 0..max_landmarks
    distractors: tuple[int, int] = (2, 9)  # unlabelled clutter shapes per scene
    unlabelled_rate: float = 0.0  # share of landmarks rendered but left out of the labels
    letterbox_rate: float = 0.25  # share of scenes shrunk into a padded band, as uploads are
    occlusion_rate: float = 0.2  # share of landmarks partly covered by an occluder


@dataclass
class Scene:
    """One generated image and its ground truth.

    ``labels`` rows are ``(class_id, x, y, width)`` in scene pixels: the reference point (centre
    of the sign face, of the housing for a traffic light) and the landmark's width.
    ``hidden`` has the same layout for landmarks that are visible but deliberately unlabelled.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    hidden: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType support
        return ImageFont.load_default()


def _regular_polygon(n: int, cx: float, cy: float, r: float, phase: float) -> list[tuple]:
    return [
        (
            cx + r * math.cos(phase + 2 * math.pi * i / n),
            cy + r * math.sin(phase + 2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def _arrow(draw: ImageDraw.ImageDraw, c: float, s: float, direction: int) -> None:
    """A white arrow in a blue disc; direction 0 up, 1 left, 2 right, 3 up-right."""
    shaft = [(-0.09, 0.35), (0.09, 0.35), (0.09, -0.05), (-0.09, -0.05)]
    head = [(-0.28, -0.02), (0.28, -0.02), (0.0, -0.4)]
    angle = {0: 0.0, 1: -math.pi / 2, 2: math.pi / 2, 3: math.pi / 4}[direction]
    ca, sa = math.cos(angle), math.sin(angle)

    def tr(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(c + s * (x * ca - y * sa), c + s * (x * sa + y * ca)) for x, y in points]

    draw.polygon(tr(shaft), fill=WHITE)
    draw.polygon(tr(head), fill=WHITE)


@cache
def template(class_id: int, variant: int) -> tuple[Image.Image, tuple[float, float]]:
    """An RGBA drawing of a landmark and its reference point in template pixels.

    The image is ``TEMPLATE`` wide; traffic lights are twice as tall as wide.
    """
    s = TEMPLATE * SUPERSAMPLE
    name = LABELS[class_id]
    height = 2 * s if name == "traffic_light" else s
    img = Image.new("RGBA", (s, height), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    c = s / 2
    ref = (c, c)
    if name == "stop":
        d.polygon(_regular_polygon(8, c, c, s * 0.5, math.pi / 8), fill=WHITE)
        d.polygon(_regular_polygon(8, c, c, s * 0.46, math.pi / 8), fill=RED)
        d.text((c, c), "STOP", fill=WHITE, font=_font(int(s * 0.24)), anchor="mm")
    elif name in ("yield", "warning"):
        # Reference point: the centroid of the triangle, the centre of the sign face.
        up = name == "warning"
        r = s * 0.56
        phase = -math.pi / 2 if up else math.pi / 2
        cy = c + (s * 0.1 if up else -s * 0.1)
        d.polygon(_regular_polygon(3, c, cy, r, phase), fill=RED)
        d.polygon(_regular_polygon(3, c, cy, r * 0.62, phase), fill=WHITE)
        if up:
            symbol = "!?><"[variant % 4]
            d.text((c, cy + s * 0.03), symbol, fill=BLACK, font=_font(int(s * 0.3)), anchor="mm")
        ref = (c, cy)
    elif name == "no_entry":
        d.ellipse((0, 0, s - 1, s - 1), fill=RED)
        d.rectangle((s * 0.18, s * 0.41, s * 0.82, s * 0.59), fill=WHITE)
    elif name == "speed_limit":
        d.ellipse((0, 0, s - 1, s - 1), fill=RED)
        d.ellipse((s * 0.11, s * 0.11, s * 0.89, s * 0.89), fill=WHITE)
        number = ("20", "30", "50", "60", "70", "80", "90", "120")[variant % 8]
        size = 0.36 if len(number) == 3 else 0.46
        d.text((c, c), number, fill=BLACK, font=_font(int(s * size)), anchor="mm")
    elif name == "mandatory_direction":
        d.ellipse((0, 0, s - 1, s - 1), fill=BLUE)
        _arrow(d, c, s, variant % 4)
    elif name == "pedestrian_crossing":
        d.rectangle((0, 0, s - 1, s - 1), fill=BLUE)
        d.polygon([(c, s * 0.1), (s * 0.9, s * 0.86), (s * 0.1, s * 0.86)], fill=WHITE)
        # A walking figure, a head and a body, in black on the white triangle.
        d.ellipse((c - s * 0.06, s * 0.36, c + s * 0.06, s * 0.48), fill=BLACK)
        d.line([(c, s * 0.48), (c - s * 0.03, s * 0.66)], fill=BLACK, width=int(s * 0.05))
        d.line([(c - s * 0.03, s * 0.66), (c - s * 0.14, s * 0.8)], fill=BLACK, width=int(s * 0.04))
        d.line([(c - s * 0.03, s * 0.66), (c + s * 0.1, s * 0.8)], fill=BLACK, width=int(s * 0.04))
        d.rectangle((s * 0.12, s * 0.8, s * 0.88, s * 0.84), fill=BLACK)
    elif name == "traffic_light":
        d.rounded_rectangle((0, 0, s - 1, height - 1), radius=int(s * 0.15), fill=(30, 30, 30))
        lit = variant % 3
        lamps = ((230, 30, 20), (240, 180, 20), (30, 210, 90))
        for i in range(3):
            cy = height * (0.2 + 0.3 * i)
            colour = lamps[i] if i == lit else tuple(v // 5 for v in lamps[i])
            d.ellipse((c - s * 0.32, cy - s * 0.32, c + s * 0.32, cy + s * 0.32), fill=colour)
        ref = (c, height / 2)
    small = img.resize((img.width // SUPERSAMPLE, img.height // SUPERSAMPLE), Image.LANCZOS)
    return small, (ref[0] / SUPERSAMPLE, ref[1] / SUPERSAMPLE)


VARIANTS = {"speed_limit": 8, "mandatory_direction": 4, "warning": 4, "traffic_light": 3}


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 matrix mapping four ``src`` points onto four ``dst`` points."""
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(rows, np.float64))
    return vt[-1].reshape(3, 3) / vt[-1, -1]


def _apply(h: np.ndarray, x: float, y: float) -> tuple[float, float]:
    p = h @ np.array([x, y, 1.0])
    return float(p[0] / p[2]), float(p[1] / p[2])


def _warp_landmark(
    rng: np.random.Generator, class_id: int, width: float
) -> tuple[Image.Image, tuple[float, float]]:
    """The landmark warped to ``width`` scene pixels, and its reference point in that patch."""
    tmpl, (rx, ry) = template(class_id, int(rng.integers(VARIANTS.get(LABELS[class_id], 1))))
    tw, th = tmpl.size
    scale = width / tw
    angle = math.radians(rng.normal(0, 6))
    # Perspective from viewing the sign off-axis: one vertical edge shorter than the other.
    yaw = rng.uniform(-0.25, 0.25)
    pitch = rng.uniform(-0.12, 0.12)
    corners = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float64) - [tw / 2, th / 2]
    squeeze = np.array([1 - abs(yaw) * 0.8, 1 - abs(pitch) * 0.8])
    out = corners * squeeze
    out[:, 1] *= 1 + yaw * np.sign(corners[:, 0]) * 0.5
    out[:, 0] *= 1 + pitch * np.sign(corners[:, 1]) * 0.5
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    out = (out @ rot.T) * scale
    offset = out.min(axis=0) - 2
    out -= offset
    size = (math.ceil(out[:, 0].max()) + 2, math.ceil(out[:, 1].max()) + 2)
    h = _homography(corners + np.array([tw / 2, th / 2]), out)
    inv = np.linalg.inv(h)
    coeffs = (inv / inv[2, 2]).flatten()[:8]
    patch = tmpl.transform(size, Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC)
    return patch, _apply(h, rx, ry)


def _background(rng: np.random.Generator, split: str, w: int, h: int) -> Image.Image:
    photos = backgrounds(split)
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    crop = int(rng.uniform(0.25, 1.0) * min(ph, pw))
    cw, ch = crop, max(8, int(crop * h / w))
    ch = min(ch, ph)
    x0 = int(rng.integers(0, pw - cw + 1))
    y0 = int(rng.integers(0, ph - ch + 1))
    image = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(image, np.float32) * rng.uniform(0.6, 1.3) + rng.uniform(-25, 25, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _distractor(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """Unlabelled clutter: shapes and colours that are not landmarks (hard negatives)."""
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if rng.random() < 0.3:  # saturated red or blue, the landmark colours
        colour = RED if rng.random() < 0.5 else BLUE
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    a, b = rng.uniform(4, 30), rng.uniform(4, 30)
    kind = int(rng.integers(5))
    if kind == 0:
        draw.rectangle((x, y, x + a, y + b), fill=colour)
    elif kind == 1:  # ellipses that are clearly not discs
        draw.ellipse((x, y, x + a, y + a * rng.uniform(0.3, 0.6)), fill=colour)
    elif kind == 2:
        draw.line((x, y, x + rng.uniform(-40, 40), y + rng.uniform(-40, 40)), fill=colour, width=2)
    elif kind == 3:
        draw.text((x, y), str(int(rng.integers(10, 999))), fill=colour, font=_font(int(a) + 6))
    else:  # a pole without a sign
        draw.rectangle((x, y, x + 2 + a / 10, y + 4 * b), fill=(120, 120, 120))


def _occlude(rng: np.random.Generator, scene: Image.Image, box: tuple[float, ...]) -> None:
    """Cover up to about a third of a landmark's box from one side."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    side = int(rng.integers(4))
    frac = rng.uniform(0.15, 0.35)
    if side == 0:
        rect = (x0 - 2, y0 - 2, x0 + bw * frac, y1 + 2)
    elif side == 1:
        rect = (x1 - bw * frac, y0 - 2, x1 + 2, y1 + 2)
    elif side == 2:
        rect = (x0 - 2, y1 - bh * frac, x1 + 2, y1 + 2)
    else:
        rect = (x0 - 2, y0 - 2, x1 + 2, y0 + bh * frac)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    ImageDraw.Draw(scene).rectangle(rect, fill=colour)


def generate(config: SceneConfig, split: str, index: int, seed: int = 0) -> Scene:
    """The scene ``index`` of ``split``: same arguments, same pixels and labels."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    size = config.size
    w = h = size
    letterbox = rng.random() < config.letterbox_rate
    if letterbox:  # a non-square upload letterboxed by the service: content in a band
        short = int(rng.uniform(0.55, 0.95) * size)
        w, h = (size, short) if rng.random() < 0.5 else (short, size)
    scene = _background(rng, split, w, h)
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(*config.distractors))):
        _distractor(rng, draw, w, h)

    labels: list[tuple[float, float, float, float]] = []
    hidden: list[tuple[float, float, float, float]] = []
    placed: list[tuple[float, float, float]] = []
    count = int(rng.integers(config.max_landmarks + 1))
    for _ in range(count * 4):  # retries for placements that overlap
        if len(placed) == count:
            break
        class_id = int(rng.integers(len(LABELS)))
        width = math.exp(rng.uniform(math.log(config.min_landmark), math.log(config.max_landmark)))
        if LABELS[class_id] == "traffic_light":
            width *= 0.6  # a housing is narrow; its height is twice its width
        patch, (rx, ry) = _warp_landmark(rng, class_id, width)
        pw, ph = patch.size
        if pw >= w - 2 or ph >= h - 2:
            continue
        px = int(rng.integers(0, w - pw))
        py = int(rng.integers(0, h - ph))
        x, y = px + rx, py + ry
        radius = max(pw, ph) / 2
        if any(math.hypot(x - ox, y - oy) < 0.8 * (radius + orad) for ox, oy, orad in placed):
            continue
        if rng.random() < 0.5 and LABELS[class_id] != "traffic_light":  # a post under the sign
            pole_w = max(1, int(width / 10))
            draw.rectangle((x - pole_w, y, x + pole_w, h), fill=(110, 110, 115))
        tint = rng.uniform(0.55, 1.25) * rng.uniform(0.9, 1.1, 3)
        rgba = np.asarray(patch, np.float32)
        rgba[..., :3] = np.clip(rgba[..., :3] * tint, 0, 255)
        patch = Image.fromarray(rgba.astype(np.uint8), "RGBA")
        scene.paste(patch, (px, py), patch)
        if rng.random() < config.occlusion_rate:
            _occlude(rng, scene, (px, py, px + pw, py + ph))
        placed.append((x, y, radius))
        row = (float(class_id), x, y, float(pw))
        (hidden if rng.random() < config.unlabelled_rate else labels).append(row)

    if rng.random() < 0.3:
        scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    arr = np.asarray(scene, np.float32)
    if rng.random() < 0.5:
        arr = arr + rng.normal(0, rng.uniform(1, 8), arr.shape)
    scene = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        scene.save(buf, format="JPEG", quality=int(rng.integers(40, 90)))
        scene = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    out = np.full((size, size, 3), 114, np.uint8)  # the service's letterbox pad value
    ox, oy = (size - w) // 2, (size - h) // 2
    out[oy : oy + h, ox : ox + w] = np.asarray(scene)
    shift = np.array([0, ox, oy, 0], np.float32)
    as_array = lambda rows: np.asarray(rows, np.float32).reshape(-1, 4) + shift  # noqa: E731
    return Scene(out, as_array(labels), as_array(hidden))
