from __future__ import annotations

import numpy as np

from models.gender.evaluate import f_measure


def _squares(n: int = 4, size: int = 40) -> np.ndarray:
    edges = np.zeros((n, size, size), bool)
    for i in range(n):
        a, b = 5 + i, 30 - i
        edges[i, a, a:b] = edges[i, b, a:b] = edges[i, a:b, a] = edges[i, a:b, b] = True
    return edges


def test_perfect_and_slightly_shifted_maps_score_near_one() -> None:
    ref = _squares()
    assert f_measure(ref.astype(np.float32), ref)["ods_f"] == 1.0
    shifted = np.roll(ref, 1, axis=2).astype(np.float32) * 0.8
    result = f_measure(shifted, ref)
    assert result["ods_f"] > 0.95
    assert result["threshold"] <= 0.8


def test_noise_and_blank_maps_score_low() -> None:
    ref = _squares()
    rng = np.random.default_rng(0)
    # Thinned noise lies within 2 px of these dense squares often; still far below a map.
    assert f_measure(rng.random(ref.shape).astype(np.float32), ref)["ods_f"] < 0.6
    assert f_measure(np.zeros(ref.shape, np.float32), ref)["ods_f"] == 0.0


def test_best_threshold_is_chosen_over_the_whole_set() -> None:
    ref = _squares()
    pred = ref.astype(np.float32) * 0.9
    pred[:, 15:20, 15:20] = 0.5  # a blob inside every square, weaker than the edges
    result = f_measure(pred, ref)
    assert result["threshold"] > 0.5 and result["ods_f"] == 1.0
