"""Validation perplexity against wall time: streamlm's training log beside
PyTorch's run of the same recipe (bench/torch_lm.py), one panel per budget.

    python -m bench.plot_curves \\
        --pair results/lstm2x200_ptb30_log.jsonl results/torch_lstm2x200_ptb30.json \\
        --pair results/lstm2x400_ptb120_log.jsonl results/torch_lstm2x400_ptb120.json \\
        --test 90.13 --test 78.77 --note "both on an Intel Xeon" \\
        --note "streamlm on an Intel Xeon, PyTorch on an AMD EPYC" \\
        --out bench/figures/lstm_vs_torch_curves.png

The streamlm log is what ``streamlm train --log`` writes (records of kind
"epoch" and the last one, "stop", each with ``valid_ppl`` and ``elapsed_s``);
the PyTorch file holds its ``curve`` (``valid_ppl``, ``elapsed_s`` per epoch),
its options and the test perplexity of its best model. Both are read as they
are: nothing is re-run here. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import FIGURES, REPO


def streamlm_curve(path: Path) -> tuple[list[tuple[float, float]], float]:
    """(minutes, validation perplexity) at every epoch end and at the stop, and
    the epochs trained."""
    out, epochs = [], 0.0
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") in ("epoch", "stop") and r.get("valid_ppl") is not None:
            out.append((r["elapsed_s"] / 60.0, r["valid_ppl"]))
            epochs = r["epoch"]
    if not out:
        raise SystemExit(f"{path}: no validation perplexity in this log")
    return out, epochs


def torch_curve(path: Path) -> tuple[list[tuple[float, float]], dict]:
    r = json.loads(path.read_text())
    return [(c["elapsed_s"] / 60.0, c["valid_ppl"]) for c in r["curve"]], r


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True,
                    metavar=("STREAMLM_LOG", "TORCH_JSON"),
                    help="paths relative to bench/ or absolute")
    ap.add_argument("--test", type=float, action="append", default=[],
                    help="streamlm's test perplexity for each pair, in order (for the legend)")
    ap.add_argument("--note", action="append", default=[],
                    help="a second title line for each pair, in order (e.g. the machines)")
    ap.add_argument("--out", default=str(FIGURES / "lstm_vs_torch_curves.png"))
    a = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def find(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() or q.exists() else REPO / "bench" / q

    fig, axes = plt.subplots(1, len(a.pair), figsize=(5.5 * len(a.pair), 4.2), squeeze=False)
    for k, (ax, (ours, theirs)) in enumerate(zip(axes[0], a.pair)):
        s, epochs = streamlm_curve(find(ours))
        test = f"; test {a.test[k]:.2f}" if k < len(a.test) else ""
        t, tr = torch_curve(find(theirs))
        o = tr["options"]
        ax.plot(*zip(*s), "o-", ms=3, label=f"streamlm ({epochs:.1f} epochs{test})")
        ax.plot(*zip(*t), "s-", ms=3, label=f"PyTorch {tr['torch'].split('+')[0]} "
                f"({tr['epochs']} epochs; test {tr['test_ppl']:.2f})")
        ax.set_ylim(min(p for _, p in s + t) * 0.97, 160)
        ax.set_xlabel("wall time, minutes (2 cores)")
        ax.set_ylabel("PTB validation perplexity")
        ax.set_title(f"{o['layers']}×{o['hidden']} {o['model']}, tied, dropout {o['dropout']:g}, "
                     f"{o['minutes']:g} min" + (f"\n{a.note[k]}" if k < len(a.note) else ""),
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    from streamlm.data.atomic import atomic_path

    with atomic_path(a.out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
