"""The operating threshold is fixed on validation and only then measured on test."""

from __future__ import annotations

import numpy as np

from models.landmark.evaluate import Match
from models.landmark.operating_point import operating_point


def _match(scores: list[float], matched: list[bool], found: list[float]) -> Match:
    hits = np.array(matched)
    return Match(
        scores=np.array(scores),
        matched=hits,
        correct=hits.copy(),
        errors=np.where(hits, 0.5, np.nan),
        label_classes=np.zeros(len(found), int),
        label_found=np.array(found),
    )


def test_the_threshold_comes_from_validation_and_test_is_measured_at_it() -> None:
    # Validation: precision stays 1.0 down to score 0.7, then drops to 0.75 at 0.6.
    val = [_match([0.9, 0.8, 0.7, 0.6], [True, True, True, False], [0.9, 0.8, 0.7])]
    # Test: at 0.7 one of two detections is right and one of two labels is found. On the
    # test curve alone a threshold of 0.95 would give precision 1.0: it must not be used.
    test = [_match([0.95, 0.75, 0.65], [True, False, True], [0.95, 0.65])]
    point = operating_point(val, test)
    assert point["score"] == 0.7
    assert (point["val_precision"], point["val_recall"]) == (1.0, 1.0)
    assert (point["test_precision"], point["test_recall"]) == (0.5, 0.5)


def test_no_threshold_when_validation_never_reaches_95_percent() -> None:
    val = [_match([0.9, 0.8], [False, True], [0.8])]
    assert operating_point(val, val)["score"] is None
