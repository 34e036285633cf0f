"""Face alignment and the image-folder loader (one sub-folder per identity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from models.occlusion import faces
from models.occlusion.faces import (
    FACE_HEIGHT,
    FACE_WIDTH,
    centre_crop,
    load_image_folder,
    similarity_transform,
    split_identities,
)


def test_similarity_transform_recovers_a_known_one() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.array([[10.0, 20.0], [40.0, 22.0], [25.0, 45.0]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], shift)


def test_centre_crop_keeps_the_face_aspect() -> None:
    out = centre_crop(np.zeros((300, 500, 3), np.uint8))
    assert out.shape == (FACE_HEIGHT, FACE_WIDTH, 3)


def write_folder(root: Path) -> None:
    """Two people, two pictures each: lfw_subset faces (enlarged) and one non-face."""
    lfw = skimage.data.lfw_subset()
    pictures = {"alice": [lfw[0], lfw[1]], "bob": [lfw[2], lfw[150]]}  # 150: not a face
    for person, images in pictures.items():
        (root / person).mkdir(parents=True)
        for i, image in enumerate(images):
            grey = Image.fromarray((image * 255).astype(np.uint8)).resize((100, 100))
            grey.convert("RGB").save(root / person / f"{i}.png")
    (root / "bob" / "notes.txt").write_text("not an image")


@pytest.mark.skipif(faces.dlib is None, reason="dlib-bin is not installed")
def test_image_folder_is_aligned_with_identities_and_teacher(tmp_path: Path) -> None:
    write_folder(tmp_path)
    bank = load_image_folder(tmp_path)
    assert bank.images.shape == (4, FACE_HEIGHT, FACE_WIDTH, 3) and bank.images.dtype == np.uint8
    assert bank.identities.tolist() == [0, 0, 1, 1]
    assert bank.teacher is not None and bank.teacher.shape == (4, 128)
    assert bank.aligned.all()
    assert bank.sources[0] == "alice/0.png"
    # lfw_subset's first two faces are two people: their teacher embeddings differ.
    assert np.linalg.norm(bank.teacher[0] - bank.teacher[1]) > 0.1


def test_without_dlib_the_loader_centre_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faces, "dlib", None)
    write_folder(tmp_path)
    bank = load_image_folder(tmp_path)
    assert bank.images.shape == (4, FACE_HEIGHT, FACE_WIDTH, 3)
    assert bank.teacher is None and not bank.aligned.any()


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no identity folders"):
        load_image_folder(tmp_path)
    (tmp_path / "carol").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path)


def test_identity_split_is_disjoint(tmp_path: Path) -> None:
    write_folder(tmp_path)
    for person in ("carol", "dave", "erin"):
        (tmp_path / person).mkdir()
        Image.new("RGB", (100, 100), (100, 90, 80)).save(tmp_path / person / "0.png")
    bank = load_image_folder(tmp_path)
    parts = split_identities(bank, seed=0, val=0.2, test=0.2)
    seen = [set(p.identities.tolist()) for p in parts.values()]
    assert all(seen)
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 5
    assert sum(len(p) for p in parts.values()) == len(bank)


def test_too_few_people_to_train_on_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faces, "dlib", None)  # centre crops: alignment is not the point here
    write_folder(tmp_path)  # two people: one for test, one for validation, none to train
    (tmp_path / "bob" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    bank = load_image_folder(tmp_path)
    assert len(bank) == 4  # the resource fork is not read as a face
    with pytest.raises(ValueError, match="too few"):
        split_identities(bank, seed=0)
