from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from models.gender.data import (
    BACKDROPS,
    KINDS,
    LABELS,
    ColourAugmentConfig,
    GarmentConfig,
    as_non_square,
    aspect_augment,
    colour_augment,
    folder_splits,
    generate,
    load_image_folder,
    outline_of,
    photo_crops,
)
from service.imaging import letterbox


@pytest.fixture(scope="module")
def garments():
    return generate(80, "train", seed=3)


def test_balanced_labels_and_kinds_of_the_right_class(garments) -> None:
    assert garments.images.shape == (80, 128, 128, 3) and garments.images.dtype == np.uint8
    assert np.bincount(garments.labels).tolist() == [40, 40]
    for label, kind in zip(garments.labels, garments.kinds, strict=True):
        assert kind in KINDS[LABELS[label]]
    # Every garment type turns up in 80 draws.
    assert set(garments.kinds) == {k for kinds in KINDS.values() for k in kinds}


def test_deterministic_in_seed() -> None:
    a, b, c = generate(6, "val", seed=1), generate(6, "val", seed=1), generate(6, "val", seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.outlines, b.outlines)
    assert not np.array_equal(a.images, c.images)


def test_outline_is_the_boundary_of_the_garment_in_the_image() -> None:
    # Plain backdrops: the garment is every pixel that differs from the corner's colour;
    # the stored outline must be that region's boundary (up to antialiasing).
    g = generate(20, "train", seed=5, config=GarmentConfig(photo_background=0.0))
    agreement = []
    for image, outline in zip(g.images, g.outlines, strict=True):
        assert 0.005 < outline.mean() < 0.2
        differs = np.abs(image.astype(np.int16) - image[0, 0].astype(np.int16)).sum(-1) > 30
        seen = outline_of(ndimage.binary_fill_holes(differs))
        near = ndimage.binary_dilation(seen, iterations=1)
        agreement.append((outline.astype(bool) & near).sum() / outline.sum())
    # A garment whose random colour is close to the backdrop's can hide part of its edge.
    assert np.median(agreement) > 0.95


def test_backdrop_kind_is_recorded_per_image(garments) -> None:
    assert set(garments.backdrops) == set(BACKDROPS)
    for image, outline, backdrop in zip(
        garments.images, garments.outlines, garments.backdrops, strict=True
    ):
        # Pixels at least 3 px from the garment's outline on the side of the image corner
        # furthest from the garment are backdrop.
        far = ~ndimage.binary_dilation(outline.astype(bool), iterations=3)
        corner = max(((0, 0), (0, -1), (-1, 0), (-1, -1)), key=lambda c: far[c])
        region, _ = ndimage.label(far)
        backdrop_pixels = image[region == region[corner]].astype(np.int16)  # (P, 3)
        spread = np.abs(backdrop_pixels - backdrop_pixels[0]).max()
        if backdrop == "photo":
            assert spread > 30, backdrop
        else:
            assert spread == 0, backdrop
            grey = backdrop_pixels[0]
            is_light_grey = grey.min() == grey.max() and grey.min() >= 200
            assert is_light_grey == (backdrop == "plain_light")


def test_outline_of_a_square() -> None:
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    outline = outline_of(mask)
    assert outline[5, 5] == 0  # interior
    assert outline[0, 0] == 0  # far outside
    assert outline[3, 5] == 1 and outline[2, 5] == 1  # both sides of the boundary
    assert outline.sum() == (6 * 6 - 4) - (2 * 2)  # grown ring minus the shrunk core


def test_colour_and_texture_say_nothing_about_the_label() -> None:
    g = generate(400, "train", seed=7)
    means = g.images.reshape(len(g), -1, 3).mean(1)
    female, male = means[g.labels == 0].mean(0), means[g.labels == 1].mean(0)
    # Mean colour per class differs by less than a few levels (random colours either way).
    assert np.abs(female - male).max() < 12


def test_colour_augmentation_is_bounded() -> None:
    images = generate(50, "train", seed=9).images
    config = ColourAugmentConfig(share=0.3, max_shift=40)
    out, changed = colour_augment(images, seed=0, config=config)
    assert changed.sum() == 15  # exactly the bounded share
    np.testing.assert_array_equal(out[~changed], images[~changed])
    for before, after in zip(images[changed], out[changed], strict=True):
        swapped = sorted(before.reshape(-1, 3).T.tolist()) == sorted(
            after.reshape(-1, 3).T.tolist()
        )
        diff = after.astype(int) - before.astype(int)
        moved = [c for c in range(3) if np.any(diff[..., c])]
        shifted = len(moved) <= 1 and np.abs(diff).max() <= 40
        assert swapped or shifted


