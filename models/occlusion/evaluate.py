"""Held-out measures of an occlusion model, from any ``predict`` (PyTorch or ONNX Runtime).

``predict(x)``: normalised faces (N, 3, H, W) float32 -> pattern logits (N, P), embeddings
(N, D) (normalised here). Pattern measures are on the occluded copies; embedding measures
compare clean and occluded copies of the same augmented face.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.occlusion.data import Batch
from models.occlusion.patterns import NO_OCCLUSION, box_iou, pattern_box, pattern_table

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def run(predict: Predict, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    logits, embs = [], []
    for i in range(0, len(x), batch):
        lo, em = predict(x[i : i + batch])
        logits.append(lo)
        embs.append(em / np.maximum(np.linalg.norm(em, axis=1, keepdims=True), 1e-6))
    return np.concatenate(logits), np.concatenate(embs)


def blocks_of(grid: int, pid: int) -> int:
    """How many grid blocks pattern ``pid`` covers (0 for no occlusion)."""
    blocks = pattern_table(grid)[pid]
    return 0 if blocks is None else (blocks[1] - blocks[0]) * (blocks[3] - blocks[2])


def pattern_metrics(pred: np.ndarray, true: np.ndarray, grid: int, h: int, w: int) -> dict:
    """Exact pattern accuracy, occluded-vs-not accuracy, mean IoU of predicted vs true box
    over truly occluded faces (a face called clean scores 0) and over all faces."""
    ious = np.array(
        [
            box_iou(pattern_box(grid, int(p), h, w), pattern_box(grid, int(t), h, w))
            for p, t in zip(pred, true, strict=True)
        ]
    )
    occluded = true != NO_OCCLUSION
    called = pred != NO_OCCLUSION
    single = np.array([blocks_of(grid, int(t)) == 1 for t in true])
    return {
        "pattern_exact": float((pred == true).mean()),
        # Where "occluded vs not" goes wrong: false alarms on clean faces, misses overall
        # and misses of the smallest occluders (one block).
        "clean_called_occluded": float(called[~occluded].mean()),
        "occluded_called_clean": float((~called[occluded]).mean()),
        "one_block_called_clean": float((~called[single]).mean()) if single.any() else 0.0,
        "pattern_exact_occluded": float((pred[occluded] == true[occluded]).mean()),
        "occluded_vs_not": float(((pred != NO_OCCLUSION) == occluded).mean()),
        "mean_iou_occluded": float(ious[occluded].mean()),
        "mean_iou_all": float(ious.mean()),
    }


def pair_scores(
    clean: np.ndarray,
    occluded: np.ndarray,
    identities: np.ndarray,
    columns: np.ndarray | None = None,
):
    """Cosine similarities of every clean sample with every other sample's "occluded" copy
    (``columns``, an ``(N,)`` bool, keeps only those copies; a third of them are clean):
    (same-person scores, different-person scores). Paired by identity, not by photo: two
    photos of one person (a user's ``--faces`` folder) are a same pair."""
    kept = np.arange(len(identities)) if columns is None else np.flatnonzero(columns)
    sims = clean @ occluded[kept].T
    same = identities[:, None] == identities[kept][None, :]
    not_itself = np.arange(len(identities))[:, None] != kept[None, :]
    return sims[same & not_itself], sims[~same]


def auc(same: np.ndarray, diff: np.ndarray) -> float:
    """P(same-pair score > different-pair score), ties half (ROC AUC)."""
    scores = np.concatenate([same, diff])
    ranks = scores.argsort().argsort().astype(np.float64) + 1
    # Average ranks of ties.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    ranks = (sums / counts)[inverse]
    n1, n0 = len(same), len(diff)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def best_threshold(same: np.ndarray, diff: np.ndarray) -> float:
    """The threshold with the best balanced accuracy (mean of same and different rates)."""
    cands = np.unique(np.concatenate([same, diff]))
    cands = np.quantile(cands, np.linspace(0, 1, 513))
    acc = [((same >= t).mean() + (diff < t).mean()) / 2 for t in cands]
    return float(cands[int(np.argmax(acc))])


def verification(same: np.ndarray, diff: np.ndarray, t: float, suffix: str) -> dict:
    """ROC AUC and balanced accuracy at ``t`` of same/different pair scores, keys ending in
    ``suffix``."""
    return {
        f"verify_auc{suffix}": auc(same, diff),
        f"verify_balanced_accuracy{suffix}": float(((same >= t).mean() + (diff < t).mean()) / 2),
        f"same_mean_cos{suffix}": float(same.mean()),
        f"different_mean_cos{suffix}": float(diff.mean()),
    }


def evaluate(predict: Predict, data: Batch, grid: int, threshold: float | None = None) -> dict:
    """Every measure on one fixed set; ``threshold`` None picks the best one on this set
    (validation), else it is applied (test)."""
    h, w = data.occluded.shape[2:]
    logits, emb_occ = run(predict, data.occluded.numpy())
    _, emb_clean = run(predict, data.clean.numpy())
    true = data.pattern.numpy()
    identities = data.identity.numpy()
    m = pattern_metrics(logits.argmax(1), true, grid, h, w)
    occluded = true != NO_OCCLUSION
    m["cos_clean_vs_occluded"] = float((emb_clean * emb_occ).sum(1)[occluded].mean())
    same, diff = pair_scores(emb_clean, emb_occ, identities)
    t = best_threshold(same, diff) if threshold is None else threshold
    m |= {
        "verify_threshold": t,
        **verification(same, diff, t, ""),
        # The copies above include the clean third (pattern 0, unchanged): the same measures
        # against truly occluded copies only, at the same threshold.
        **verification(*pair_scores(emb_clean, emb_occ, identities, occluded), t, "_occluded"),
        "samples": len(true),
        "identities": len(np.unique(identities)),
    }
    return m
