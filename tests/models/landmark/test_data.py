"""Real-data loaders (CSV and COCO points) map annotations as the service letterboxes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from models.landmark.data import (
    LandmarkArrays,
    LandmarkDataset,
    collate,
    generate_split,
    holdout_split,
    load_coco,
    load_csv,
)
from models.landmark.scenes import SceneConfig
from models.landmark.train import TrainConfig, load_data


@pytest.fixture
def images(tmp_path):
    Image.new("RGB", (200, 100), (10, 20, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (80, 160), (40, 50, 60)).save(tmp_path / "tall.jpg")
    return tmp_path


def test_csv_points_are_letterboxed(images):
    (images / "labels.csv").write_text(
        "file,class,x,y,width\nwide.png,stop,100,50,40\nwide.png,yield,0,0,\ntall.jpg,traffic_light,40,80,20\n"
    )
    data = load_csv(images / "labels.csv", 64)
    assert data.images.shape == (2, 64, 64, 3)
    wide, tall = data.labels
    # wide: scale 0.32, content 64x32 padded 16 px top and bottom.
    np.testing.assert_allclose(wide[0], [0, 32, 16 + 16, 40 * 0.32], rtol=1e-6)
    np.testing.assert_allclose(wide[1][:3], [1, 0, 16])
    assert wide[1][3] == pytest.approx(24.0)  # no width given: the default
    # tall: scale 0.4, content 32x64 padded 16 px left and right.
    np.testing.assert_allclose(tall[0], [7, 16 + 16, 32, 8], rtol=1e-6)
    assert np.all(data.images[0, :16] == 114) and np.all(data.images[0, 16:48] == (10, 20, 30))


def test_coco_keypoints(images):
    coco = {
        "images": [{"id": 1, "file_name": "wide.png"}, {"id": 2, "file_name": "tall.jpg"}],
        "categories": [{"id": 5, "name": "no_entry"}],
        "annotations": [
            {"image_id": 1, "category_id": 5, "keypoints": [150, 25, 2], "bbox": [140, 15, 20, 20]}
        ],
    }
    (images / "points.json").write_text(json.dumps(coco))
    data = load_coco(images / "points.json", 64)
    np.testing.assert_allclose(data.labels[0], [[2, 48, 16 + 8, 6.4]], rtol=1e-6)
    assert data.labels[1].shape == (0, 4)
    batch = collate([LandmarkDataset(data, (0, 0, 0), (1, 1, 1))[i] for i in range(2)])
    assert batch[0].shape == (2, 3, 64, 64) and batch[0].max() <= 1.0


def test_unknown_class_is_a_clear_error(images):
    (images / "bad.csv").write_text("file,class,x,y\nwide.png,giraffe,1,1\n")
    with pytest.raises(ValueError, match="giraffe"):
        load_csv(images / "bad.csv", 64)


def test_generated_split_cache_round_trips(tmp_path):
    config = SceneConfig(size=64, max_landmark=30, unlabelled_rate=0.3)
    fresh = generate_split(config, "train", 12, cache_dir=tmp_path, workers=1)
    cached = generate_split(config, "train", 12, cache_dir=tmp_path, workers=1)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert np.array_equal(fresh.images, cached.images)
    for a, b in zip(fresh.labels + fresh.hidden, cached.labels + cached.hidden, strict=True):
        assert np.array_equal(a, b)


def test_csv_with_a_byte_order_mark(images):
    (images / "excel.csv").write_text("\ufefffile,class,x,y\nwide.png,stop,100,50\n", "utf-8")
    assert load_csv(images / "excel.csv", 64).labels[0][0][0] == 0


def test_coco_keypoints_not_labelled_are_skipped(images):
    coco = {
        "images": [{"id": 1, "file_name": "wide.png"}],
        "categories": [{"id": 5, "name": "stop"}],
        "annotations": [
            {"image_id": 1, "category_id": 5, "keypoints": [0, 0, 0]},
            {"image_id": 1, "category_id": 5, "keypoints": [100, 50, 1]},
        ],
    }
    (images / "points.json").write_text(json.dumps(coco))
    (labels,) = load_coco(images / "points.json", 64).labels
    np.testing.assert_allclose(labels[:, 1:3], [[32, 32]])


def test_real_images_decode_as_the_service_does(images):
    """Transparency over white and EXIF orientation, as service.imaging decodes uploads."""
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.save(images / "cutout.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80x40, shown rotated 90 degrees clockwise: 40 wide, 80 tall
    Image.new("RGB", (80, 40), (200, 0, 0)).save(images / "rotated.jpg", exif=exif)
    (images / "labels.csv").write_text(
        "file,class,x,y\ncutout.png,stop,32,32\nrotated.jpg,stop,20,40\n"
    )
    data = load_csv(images / "labels.csv", 64)
    assert np.all(data.images[0] == 255)  # not black: alpha composited over white
    # Portrait after EXIF: scale 0.8, content 32x64, pads of 16 left and right.
    np.testing.assert_allclose(data.labels[1][0][1:3], [16 + 16, 32])
    assert np.all(data.images[1][:, :15] == 114) and data.images[1][32, 32, 0] > 150


def _arrays(n: int) -> LandmarkArrays:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 3), np.uint8)
    labels = [np.full((1, 4), i, np.float32) for i in range(n)]
    return LandmarkArrays(images, labels, [np.zeros((0, 4), np.float32)] * n)


def test_holdout_split_is_a_seeded_partition_by_image():
    arrays = _arrays(50)
    parts = {w: holdout_split(arrays, w, ("val", "test"), seed=3) for w in ("train", "val", "test")}
    ids = {w: {int(x) for x in p.images[:, 0, 0, 0]} for w, p in parts.items()}
    assert len(ids["val"]) == len(ids["test"]) == 5 and len(ids["train"]) == 40
    assert ids["train"] | ids["val"] | ids["test"] == set(range(50))
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    for p in parts.values():  # labels travel with their images
        assert [int(lab[0, 0]) for lab in p.labels] == [int(x) for x in p.images[:, 0, 0, 0]]
    again = holdout_split(arrays, "test", ("val", "test"), seed=3)
    assert np.array_equal(again.images, parts["test"].images)
    other = holdout_split(arrays, "test", ("val", "test"), seed=4)
    assert not np.array_equal(other.images, parts["test"].images)


def test_holdout_split_refuses_to_leave_no_training_image():
    with pytest.raises(ValueError, match="too few"):
        holdout_split(_arrays(2), "train", ("val", "test"), seed=0)


def test_real_data_test_split_is_never_the_training_images(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["file,class,x,y"]
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
        rows.append(f"{i}.png,stop,{i},{i}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    config = TrainConfig(data=f"csv:{tmp_path / 'all.csv'}")
    xs = {
        w: {float(lab[0, 1]) for lab in load_data(config, w).labels}
        for w in ("train", "val", "test")
    }
    assert len(xs["train"]) == 16 and len(xs["val"]) == len(xs["test"]) == 2
    assert not (xs["train"] & xs["test"] or xs["train"] & xs["val"] or xs["val"] & xs["test"])
    # A test file given: training keeps everything but the validation tenth.
    own = replace(config, test_data=f"csv:{tmp_path / 'all.csv'}")
    assert len(load_data(own, "train").labels) == 18 and len(load_data(own, "test").labels) == 20


def test_holdout_test_images_do_not_depend_on_whether_validation_is_held_out():
    arrays = _arrays(40)
    both = holdout_split(arrays, "test", ("val", "test"), seed=1)
    test_only = holdout_split(arrays, "test", ("test",), seed=1)
    assert np.array_equal(both.images, test_only.images)
    train = holdout_split(arrays, "train", ("test",), seed=1)
    assert len(train.images) == 36  # the validation slot trains when validation is a file
