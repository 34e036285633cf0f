"""Point-detection metrics for the landmark model (numpy, model-input pixels).

Decoding is the service's own (``service.decoding``, numpy only): training and export
measure exactly what the service returns, with no second copy of the rule to drift.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import numpy as np

from service.decoding import GridConfig, LandmarkDecodeConfig, LandmarkPointsDecoder
from service.imaging import LetterboxTransform

# Detections and labels match when their points are this close, in model-input pixels (the
# issue's criterion: a third of the smallest landmark's width).
MATCH_RADIUS = 4.0
TARGET_PRECISION = 0.95
# Metrics are computed in model-input pixels, so the letterbox is the identity.
IDENTITY = LetterboxTransform(scale=1.0, pad_x=0, pad_y=0, image_width=0, image_height=0)


@dataclass
class Detections:
    classes: np.ndarray  # (D,) int
    scores: np.ndarray  # (D,) float, descending
    points: np.ndarray  # (D, 2) float, model-input pixels


def decode(
    class_probs: np.ndarray,
    confidence: np.ndarray,
    points: np.ndarray,
    *,
    confidence_threshold: float,
    min_score: float,
    nms_radius: float,
) -> Detections:
    """One image's outputs, (C, A, K+1), (C, A), (C, A, 2), to detections.

    Runs the service's own decoder (best anchor per cell by confidence, claim 11; drop it
    below ``confidence_threshold``, claim 12; score = confidence x best landmark-class
    probability; greedy point NMS), so the measured metrics are those of the served model.
    """
    cells, anchors, k1 = class_probs.shape
    decoder = _decoder(cells, anchors, k1 - 1, confidence_threshold, nms_radius)
    found = decoder.decode(
        {"class_probs": class_probs[None], "confidence": confidence[None], "points": points[None]},
        IDENTITY,
        min_score=min_score,
    )
    return Detections(
        np.array([f.class_id for f in found], int),
        np.array([f.score for f in found], float),
        np.array([(f.x, f.y) for f in found], float).reshape(-1, 2),
    )


@cache
def _decoder(
    cells: int, anchors: int, classes: int, confidence_threshold: float, nms_radius: float
) -> LandmarkPointsDecoder:
    """One decoder per output layout and thresholds, not one per image decoded."""
    side = round(cells**0.5)
    return LandmarkPointsDecoder(
        LandmarkDecodeConfig(
            stride=1,
            grid=GridConfig(rows=side, cols=side),
            anchors=anchors,
            background_class=classes,
            confidence_threshold=confidence_threshold,
            nms_radius=nms_radius,
        ),
        [str(i) for i in range(classes)],
    )


@dataclass
class Match:
    scores: np.ndarray  # (D,) every detection's score
    matched: np.ndarray  # (D,) bool: within MATCH_RADIUS of a label
    correct: np.ndarray  # (D,) bool: matched and same class
    errors: np.ndarray  # (D,) point error in pixels where matched, else nan
    label_classes: np.ndarray  # (L,) classes of labels
    label_found: np.ndarray  # (L,) score of the detection that matched each label, or -1


def match(det: Detections, labels: np.ndarray, radius: float = MATCH_RADIUS) -> Match:
    """Greedy matching, highest score first, each label at most once, class-agnostic."""
    taken = np.full(len(labels), -1.0)
    matched = np.zeros(len(det.scores), bool)
    correct = np.zeros(len(det.scores), bool)
    errors = np.full(len(det.scores), np.nan)
    for i, (c, s, p) in enumerate(zip(det.classes, det.scores, det.points, strict=True)):
        if not len(labels):
            break
        d = np.hypot(labels[:, 1] - p[0], labels[:, 2] - p[1])
        d[taken >= 0] = np.inf
        j = int(d.argmin())
        if d[j] <= radius:
            taken[j] = s
            matched[i], correct[i], errors[i] = True, int(labels[j, 0]) == c, d[j]
    return Match(det.scores, matched, correct, errors, labels[:, 0].astype(int), taken)


def summarize(matches: Iterable[Match], num_classes: int, operating_score: float) -> dict:
    """Dataset metrics: recall at precision >= 95 %, and everything at ``operating_score``."""
    ms = list(matches)
    scores = np.concatenate([m.scores for m in ms])
    matched = np.concatenate([m.matched for m in ms])
    correct = np.concatenate([m.correct for m in ms])
    errors = np.concatenate([m.errors for m in ms])
    label_classes = np.concatenate([m.label_classes for m in ms])
    label_found = np.concatenate([m.label_found for m in ms])
    n_labels = max(len(label_classes), 1)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(matched[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_labels
    ok = precision >= TARGET_PRECISION
    best = int(np.flatnonzero(ok)[recall[ok].argmax()]) if ok.any() else None
    # Average precision: area under the interpolated precision-recall curve.
    interp = np.maximum.accumulate(precision[::-1])[::-1] if len(order) else precision
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * interp)) if len(order) else 0.0

    at = scores >= operating_score
    found = label_found >= operating_score
    return {
        "labels": len(label_classes),
        "average_precision": ap,
        "recall_at_precision_95": float(recall[best]) if best is not None else 0.0,
        "score_at_precision_95": float(scores[order][best]) if best is not None else None,
        "operating_score": operating_score,
        "precision": float(matched[at].mean()) if at.any() else 0.0,
        "recall": float(found.mean()) if len(found) else 0.0,
        "class_accuracy": float(correct[at & matched].mean()) if (at & matched).any() else 0.0,
        "mean_point_error_px": float(np.nanmean(errors[at & matched]))
        if (at & matched).any()
        else None,
        "recall_by_class": {
            str(k): float(found[label_classes == k].mean()) if (label_classes == k).any() else None
            for k in range(num_classes)
        },
    }


def score_at_recall(matches: Iterable[Match], recall: float) -> float:
    """The lowest score threshold that still finds ``recall`` of the labels (seed 004 #1)."""
    found = np.sort(np.concatenate([m.label_found for m in matches]))[::-1]
    if not len(found):
        return 0.0
    k = min(len(found) - 1, int(np.ceil(recall * len(found))) - 1)
    return float(max(found[k], 0.0))
