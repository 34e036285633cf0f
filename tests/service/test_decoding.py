from __future__ import annotations

import numpy as np
import pytest

from service.decoding import (
    DecodeConfigError,
    LandmarkDecodeConfig,
    LandmarkPointsDecoder,
    build_decoder,
    point_nms,
)
from service.imaging import LetterboxTransform

LABELS = ["stop", "yield", "light"]
K = len(LABELS)
CELLS, ANCHORS = 4, 2
IDENTITY = LetterboxTransform(1.0, 0, 0, 160, 160)
DECODE = {
    "stride": 8,
    "grid": {"rows": 2, "cols": 2},
    "anchors": ANCHORS,
    "background_class": K,
    "confidence_threshold": 0.1,
    "nms_radius": 6.0,
}
SHAPES = {
    "class_probs": [-1, CELLS, ANCHORS, K + 1],
    "confidence": [-1, CELLS, ANCHORS],
    "points": [-1, CELLS, ANCHORS, 2],
}


def decoder(**changes: object) -> LandmarkPointsDecoder:
    return LandmarkPointsDecoder(LandmarkDecodeConfig.model_validate({**DECODE, **changes}), LABELS)


def empty_outputs() -> dict[str, np.ndarray]:
    """One image, every anchor at zero confidence, all probability on background."""
    class_probs = np.zeros((1, CELLS, ANCHORS, K + 1), np.float32)
    class_probs[..., K] = 1.0
    points = np.zeros((1, CELLS, ANCHORS, 2), np.float32)
    points[0, :, :, 0] = np.arange(CELLS)[:, None] * 40.0  # cells far apart
    return {
        "class_probs": class_probs,
        "confidence": np.zeros((1, CELLS, ANCHORS), np.float32),
        "points": points,
    }


def set_anchor(
    outputs: dict[str, np.ndarray],
    cell: int,
    anchor: int,
    *,
    conf: float,
    probs: list[float],
    point: tuple[float, float] | None = None,
) -> None:
    outputs["confidence"][0, cell, anchor] = conf
    outputs["class_probs"][0, cell, anchor] = probs
    if point is not None:
        outputs["points"][0, cell, anchor] = point


def test_nothing_detected() -> None:
    assert decoder().decode(empty_outputs(), IDENTITY, min_score=0.0) == []


def test_best_anchor_per_cell_wins() -> None:
    outputs = empty_outputs()
    set_anchor(outputs, 1, 0, conf=0.6, probs=[0.9, 0, 0, 0.1], point=(10, 10))
    set_anchor(outputs, 1, 1, conf=0.8, probs=[0, 0.5, 0, 0.5], point=(50, 60))
    (landmark,) = decoder().decode(outputs, IDENTITY, min_score=0.0)
    assert (landmark.class_id, landmark.label) == (1, "yield")
    assert landmark.score == pytest.approx(0.8 * 0.5)
    assert (landmark.x, landmark.y) == (50.0, 60.0)


def test_confidence_threshold_drops_anchor_even_with_min_score_zero() -> None:
    outputs = empty_outputs()
    set_anchor(outputs, 0, 0, conf=0.09, probs=[1, 0, 0, 0])
    set_anchor(outputs, 2, 0, conf=0.1, probs=[1, 0, 0, 0])
    result = decoder().decode(outputs, IDENTITY, min_score=0.0)
    assert [round(lm.score, 6) for lm in result] == [0.1]


def test_class_is_argmax_without_background_and_score_is_product() -> None:
    outputs = empty_outputs()
    # Background is the most probable class, but the class reported is the best landmark.
    set_anchor(outputs, 0, 0, conf=0.9, probs=[0.1, 0.05, 0.25, 0.6])
    (landmark,) = decoder().decode(outputs, IDENTITY, min_score=0.0)
    assert landmark.class_id == 2 and landmark.label == "light"
    assert landmark.score == pytest.approx(0.9 * 0.25)


def test_min_score_filters_and_results_are_sorted() -> None:
    outputs = empty_outputs()
    set_anchor(outputs, 0, 0, conf=0.5, probs=[1, 0, 0, 0])
    set_anchor(outputs, 1, 0, conf=0.9, probs=[0, 1, 0, 0])
    set_anchor(outputs, 2, 0, conf=0.7, probs=[0, 0, 1, 0])
    scores = [lm.score for lm in decoder().decode(outputs, IDENTITY, min_score=0.0)]
    assert scores == pytest.approx([0.9, 0.7, 0.5])
    kept = decoder().decode(outputs, IDENTITY, min_score=0.7)
    assert [lm.class_id for lm in kept] == [1, 2]  # score >= min_score is kept


def test_nms_keeps_best_of_neighbours_across_classes() -> None:
    outputs = empty_outputs()
    set_anchor(outputs, 0, 0, conf=0.6, probs=[1, 0, 0, 0], point=(20, 20))
    set_anchor(outputs, 1, 0, conf=0.9, probs=[0, 1, 0, 0], point=(24, 23))  # 5 px away
    set_anchor(outputs, 2, 0, conf=0.5, probs=[1, 0, 0, 0], point=(30, 20))  # 7.2 px away
    result = decoder().decode(outputs, IDENTITY, min_score=0.0)
    assert [(lm.x, lm.y) for lm in result] == [(24.0, 23.0), (30.0, 20.0)]


