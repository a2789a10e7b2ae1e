"""Pictures: the training curve (matplotlib, the ``plot`` extra).

Figures are drawn off-screen (the Agg backend) and written atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from streamlm.atomic import atomic_path
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
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, format=(Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)
