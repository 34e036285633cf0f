"""Training plots saved beside the model cards (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_curves(
    path: Path,
    x: Sequence[float],
    left: dict[str, Sequence[float]],
    right: dict[str, Sequence[float]] | None = None,
    title: str = "",
    xlabel: str = "epoch",
) -> None:
    """Losses on the left panel (log scale), validation metrics on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if right else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for name, ys in left.items():
        axes[0, 0].plot(x, ys, label=name)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_xlabel(xlabel)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].grid(alpha=0.3)
    if right:
        for name, ys in right.items():
            axes[0, 1].plot(x, ys, label=name)
        axes[0, 1].set_xlabel(xlabel)
        axes[0, 1].set_ylim(0, 1.01)
        axes[0, 1].legend(fontsize=8)
        axes[0, 1].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(
    path: Path, groups: Sequence[str], series: dict[str, Sequence[float]], title: str = ""
) -> None:
    """Grouped bars: one group per variant, one bar per metric, values printed on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(groups)), 4))
    for i, (name, ys) in enumerate(series.items()):
        bars = ax.bar(x + i * width - 0.4 + width / 2, ys, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, groups, fontsize=8)
    lo = min(min(ys) for ys in series.values())
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
