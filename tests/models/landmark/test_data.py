"""Real-data loaders (CSV and COCO points) map annotations as the service letterboxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from models.landmark.data import LandmarkDataset, collate, generate_split, load_coco, load_csv
from models.landmark.scenes import SceneConfig


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
