"""ODS-style F-measure of contour maps against reference edges (BSDS500's protocol, small).

Per threshold, both the prediction and the reference are binarised and thinned to
one-pixel lines; a predicted pixel is correct when a reference pixel lies within
``tolerance`` pixels, a reference pixel is recalled when a predicted one does. Counts are
summed over the whole set and the best threshold's F is the ODS (optimal dataset scale)
figure. BSDS500 matches one-to-one (a bipartite assignment); this distance test is the
usual lighter stand-in, so figures are comparable between our models, not to the paper.
"""

from __future__ import annotations

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