def test_photo_crops_come_from_the_split() -> None:
    crops = photo_crops(4, "test", size=32, seed=0)
    assert crops.shape == (4, 32, 32, 3) and crops.dtype == np.uint8
    assert crops.std() > 5  # photographs, not blank


def test_image_folder_loader(tmp_path: Path) -> None:
    for name, colour, count in (("female", (200, 0, 0), 3), ("male", (0, 0, 200), 2)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (40 + i, 60), colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "male" / "notes.txt").write_text("not an image")
    images, labels = load_image_folder(tmp_path, size=32)
    assert images.shape == (5, 32, 32, 3)
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert images[0, 16, 16, 0] == 200 and images[4, 16, 16, 2] == 200


def test_image_folder_needs_both_classes(tmp_path: Path) -> None:
    (tmp_path / "female").mkdir()
    with pytest.raises(FileNotFoundError, match="male"):
        load_image_folder(tmp_path)


def test_image_folder_reads_as_the_service_decodes(tmp_path: Path) -> None:
    """Alpha over white, TIFF read, and files that are not images (a macOS ``._`` fork, a
    truncated JPEG) skipped instead of ending the load."""
    for name in LABELS:
        (tmp_path / name).mkdir()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "female" / "cutout.png")
    Image.new("RGB", (32, 32), (0, 90, 0)).save(tmp_path / "male" / "scan.tif")
    (tmp_path / "male" / "._scan.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "male" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    images, labels = load_image_folder(tmp_path, size=32)
    assert labels.tolist() == [0, 1]
    assert np.all(images[0] == 255)  # transparent: white, as served (was black)
    assert tuple(images[1, 16, 16]) == (0, 90, 0)


def test_image_folder_class_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "female").mkdir()
    (tmp_path / "male").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "female" / "a.png")
    with pytest.raises(FileNotFoundError, match="male has no image"):
        load_image_folder(tmp_path)


def test_folder_splits_are_stratified_and_disjoint() -> None:
    labels = np.array([0] * 40 + [1] * 10)
    parts = folder_splits(labels, seed=5)
    for split, (female, male) in {"val": (4, 1), "test": (4, 1), "train": (32, 8)}.items():
        assert (labels[parts[split]] == 0).sum() == female
        assert (labels[parts[split]] == 1).sum() == male
    together = np.concatenate(list(parts.values()))
    assert sorted(together.tolist()) == list(range(50))
    assert np.array_equal(folder_splits(labels, seed=5)["test"], parts["test"])
    with pytest.raises(ValueError, match="too few"):
        folder_splits(np.array([0, 0, 0, 1, 1]), seed=0)


@pytest.mark.parametrize(("aspect", "bars"), [(4 / 3, "sides"), (3 / 4, "top and bottom")])
def test_as_non_square_letterboxes_like_the_service(aspect: float, bars: str) -> None:
    image = generate(1, "test", seed=2, config=GarmentConfig(size=64)).images[0]
    out = as_non_square(image, aspect)
    grey = (out == 114).all(axis=-1)
    edges = (grey[:, :8], grey[:, -8:]) if bars == "sides" else (grey[:8], grey[-8:])
    assert out.shape == image.shape and all(edge.all() for edge in edges)
    edge_padded = as_non_square(image, aspect, edge_pad=True)
    assert not (edge_padded == 114).all(axis=-1)[:, :8].all()  # no grey bars left


@pytest.mark.parametrize("aspect", [4 / 3, 3 / 4])
def test_edge_padded_photos_are_what_the_service_makes_of_them(aspect: float) -> None:
    """The non-square photos measured with edge-repeating bars (shift's *_edge_padded) are
    exactly what the service feeds a model whose config says preprocess.pad "edge"."""
    images = generate(6, "test", seed=4, config=GarmentConfig(size=64)).images
    for image in images:
        extra = round(64 * aspect) - 64 if aspect >= 1 else round(64 / aspect) - 64
        pads = (
            ((extra // 2, extra - extra // 2), (0, 0))
            if aspect >= 1
            else ((0, 0), (extra // 2, extra - extra // 2))
        )
        photo = np.pad(image, (*pads, (0, 0)), mode="edge")  # the photo as a shop takes it
        served, _ = letterbox(photo, 64, 64, (114, 114, 114), pad="edge")
        np.testing.assert_array_equal(as_non_square(image, aspect, edge_pad=True), served)


def test_aspect_augment_changes_its_share_and_nothing_else() -> None:
    images = generate(20, "train", seed=3, config=GarmentConfig(size=64)).images
    out = aspect_augment(images, seed=4, share=0.3)
    changed = [not np.array_equal(a, b) for a, b in zip(out, images, strict=True)]
    assert sum(changed) == 6
    assert np.array_equal(aspect_augment(images, seed=4, share=0.0), images)
    assert np.array_equal(aspect_augment(images, seed=4, share=0.3), out)  # seeded
