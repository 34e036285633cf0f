"""Write the sample uploads in examples/ that the README's requests send.

    .venv/bin/python examples/make_examples.py      # from the repository root

Every file comes from the project's own data code (``models/``), seeded, so a rerun writes
the same pixels; it needs the training extra (``pip install -e '.[train]'``: torch, dlib,
scikit-image) and, for the attention canvases, the Debian package ``dataset-fashion-mnist``
(``make test`` installs both). Where each image comes from:

* ``scene.png`` (``POST /recognize``, ``/v2``): test-split scene 1008 of
  ``models/landmark/scenes.py`` at the model's input size, 160 x 160. **Synthetic**: traffic
  signs drawn procedurally onto a crop of one of the test split's real photographs
  (scikit-image and matplotlib sample images, ``models/common/backgrounds.py``). It lies past
  the 1000 test scenes the model card scores; its true landmarks are in ``LANDMARKS`` below.
* ``attention_coat.png`` (``POST /attention``), ``attention_pair.png`` and
  ``attention_pair_mask.png`` (``POST /attention/correct``): 64 x 64 canvases of
  ``models/attention/data.py``'s ``compose`` over the test split. The garments are real
  Fashion-MNIST test items (Zalando, MIT licence), their placement, scale and tint and the
  background crop (a test-split photograph) are **synthetic**. The pair holds a trouser
  (left) and a shirt (right); the mask is white over the trouser's box, the item the
  correction points the model at.
* ``garment_dress.png`` and ``garment_jacket.png`` (``POST /gender``): 128 x 128 garments of
  ``models/gender/data.py``'s ``generate`` over the test split, **synthetic** (a generated
  silhouette, colour and texture; the jacket over a crop of a test-split photograph). Their
  labels: female (a dress), male (a suit jacket).
* ``face.png`` and ``face_masked.png`` (``POST /occlusion``, ``POST /faces/verify``):
  the face in scikit-image's ``astronaut()`` photograph (Eileen Collins, NASA, public
  domain), aligned to the model's 112 x 96 template by ``models/occlusion/faces.py`` (dlib),
  then the same face with a mouth-mask occluder of ``models/occlusion/occluders.py``
  (**synthetic**, drawn as the test split's occluders are) over the grid blocks of rows
  3-4, cols 1-3 (exclusive ends ``[3, 5, 1, 4]``, the mouth and chin). Of the placements
  tried for this file, the model finds this one exactly; a sunglasses sprite across the eye
  row (rows 2-2, cols 0-4) it marks only in part (cols 0-1). This face is one of the
  occlusion model's training faces (identity 100 of ``builtin_faces()``, in the training
  split of ``split_identities(seed=0)``): the files show the API, not held-out accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere: models/ is importable

from models.attention.data import compose, load_fashion_mnist  # noqa: E402
from models.gender import data as garments  # noqa: E402
from models.landmark.scenes import LABELS, SceneConfig, generate  # noqa: E402
from models.occlusion.faces import FACE_HEIGHT, FACE_WIDTH, _rgb, align_faces  # noqa: E402
from models.occlusion.occluders import KINDS, sprite_bank  # noqa: E402

SEED = 2026
SCENE_INDEX = 1008  # test split; its landmarks are (label, x, y) below
LANDMARKS = (("speed_limit", 121.2, 43.0), ("no_entry", 128.8, 98.7), ("warning", 29.9, 86.8))
ATTENTION_SINGLE = 0  # compose(..., kind="single", seed=SEED)[0]: a coat
ATTENTION_PAIR = 2  # compose(..., kind="pair", seed=SEED)[2]: trouser, shirt
GARMENTS = {"garment_dress.png": 4, "garment_jacket.png": 5}  # generate(8, "test", SEED)
GRID = 5  # the occlusion model's grid (config.json decode.grid)
MASK_BLOCKS = (3, 5, 1, 4)  # row_start, row_end, col_start, col_end (exclusive ends)


def save(name: str, pixels: np.ndarray) -> None:
    path = HERE / name
    Image.fromarray(pixels).save(path, format="PNG", optimize=True)
    print(
        f"{path.relative_to(HERE.parent)}: {pixels.shape[1]}x{pixels.shape[0]}, "
        f"{path.stat().st_size} bytes"
    )


def landmark_scene() -> None:
    scene = generate(SceneConfig(), "test", SCENE_INDEX, seed=0)
    found = tuple(
        (LABELS[int(c)], round(float(x), 1), round(float(y), 1)) for c, x, y, _ in scene.labels
    )
    assert found == LANDMARKS, found
    save("scene.png", scene.image)


def attention_canvases() -> None:
    items, labels = load_fashion_mnist("test")
    single = compose(items, labels, "test", ATTENTION_SINGLE + 1, kind="single", seed=SEED)
    save("attention_coat.png", single.images[ATTENTION_SINGLE])
    pair = compose(items, labels, "test", ATTENTION_PAIR + 1, kind="pair", seed=SEED)
    save("attention_pair.png", pair.images[ATTENTION_PAIR])
    x0, y0, x1, y1 = pair.boxes[ATTENTION_PAIR][0]  # the trouser
    mask = np.zeros(pair.images.shape[1:3], np.uint8)
    mask[y0:y1, x0:x1] = 255
    save("attention_pair_mask.png", mask)


def garment_images() -> None:
    made = garments.generate(max(GARMENTS.values()) + 1, "test", seed=SEED)
    for name, index in GARMENTS.items():
        save(name, made.images[index])


def faces() -> None:
    import skimage.data

    face = align_faces(_rgb(skimage.data.astronaut()), whole_if_none=False)[0]
    assert face["aligned"], "dlib found no face in astronaut()"
    save("face.png", face["image"])
    sprites, kinds = sprite_bank("test", len(KINDS), seed=SEED)
    sprite = Image.fromarray(sprites[list(kinds).index(KINDS.index("mouth_mask"))], "RGBA")
    r0, r1, c0, c1 = MASK_BLOCKS
    box = [
        round(v)
        for v in (
            c0 * FACE_WIDTH / GRID,
            r0 * FACE_HEIGHT / GRID,
            c1 * FACE_WIDTH / GRID,
            r1 * FACE_HEIGHT / GRID,
        )
    ]
    layer = Image.new("RGBA", (FACE_WIDTH, FACE_HEIGHT))
    layer.paste(
        sprite.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BILINEAR), box[:2]
    )
    occluded = Image.alpha_composite(Image.fromarray(face["image"]).convert("RGBA"), layer)
    save("face_masked.png", np.asarray(occluded.convert("RGB")))


def main() -> None:
    landmark_scene()
    attention_canvases()
    garment_images()
    faces()


if __name__ == "__main__":
    main()
