"""The scene generator: deterministic, labels where the landmarks really are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.landmark.scenes import LABELS, SceneConfig, _warp_landmark, generate

CONFIG = SceneConfig(size=96, max_landmark=40, unlabelled_rate=0.3)


def test_same_arguments_same_scene_and_splits_differ():
    a, b = generate(CONFIG, "train", 7), generate(CONFIG, "train", 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, generate(CONFIG, "test", 7).image)


def test_labels_are_inside_the_image_with_known_classes():
    for i in range(30):
        s = generate(CONFIG, "train", i)
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        for rows in (s.labels, s.hidden):
            assert rows.shape[1] == 4
            assert np.all((rows[:, 1:3] >= 0) & (rows[:, 1:3] < 96))
            assert set(rows[:, 0].astype(int)) <= set(range(len(LABELS)))
            assert np.all(rows[:, 3] >= 0.6 * CONFIG.min_landmark)


def test_unlabelled_landmarks_only_where_asked():
    hidden = sum(len(generate(CONFIG, "train", i).hidden) for i in range(40))
    assert hidden > 0
    clean = SceneConfig(size=96, max_landmark=40)
    assert sum(len(generate(clean, "train", i).hidden) for i in range(40)) == 0


@pytest.mark.parametrize("class_id", range(len(LABELS)))
def test_reference_point_follows_the_warp(class_id):
    """The warped reference point stays on the sign and, for discs, near the face's centroid.

    The label is the projected centre of the face; under perspective the centroid of the
    imaged disc moves off it (by up to ~6 % of the width with the generator's keystone).
    """
    rng = np.random.default_rng(class_id)
    for _ in range(10):
        patch, (x, y) = _warp_landmark(rng, class_id, rng.uniform(20, 60))
        alpha = np.asarray(patch)[..., 3].astype(float)
        assert alpha[round(y), round(x)] > 200
        if LABELS[class_id] in ("no_entry", "speed_limit", "mandatory_direction", "stop"):
            ys, xs = np.nonzero(alpha > 127)
            tol = 0.08 * patch.width
            assert abs(xs.mean() - x) < tol and abs(ys.mean() - y) < tol


def test_letterboxed_scenes_have_the_service_pad_and_labels_in_content():
    pads = 0
    for i in range(40):
        s = generate(CONFIG, "val", i)
        if np.all(s.image[0] == 114) or np.all(s.image[:, 0] == 114):
            pads += 1
            for _, x, y, _ in s.labels:
                assert not np.all(s.image[int(y), int(x)] == 114)
    assert pads > 0
    Image.fromarray(s.image)  # a valid image
