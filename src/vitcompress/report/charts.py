"""PNG charts (matplotlib, Agg backend): bits per layer, SQNR per layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitcompress.io import atomic_path


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * n + 2), 3.6), dpi=110)
    return plt, fig, ax


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically (tight layout) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def bar_chart(
    path: str | Path, labels: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str
) -> None:
    """Grouped bars, one group per label and one bar per series."""
    plt, fig, ax = _figure(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
