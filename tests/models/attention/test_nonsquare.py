"""models/attention/nonsquare.py: which canvases are cut, how they are fitted back, the counts."""

from __future__ import annotations

import numpy as np

from models.attention.data import Canvases
from models.attention.nonsquare import CROP, clear_crops, letterboxed, measure

SIZE = 64


def canvases() -> Canvases:
    """Four canvases: item 0 clear of every cut, 1 touching the top rows, 2 the left
    columns, 3 both; each canvas a distinct grey with a bright item."""
    boxes = np.array([[20, 20, 40, 40], [20, 2, 40, 30], [3, 20, 30, 40], [0, 0, 64, 64]])
    images = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        images[n] = 40 + 20 * n
        images[n, y0:y1, x0:x1] = 250
    return Canvases(images=images, labels=np.arange(4)[:, None], boxes=boxes[:, None])


def test_only_canvases_whose_item_the_cut_spares_are_kept() -> None:
    rows, row_crops = clear_crops(canvases(), "rows")
    cols, col_crops = clear_crops(canvases(), "cols")
    assert rows.tolist() == [0, 2] and row_crops.shape == (2, SIZE - 2 * CROP, SIZE, 3)
    assert cols.tolist() == [0, 1] and col_crops.shape == (2, SIZE, SIZE - 2 * CROP, 3)


def test_crops_are_fitted_back_with_black_or_edge_bars() -> None:
    _, crops = clear_crops(canvases(), "rows")
    black = letterboxed(crops, SIZE, [0, 0, 0], "constant")
    edge = letterboxed(crops, SIZE, [0, 0, 0], "edge")
    assert black.shape == edge.shape == (2, SIZE, SIZE, 3)
    assert (black[:, :CROP] == 0).all() and (black[:, -CROP:] == 0).all()
    np.testing.assert_array_equal(black[:, CROP:-CROP], crops)
    np.testing.assert_array_equal(edge[:, CROP:-CROP], crops)
    np.testing.assert_array_equal(edge[:, :CROP], np.repeat(crops[:, :1], CROP, axis=1))


def test_accuracies_and_paired_counts() -> None:
    """A classifier that is right unless the image has a black top-left pixel: square and
    edge-barred canvases right, black-barred ones wrong."""

    tone_to_label = {40 + 20 * n: n for n in range(4)}

    def predict(images: np.ndarray) -> np.ndarray:
        # The label read from the canvas's grey at the middle of its left edge.
        read = np.array([tone_to_label.get(int(i[SIZE // 2, 0, 0]), -2) for i in images])
        black = (images[:, 0, 0] == 0).all(axis=-1)
        return np.where(black, -1, read)

    results = measure(canvases(), predict, [0, 0, 0])
    for cut in ("rows", "cols"):
        r = results[cut]
        assert r["canvases"] == 2
        assert r["accuracy_square"] == r["accuracy_edge"] == 1.0
        assert r["accuracy_constant"] == 0.0
        assert (r["edge_only_right"], r["constant_only_right"]) == (2, 0)
    pooled = results["pooled"]
    assert pooled["canvases"] == 4 and pooled["edge_minus_constant"] == 1.0
    assert pooled["mcnemar_p"] == 2 / 16
