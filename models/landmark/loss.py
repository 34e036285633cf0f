"""Seed 000's losses with seed 004's three training improvements, each switchable.

Targets are assigned per cell and anchor node:
- positive cells: the cell that contains a landmark's reference point, plus (seed 004 #2,
  centre sampling) every cell whose centre lies within a scale-aware radius of the point;
- in a positive cell the anchor with the highest predicted confidence takes the nearest
  landmark (seed 000 claim 11), the next anchor the next landmark, and so on;
- background cells: all other cells, except those inside an ignore region around a mined
  probable-unlabelled landmark (seed 004 #1), which are left out of the background loss.

Losses (all means, so their scale does not depend on how many landmarks a batch holds):
- class loss = positive-anchor loss + background-anchor cross-entropy (claims 4-6). The
  positive loss is per class, ``sum_k S[y, k] * l_k`` with ``l_y = -log p_y`` and
  ``l_k = -log(1 - p_k)`` for the other classes; ``S`` is the class-similarity matrix of seed
  004 #3 (all ones when switched off, so every confusion costs the same);
- confidence loss: binary cross-entropy, 1 for assigned anchors, 0 for background anchors
  and for the unassigned anchors of positive cells;
- localisation loss over assigned anchors only (claims 8-9): smooth-L1 point error in cells,
  multiplied by the detached predicted probability of the true class (claims 13-14), so a
  cell that does not yet recognise its landmark moves the point less.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.landmark.scenes import LABELS

# Pairs of classes that look alike, with the cost of confusing them (1 = unrelated).
# Red-bordered white signs, red round signs and blue signs share colour and outline at
# 12 px; the value is lower the more alike the pair is.
SIMILAR_PAIRS: dict[tuple[str, str], float] = {
    ("yield", "warning"): 0.4,
    ("stop", "no_entry"): 0.5,
    ("speed_limit", "no_entry"): 0.6,
    ("speed_limit", "warning"): 0.7,
    ("speed_limit", "yield"): 0.7,
    ("stop", "speed_limit"): 0.8,
    ("mandatory_direction", "pedestrian_crossing"): 0.5,
}


def similarity_matrix(enabled: bool = True) -> torch.Tensor:
    """(K, K+1) costs: row = true class, column = predicted class; background column 1."""
    k = len(LABELS)
    s = torch.ones(k, k + 1)
    if enabled:
        for (a, b), v in SIMILAR_PAIRS.items():
            i, j = LABELS.index(a), LABELS.index(b)
            s[i, j] = s[j, i] = v
    return s


@dataclass(frozen=True)
class LossConfig:
    center_sampling: bool = True  # seed 004 #2: cells near the point are positives too
    similarity: bool = True  # seed 004 #3: class-similarity costs for positives
    # Centre-sampling radius is a quarter of the landmark's width, kept between half a
    # cell (a small sign still gets its own cell) and 1.5 cells (a large one gets ~9).
    radius_scale: float = 0.25
    radius_min_cells: float = 0.5
    radius_max_cells: float = 1.5
    ignore_radius_cells: float = 1.5  # cells around a mined point left out of background
    class_weighted_localization: bool = True  # seed 000 claims 13-14


@dataclass
class Targets:
    positive: torch.Tensor  # (N, C, A) bool: anchors assigned a landmark
    background: torch.Tensor  # (N, C, A) bool: anchors of background cells (class loss)
    conf_negative: torch.Tensor  # (N, C, A) bool: anchors whose confidence target is 0
    classes: torch.Tensor  # (N, C, A) long: class of positives, background elsewhere
    points: torch.Tensor  # (N, C, A, 2) reference points of positives, input pixels


def assign(
    labels: list[torch.Tensor],
    ignore: list[torch.Tensor],
    confidence_logits: torch.Tensor,
    centres: torch.Tensor,
    stride: int,
    config: LossConfig,
) -> Targets:
    """Targets for a batch. labels[i]: (n, 4) class, x, y, width; ignore[i]: (m, 2) x, y.

    ``confidence_logits`` (N, C, A) picks the anchor per cell; ``centres`` (C, 2) are the
    cell centres in input pixels.
    """
    n, c, a = confidence_logits.shape
    k = len(LABELS)
    g = round(c**0.5)
    positive = torch.zeros(n, c, a, dtype=torch.bool)
    classes = torch.full((n, c, a), k, dtype=torch.long)
    points = torch.zeros(n, c, a, 2)
    cell_is_positive = torch.zeros(n, c, dtype=torch.bool)
    cell_is_ignored = torch.zeros(n, c, dtype=torch.bool)
    conf = confidence_logits.detach()
    for i in range(n):
        gt = labels[i]
        if len(ignore[i]):
            d_ign = torch.cdist(ignore[i][:, :2].float(), centres)  # (m, C)
            cell_is_ignored[i] = (d_ign <= config.ignore_radius_cells * stride).any(0)
        if not len(gt):
            continue
        xy = gt[:, 1:3]
        dist = torch.cdist(xy, centres)  # (n_gt, C)
        col = (xy[:, 0] / stride).long().clamp(0, g - 1)
        row = (xy[:, 1] / stride).long().clamp(0, g - 1)
        member = torch.zeros_like(dist, dtype=torch.bool)
        member[torch.arange(len(gt)), row * g + col] = True
        if config.center_sampling:
            radius = (gt[:, 3] * config.radius_scale).clamp(
                config.radius_min_cells * stride, config.radius_max_cells * stride
            )
            member |= dist <= radius[:, None]
        cells = member.any(0).nonzero().flatten()
        cell_is_positive[i, cells] = True
        masked = torch.where(member[:, cells], dist[:, cells], torch.inf)  # (n_gt, cells)
        order = masked.argsort(0)  # nearest landmark first, per cell
        anchor_order = conf[i, cells].argsort(-1, descending=True)  # (cells, A)
        for rank in range(min(a, len(gt))):
            gt_idx = order[rank]
            valid = torch.isfinite(masked[gt_idx, torch.arange(len(cells))])
            if not valid.any():
                break
            cc, anchor = cells[valid], anchor_order[valid, rank]
            positive[i, cc, anchor] = True
            classes[i, cc, anchor] = gt[gt_idx[valid], 0].long()
            points[i, cc, anchor] = xy[gt_idx[valid]]
    background_cells = ~cell_is_positive & ~cell_is_ignored
    background = background_cells[:, :, None].expand(n, c, a)
    conf_negative = background | (cell_is_positive[:, :, None] & ~positive)
    return Targets(positive, background.clone(), conf_negative, classes, points)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.sum()


def landmark_loss(
    out: dict[str, torch.Tensor],
    targets: Targets,
    similarity: torch.Tensor,
    stride: int,
    config: LossConfig,
) -> dict[str, torch.Tensor]:
    """The three loss terms for a batch; the caller weights them (class before localisation)."""
    logp = out["class_logits"].log_softmax(-1)  # (N, C, A, K+1)
    pos, bg = targets.positive, targets.background
    y = targets.classes[pos]  # (P,)
    logp_pos = logp[pos]  # (P, K+1)
    p_pos = logp_pos.exp()
    per_class = -torch.log1p(-p_pos.clamp(max=1 - 1e-6))  # l_k = -log(1 - p_k)
    true_term = -logp_pos.gather(1, y[:, None])
    per_class = per_class.scatter(1, y[:, None], true_term)  # l_y = -log p_y
    class_pos = _mean((similarity[y] * per_class).sum(-1))
    class_bg = _mean(-logp[..., -1][bg])

    conf = out["confidence_logits"]
    conf_pos = F.binary_cross_entropy_with_logits(conf[pos], torch.ones_like(conf[pos]))
    conf_neg_logits = conf[targets.conf_negative]
    conf_neg = F.binary_cross_entropy_with_logits(
        conf_neg_logits, torch.zeros_like(conf_neg_logits)
    )

    err = F.smooth_l1_loss(
        out["points"][pos] / stride, targets.points[pos] / stride, reduction="none", beta=0.1
    ).sum(-1)  # (P,) in cells
    weight = p_pos.gather(1, y[:, None]).squeeze(1).detach()
    if not config.class_weighted_localization:
        weight = torch.ones_like(weight)
    return {
        "class": class_pos + class_bg,
        "confidence": (conf_pos if pos.any() else conf.sum() * 0) + conf_neg,
        "localization": _mean(weight * err),
    }
