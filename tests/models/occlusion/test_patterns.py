"""Pattern table: count, encoding, boxes, IoU."""

from __future__ import annotations

import pytest

from models.occlusion.patterns import (
    NO_OCCLUSION,
    box_iou,
    pattern_box,
    pattern_count,
    pattern_id,
    pattern_table,
)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_count_is_triangular_squared_plus_one(k: int) -> None:
    table = pattern_table(k)
    assert len(table) == pattern_count(k) == (k * (k + 1) // 2) ** 2 + 1
    assert pattern_count(5) == 226
    assert table[NO_OCCLUSION] is None
    assert len(set(table)) == len(table)  # every rectangle once


def test_every_rectangle_of_whole_blocks_is_there_with_exclusive_ends() -> None:
    k = 5
    table = pattern_table(k)
    expected = {
        (r0, r1, c0, c1)
        for r0 in range(k)
        for r1 in range(r0 + 1, k + 1)
        for c0 in range(k)
        for c1 in range(c0 + 1, k + 1)
    }
    assert set(table[1:]) == expected
    for pid, blocks in enumerate(table):
        assert pattern_id(k, blocks) == pid


def test_box_in_pixels() -> None:
    pid = pattern_id(5, (2, 4, 0, 4))
    assert pattern_box(5, pid, 112, 96) == pytest.approx((0.0, 44.8, 76.8, 89.6))
    assert pattern_box(5, NO_OCCLUSION, 112, 96) is None
    full = pattern_id(5, (0, 5, 0, 5))
    assert pattern_box(5, full, 112, 96) == pytest.approx((0, 0, 96, 112))


def test_iou() -> None:
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou(None, None) == 1.0
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
