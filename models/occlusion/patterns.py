"""Occlusion patterns on a K x K grid over the aligned face (seed 001).

A pattern is "no occlusion" (id 0) or an axis-aligned rectangle of whole grid blocks,
``rows [row_start, row_end) x cols [col_start, col_end)``: K(K+1)/2 row spans times as many
column spans, so (K(K+1)/2)^2 + 1 patterns (226 for K = 5). The table is written into the
exported config.json, so the service decodes a pattern id without this module.
"""

from __future__ import annotations

from functools import cache

NO_OCCLUSION = 0  # pattern id of a clean face


@cache
def pattern_table(k: int) -> tuple[tuple[int, int, int, int] | None, ...]:
    """Every pattern of a k x k grid: index = pattern id; entry ``None`` (id 0) or
    ``(row_start, row_end, col_start, col_end)`` with exclusive ends."""
    spans = [(a, b) for a in range(k) for b in range(a + 1, k + 1)]
    table: list[tuple[int, int, int, int] | None] = [None]
    table += [(r0, r1, c0, c1) for r0, r1 in spans for c0, c1 in spans]
    return tuple(table)


def pattern_count(k: int) -> int:
    """(k(k+1)/2)^2 + 1."""
    return (k * (k + 1) // 2) ** 2 + 1


def pattern_id(k: int, blocks: tuple[int, int, int, int] | None) -> int:
    """Inverse of ``pattern_table``."""
    return pattern_table(k).index(blocks)


def pattern_box(
    k: int, pid: int, height: float, width: float
) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of pattern ``pid`` in pixels of a ``height x width`` face."""
    blocks = pattern_table(k)[pid]
    if blocks is None:
        return None
    r0, r1, c0, c1 = blocks
    return (c0 * width / k, r0 * height / k, c1 * width / k, r1 * height / k)


def box_iou(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes; two ``None`` (both clean) count as 1."""
    if a is None or b is None:
        return 1.0 if a is None and b is None else 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
