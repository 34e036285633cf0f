"""Two classifiers compared on the same samples: discordant counts, McNemar's exact test and
the paired difference's interval (used by the gender and attention measurements)."""

from __future__ import annotations

import math

import numpy as np


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
