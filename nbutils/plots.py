"""Small plotting helpers shared by the stages (matplotlib, Agg-safe; each returns the Figure and can save it)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipykernel")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: str | Path | None, dpi: int = 120):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 30, path: str | Path | None = None,
              log: bool = False):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(list(values), bins=bins, color="#4C72B0", edgecolor="white", log=log)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    return save(fig, path)


def bar_counts(counts: dict[str, float], title: str, path: str | Path | None = None, xlabel: str = "count"):
    """Horizontal bars, largest first (drop reasons, skip reasons, ...)."""
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.4 * max(3, len(items)) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#55A868")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    return save(fig, path)