def test_point_nms_is_greedy_against_kept_points_only() -> None:
    # b is within the radius of a (dropped); c is within b's but not a's: kept.
    points = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0], [6.0, 0.0]])
    assert point_nms(points, 6.0).tolist() == [0, 2]
    assert point_nms(points[:0], 6.0).tolist() == []
    assert point_nms(points, 0.0).tolist() == [0, 1, 2, 3]


def test_nms_radius_is_in_model_input_pixels() -> None:
    outputs = empty_outputs()
    set_anchor(outputs, 0, 0, conf=0.9, probs=[1, 0, 0, 0], point=(20, 20))
    set_anchor(outputs, 1, 0, conf=0.8, probs=[1, 0, 0, 0], point=(28, 20))  # 8 model px
    # At scale 0.25 the two are 32 image pixels apart but only 8 model pixels.
    transform = LetterboxTransform(0.25, 0, 20, 640, 480)
    assert len(decoder(nms_radius=7.9).decode(outputs, transform, min_score=0.0)) == 2
    assert len(decoder(nms_radius=8.0).decode(outputs, transform, min_score=0.0)) == 1


def test_points_map_back_through_non_square_letterbox() -> None:
    outputs = empty_outputs()
    set_anchor(outputs, 3, 1, conf=0.9, probs=[0, 0, 1, 0], point=(78.125, 55.0))
    transform = LetterboxTransform(0.25, 0, 20, 640, 480)  # 640x480 into 160x160
    (landmark,) = decoder().decode(outputs, transform, min_score=0.0)
    assert (landmark.x, landmark.y) == pytest.approx((312.5, 140.0))


def test_batch_index_selects_the_image() -> None:
    first, second = empty_outputs(), empty_outputs()
    set_anchor(second, 0, 0, conf=0.9, probs=[1, 0, 0, 0])
    batch = {name: np.concatenate([first[name], second[name]]) for name in first}
    assert decoder().decode(batch, IDENTITY, min_score=0.0, batch_index=0) == []
    assert len(decoder().decode(batch, IDENTITY, min_score=0.0, batch_index=1)) == 1


def test_build_decoder_accepts_matching_config() -> None:
    assert isinstance(
        build_decoder("landmark_points", DECODE, LABELS, SHAPES), LandmarkPointsDecoder
    )


@pytest.mark.parametrize(
    ("task", "decode", "shapes", "match"),
    [
        ("boxes", DECODE, SHAPES, "unknown task"),
        ("landmark_points", {**DECODE, "background_class": 0}, SHAPES, "background_class"),
        ("landmark_points", {**DECODE, "stride": "x"}, SHAPES, "invalid decode block"),
        ("landmark_points", DECODE, {**SHAPES, "points": [-1, CELLS, ANCHORS, 3]}, "points"),
        ("landmark_points", {**DECODE, "anchors": 3}, SHAPES, "class_probs"),
        ("landmark_points", DECODE, {"class_probs": SHAPES["class_probs"]}, "needs outputs"),
    ],
)
def test_build_decoder_refuses_mismatch(task: str, decode: dict, shapes: dict, match: str) -> None:
    with pytest.raises(DecodeConfigError, match=match):
        build_decoder(task, decode, LABELS, shapes)


def reference_decode(
    outputs: dict[str, np.ndarray], threshold: float, min_score: float, radius: float
) -> list[tuple[int, float, float, float]]:
    """The decode block's rules cell by cell, in plain Python: ``(class, score, u, v)``."""
    found = []
    for cell in range(outputs["confidence"].shape[1]):
        confidences = outputs["confidence"][0, cell]
        anchor = int(np.argmax(confidences))  # the first of equals
        probs = outputs["class_probs"][0, cell, anchor, :K]
        class_id = int(np.argmax(probs))
        score = np.float32(confidences[anchor]) * np.float32(probs[class_id])
        if confidences[anchor] >= np.float32(threshold) and score >= np.float32(min_score):
            u, v = outputs["points"][0, cell, anchor]
            found.append((cell, class_id, float(score), float(u), float(v)))
    found.sort(key=lambda item: -item[2])  # stable: equal scores keep cell order
    kept: list[tuple[int, float, float, float]] = []
    for _, class_id, score, u, v in found:
        if all((u - ku) ** 2 + (v - kv) ** 2 > radius**2 for _, _, ku, kv in kept):
            kept.append((class_id, score, u, v))
    return kept


@pytest.mark.parametrize("seed", range(40))
def test_decoding_matches_the_rules_cell_by_cell(seed: int) -> None:
    # The decoder picks the cells over the threshold before it computes anything else;
    # coarse values make ties in confidence, class and score, and points within the radius.
    rng = np.random.default_rng(seed)
    cells = 64
    outputs = {
        "confidence": np.round(rng.random((1, cells, ANCHORS)), 1).astype(np.float32),
        "class_probs": np.round(rng.dirichlet(np.ones(K + 1), (1, cells, ANCHORS)), 1).astype(
            np.float32
        ),
        "points": np.round(rng.random((1, cells, ANCHORS, 2)) * 40, 0).astype(np.float32),
    }
    threshold, min_score = 0.3, float(rng.choice([0.0, 0.05, 0.2, 0.5]))
    decoded = decoder(confidence_threshold=threshold).decode(outputs, IDENTITY, min_score=min_score)
    got = [(LABELS.index(p.label), p.score, p.x, p.y) for p in decoded]
    assert [p.class_id for p in decoded] == [item[0] for item in got]
    assert got == reference_decode(outputs, threshold, min_score, DECODE["nms_radius"])
