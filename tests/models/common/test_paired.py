"""models/common/paired.py: McNemar's exact test and the paired interval, by hand."""

from __future__ import annotations

from models.common.paired import mcnemar_exact, paired_difference_ci95


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(4, 4) == 1.0
    assert mcnemar_exact(0, 5) == 2 / 32  # both tails of Binomial(5, 1/2) at the extremes
    assert mcnemar_exact(3, 0) == mcnemar_exact(0, 3) == 2 / 8
    # 10 against 2: P(X <= 2) for X ~ Binomial(12, 1/2) = (1 + 12 + 66) / 4096, doubled.
    assert abs(mcnemar_exact(10, 2) - 2 * 79 / 4096) < 1e-12


def test_paired_difference_ci95_by_hand() -> None:
    # 189 only first, 158 only second of 10 000: difference 31 / 10 000, variance
    # (347 - 31^2 / 10 000) / 10 000^2.
    low, high = paired_difference_ci95(189, 158, 10_000)
    half = 1.959963984540054 * (347 - 31**2 / 10_000) ** 0.5 / 10_000
    assert abs(low - (0.0031 - half)) < 1e-12 and abs(high - (0.0031 + half)) < 1e-12
    assert low < 0 < high  # McNemar p 0.11 there: the interval holds zero
    # Ten times the garments, the same proportions: about sqrt(10) narrower, above zero.
    low10, high10 = paired_difference_ci95(1890, 1580, 100_000)
    assert low10 > 0 and 3.1 < (high - low) / (high10 - low10) < 3.25
    assert paired_difference_ci95(0, 0, 50) == (0.0, 0.0)
    # All discordant one way: the interval sits on the difference.
    assert paired_difference_ci95(5, 0, 5) == (1.0, 1.0)
