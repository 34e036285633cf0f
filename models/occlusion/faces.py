"""Real faces, aligned to the 112 x 96 template with dlib's 5-point landmarks.

No identity-labelled face set can be had on these machines (SPEC). The real faces that can:
the 100 faces of scikit-image's ``lfw_subset()`` (25 x 25 grey crops of LFW) and the faces
dlib's detector finds in the sample photographs (scikit-image's astronaut, matplotlib's
grace_hopper). Each source face is its own identity. A user's own data set comes in as an
image folder, one sub-folder per identity (``load_image_folder``).

Alignment and the teacher embedding use PyPI ``dlib-bin`` and the CC0 models of
``face_recognition_models``, at training time only (the service never aligns: callers send
aligned or roughly cropped faces). Without dlib the alignment degrades to a centred
crop-and-resize and the teacher is absent; ``DLIB_PROBLEM`` says why, and training says so.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from models.common.images import image_files, read_images

logger = logging.getLogger(__name__)

FACE_HEIGHT, FACE_WIDTH = 112, 96  # aligned face size (FROM / SphereFace template)
# Template points at 112 x 96: left eye centre, right eye centre (image left/right), and
# the base of the nose (dlib's 5th point sits under the tip, a little below SphereFace's
# nose-tip point 71.7).
TEMPLATE = np.array([[30.29, 51.70], [65.53, 51.50], [48.03, 74.0]], np.float64)
# lfw_subset's faces are 25 x 25: upsampled 4x so that dlib's detector (about 80 px
# minimum face) and shape predictor work on them.
LFW_UPSAMPLE = 100

try:
    import dlib

    DLIB_PROBLEM: str | None = None
except ImportError as exc:  # dlib-bin not installed: alignment degrades, no teacher
    dlib = None
    DLIB_PROBLEM = f"dlib is not importable ({exc}); faces are centre-cropped, not aligned"


@dataclass(frozen=True)
class FaceBank:
    """Aligned faces: ``images`` (N, 112, 96, 3) uint8 RGB; ``identities`` (N,) int64;
    ``teacher`` (N, 128) float32 dlib embeddings of the clean faces, or None without dlib;
    ``sources`` where each face came from; ``aligned`` whether dlib aligned it."""

    images: np.ndarray
    identities: np.ndarray
    teacher: np.ndarray | None
    sources: tuple[str, ...]
    aligned: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> FaceBank:
        return FaceBank(
            self.images[index],
            self.identities[index],
            None if self.teacher is None else self.teacher[index],
            tuple(self.sources[i] for i in index),
            self.aligned[index],
        )


def _model_path(name: str) -> Path:
    # face_recognition_models imports pkg_resources (gone from new setuptools): find its
    # data files without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


@cache
def _dlib_models() -> tuple:
    """Detector, 5-point shape predictor, 128-D face embedding network (loaded once)."""
    assert dlib is not None
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(_model_path("shape_predictor_5_face_landmarks.dat"))),
        dlib.face_recognition_model_v1(
            str(_model_path("dlib_face_recognition_resnet_model_v1.dat"))
        ),
    )


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 least-squares similarity (rotation, uniform scale, shift) taking src to dst
    (Umeyama); ``src``/``dst`` (n, 2) points."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply the 2 x 3 map ``m`` (image -> face pixels) to an (H, W, 3) uint8 image; outside
    the image the border pixels repeat (tight crops such as LFW's stay face-coloured)."""
    pad = max(image.shape[:2])
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    full = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(full)
    # PIL wants the face -> source map; the padding shifts source coordinates by `pad`.
    a, b, c = inv[0]
    d, e, f = inv[1]
    data = (a, b, c + pad, d, e, f + pad)
    out = Image.fromarray(padded).transform(
        (FACE_WIDTH, FACE_HEIGHT), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC
    )
    return np.asarray(out)


def centre_crop(image: np.ndarray) -> np.ndarray:
    """The fallback without dlib: the largest centred 112:96 crop, resized."""
    h, w = image.shape[:2]
    ch = min(h, round(w * FACE_HEIGHT / FACE_WIDTH))
    cw = round(ch * FACE_WIDTH / FACE_HEIGHT)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(image[y0 : y0 + ch, x0 : x0 + cw])
    return np.asarray(crop.resize((FACE_WIDTH, FACE_HEIGHT), Image.Resampling.BICUBIC))


