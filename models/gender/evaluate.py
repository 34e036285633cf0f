"""ODS-style F-measure of contour maps against reference edges (BSDS500's protocol, small).

Per threshold, both the prediction and the reference are binarised and thinned to
one-pixel lines; a predicted pixel is correct when a reference pixel lies within
``tolerance`` pixels, a reference pixel is recalled when a predicted one does. Counts are
summed over the whole set and the best threshold's F is the ODS (optimal dataset scale)
figure. BSDS500 matches one-to-one (a bipartite assignment); this distance test is the
usual lighter stand-in, so figures are comparable between our models, not to the paper.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import thin

# Maps trained with class-balanced losses put even weak edges high, so the sweep is finer
# near 1.
DEFAULT_THRESHOLDS = (*np.round(np.arange(0.05, 0.95, 0.05), 2).tolist(), 0.95, 0.97, 0.99)


def _near(lines: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within ``tolerance`` of any True pixel of ``lines``."""
    if not lines.any():
        return np.zeros_like(lines)
    return ndimage.distance_transform_edt(~lines) <= tolerance


def f_measure(
    pred: np.ndarray,
    reference: np.ndarray,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    tolerance: float = 2.0,
) -> dict[str, float]:
    """``pred`` (N, H, W) probabilities in 0..1, ``reference`` (N, H, W) bool edges:
    ``{"ods_f", "threshold", "precision", "recall"}`` at the best threshold."""
    refs = [thin(r) for r in reference.astype(bool)]
    ref_near = [_near(r, tolerance) for r in refs]
    best = {"ods_f": 0.0, "threshold": float(thresholds[0]), "precision": 0.0, "recall": 0.0}
    for t in thresholds:
        tp_p = n_p = tp_r = n_r = 0
        for p, r, rn in zip(pred, refs, ref_near, strict=True):
            lines = thin(p >= t)
            tp_p += int((lines & rn).sum())
            n_p += int(lines.sum())
            tp_r += int((r & _near(lines, tolerance)).sum())
            n_r += int(r.sum())
        precision = tp_p / n_p if n_p else 0.0
        recall = tp_r / n_r if n_r else 0.0
        f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if f > best["ods_f"]:
            best = {"ods_f": f, "threshold": float(t), "precision": precision, "recall": recall}
    return best


def only_right(first: np.ndarray, second: np.ndarray) -> tuple[int, int]:
    """Samples only ``first`` gets right and only ``second`` does (``(N,)`` bool correct
    each, the same samples): the discordant pairs McNemar's test counts."""
    return int((first & ~second).sum()), int((second & ~first).sum())


# Two-sided 95 % normal quantile.
Z_95 = 1.959963984540054


def paired_difference_ci95(only_first: int, only_second: int, n: int) -> tuple[float, float]:
    """95 % Wald interval of the accuracy difference first - second of two classifiers on
    the same ``n`` samples, from the discordant counts alone: the difference is
    (b - c) / n and its variance ((b + c) - (b - c)^2 / n) / n^2 (paired proportions)."""
    if n <= 0:
        raise ValueError("no samples")
    b, c = only_first, only_second
    difference = (b - c) / n
    half = Z_95 * math.sqrt(max(0.0, (b + c) - (b - c) ** 2 / n)) / n
    return difference - half, difference + half


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value of two classifiers on the same samples: under the
    null hypothesis each sample only one of them gets right is a fair coin flip, so the
    smaller count is Binomial(only_first + only_second, 1/2)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
