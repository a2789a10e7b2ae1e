"""Pictures: the training curve and the perplexity histogram (matplotlib, the ``plot`` extra).

Figures are drawn off-screen (the Agg backend) and written atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from streamlm.data.atomic import atomic_path
from streamlm.errors import UsageError


def check_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed "
                         "(pip install 'streamlm[plot]' or pip install matplotlib)") from None


def plot_history(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Draw train (per log interval) and valid (per epoch) perplexity against epochs."""
    check_available()
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["epoch"], r["train_ppl"]) for r in history
          if r.get("kind") == "interval" and r.get("train_ppl") is not None]
    va = [(r["epoch"], r["valid_ppl"]) for r in history if r.get("valid_ppl") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    if tr:
        ax.plot(*zip(*tr), label="train (running, with dropout)", lw=1)
    if va:
        ax.plot(*zip(*va), "o-", label="valid (exact)", lw=1.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)


def plot_perplexity_histogram(values, cutoffs: Sequence[float], labels: Sequence[str],
                              path: str | os.PathLike, title: str = "") -> None:
    """A histogram of per-document perplexity (log x axis), the cut-offs marked and
    each bucket's share written above it."""
    check_available()
    import matplotlib
    import numpy as np

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    if len(v):
        lo, hi = float(v.min()), float(v.max())
        hi = hi if hi > lo else lo * 1.01 + 1e-9
        bins = np.geomspace(lo, hi, min(80, max(10, int(np.sqrt(len(v))))) + 1)
        heights, _, _ = ax.hist(v, bins=bins, color="#4c72b0", alpha=0.85)
        ax.set_ylim(0, max(1.0, float(np.max(heights))) * 1.3)  # room for the labels
        ax.set_xscale("log")
        edges = [lo, *cutoffs, hi]
        counts = np.bincount(np.searchsorted(np.asarray(cutoffs), v, side="right"),
                             minlength=len(cutoffs) + 1)
        for c in cutoffs:
            ax.axvline(c, color="#c44e52", lw=1.5, ls="--")
        top = ax.get_ylim()[1]
        for k, lab in enumerate(labels):
            a, b = max(edges[k], lo), min(edges[k + 1], hi)
            mid = float(np.sqrt(a * b)) if a > 0 and b > 0 else a
            ax.text(mid, top * 0.97, f"{lab}\n{100 * counts[k] / len(v):.0f}%",
                    ha="center", va="top", fontsize=9)
    ax.set_xlabel("perplexity per document (log scale)")
    ax.set_ylabel("documents")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)


def _save(fig, path) -> None:
    """Write the figure to path atomically (its format by the suffix, PNG without one)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, format=(Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)