def align_faces(image: np.ndarray, max_faces: int = 1, whole_if_none: bool = True) -> list[dict]:
    """Aligned faces of an (H, W, 3) uint8 RGB image, best detection first: each
    ``{"image": (112, 96, 3) uint8, "teacher": (128,) float32 | None, "aligned": bool}``.

    With no detection the whole image is taken as the face box when ``whole_if_none``
    (for tight crops), else nothing is returned. Without dlib: one centre crop.
    """
    if dlib is None:
        return [{"image": centre_crop(image), "teacher": None, "aligned": False}]
    detector, predictor, embedder = _dlib_models()
    rects, scores, _ = detector.run(image, 1)
    order = np.argsort(scores)[::-1][:max_faces]
    chosen = [rects[i] for i in order]
    if not chosen:
        if not whole_if_none:
            return []
        h, w = image.shape[:2]
        chosen = [dlib.rectangle(0, 0, w - 1, h - 1)]
    faces = []
    for rect in chosen:
        shape = predictor(image, rect)
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        eyes = sorted([pts[0:2].mean(0), pts[2:4].mean(0)], key=lambda p: p[0])
        src = np.array([eyes[0], eyes[1], pts[4]])
        teacher = np.asarray(embedder.compute_face_descriptor(image, shape), np.float32)
        faces.append(
            {
                "image": warp(image, similarity_transform(src, TEMPLATE)),
                "teacher": teacher,
                "aligned": True,
            }
        )
    return faces


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(image.astype(np.float64) * (255.0 if image.max() <= 1 else 1), 0, 255)
        image = image.round().astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _bank(faces: list[dict], identities: list[int], sources: list[str]) -> FaceBank:
    teachers = [f["teacher"] for f in faces]
    return FaceBank(
        images=np.stack([f["image"] for f in faces]),
        identities=np.asarray(identities, np.int64),
        teacher=None if any(t is None for t in teachers) else np.stack(teachers),
        sources=tuple(sources),
        aligned=np.asarray([f["aligned"] for f in faces], bool),
    )


@cache
def builtin_faces() -> FaceBank:
    """The offline real faces: lfw_subset's 100 faces, then the sample photographs' faces;
    identity = index (each source face its own identity)."""
    import skimage.data

    faces, sources = [], []
    for i, face in enumerate(skimage.data.lfw_subset()[:100]):
        big = Image.fromarray(_rgb(face)).resize(
            (LFW_UPSAMPLE, LFW_UPSAMPLE), Image.Resampling.BICUBIC
        )
        faces += align_faces(np.asarray(big))
        sources.append(f"lfw_subset[{i}]")
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    for name, photo in (("astronaut", _rgb(skimage.data.astronaut())), ("grace_hopper", grace)):
        found = align_faces(photo, whole_if_none=False)
        faces += found
        sources += [name] * len(found)
    return _bank(faces, list(range(len(faces))), sources)


def load_image_folder(root: Path) -> FaceBank:
    """A real face data set as an image folder: ``root/<identity>/<image>``, aligned like
    the built-in faces (the whole image is the face box where dlib finds none)."""
    root = Path(root)
    people = sorted(p for p in root.iterdir() if p.is_dir())
    if not people:
        raise ValueError(f"{root} has no identity folders")
    faces, identities, sources = [], [], []
    for identity, person in enumerate(people):
        # Decoded as the service decodes uploads (models/common/images.py): upright, alpha
        # over white; files that do not decode are skipped with a warning.
        for path, image in read_images(image_files(person)):
            found = align_faces(image)
            faces += found
            identities += [identity] * len(found)
            sources += [str(path.relative_to(root))] * len(found)
    if not faces:
        raise ValueError(f"{root} has no images")
    return _bank(faces, identities, sources)


def split_identities(bank: FaceBank, seed: int = 0, val: float = 0.1, test: float = 0.2):
    """Disjoint train/val/test banks by identity (held-out people, not held-out shots)."""
    ids = np.unique(bank.identities)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n_test = max(1, round(len(ids) * test))
    n_val = max(1, round(len(ids) * val))
    if len(ids) - n_test - n_val < 2:
        raise ValueError(
            f"{len(ids)} people are too few: {n_test} held out for test and {n_val} for "
            "validation leave fewer than 2 to train on"
        )
    parts = {
        "test": ids[:n_test],
        "val": ids[n_test : n_test + n_val],
        "train": ids[n_test + n_val :],
    }
    return {k: bank.subset(np.flatnonzero(np.isin(bank.identities, v))) for k, v in parts.items()}
