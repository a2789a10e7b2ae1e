"""Dynamic evaluation's segment length: perplexity against cost, on PTB.

    python -m bench.bench_dynamic_segment MODEL [--segments 10 20 50 100]
        [--lrs 4e-4 8e-4 1.6e-3] [--reps 2] [--chart bench/figures/dynamic_segment.png]

MODEL is a model trained on PTB. For each segment length K (tokens per update), as a
user runs it, every figure a whole ``streamlm score`` process, the state carried:

- the gradients' RMS measured with segments of K on PTB valid, or with
  ``--stats-train-lines N`` on the last N lines of PTB train (``--dynamic-stats-on``), then
  the step chosen among ``--lrs`` by PTB valid's perplexity (at ``--decay``, 0 by
  default: what ``--dynamic auto`` chose for the 2x200 LSTM at K = 20,
  bench/results/dynamic.json);
- PTB test scored with it, and its wall time against static scoring of PTB test, the
  two in turn, medians of --reps.

A step adapts the whole model (2.7M weights for the 2x200 LSTM of docs/training.md,
2M of them the output layer): the step's cost is per segment, the forward and the
backward's per token. Before any timing, dynamic scoring at learning rate 0 must give
the static run's perplexity (1e-6). Writes bench/results/dynamic_segment.json and the
chart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from bench.bench_dynamic import run, train_tail
from bench.common import RESULTS, SHARED, provenance, this_command


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = [r["dynamic_over_static"] for r in rows]
    y = [r["test_perplexity"] for r in rows]
    ax.plot(x, y, "o-", color="C0", label="dynamic (RMS), segment K tokens")
    for r, xi, yi in zip(rows, x, y):
        ax.annotate(f"K={r['segment']}", (xi, yi), textcoords="offset points", xytext=(6, 4))
    ax.axhline(rows[0]["static_perplexity"], color="C3", ls="--",
               label=f"static {rows[0]['static_perplexity']:.2f}")
    ax.axvline(4.0, color="grey", ls=":", label="4x static (the target)")
    ax.set_xlabel("wall time against static scoring (x), whole processes, 2 threads")
    ax.set_ylabel("PTB test perplexity")
    ax.set_title("Dynamic evaluation: segment length, cost and perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--segments", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--lrs", type=float, nargs="+", default=[4e-4, 8e-4, 1.6e-3])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--decay", type=float, default=0.0,
                    help="--dynamic-decay of every run (0: what --dynamic auto chose for the "
                         "2x200 LSTM; a class model chose 1e-3)")
    ap.add_argument("--stats-train-lines", type=int, default=0,
                    help="measure the gradients' RMS on the last N lines of PTB train (the "
                         "model's training text, as Krause et al. do) instead of on PTB "
                         "valid (0)")
    ap.add_argument("--out", default=str(RESULTS / "dynamic_segment.json"))
    ap.add_argument("--chart", default=str(RESULTS.parent / "figures" / "dynamic_segment.png"))
    a = ap.parse_args(argv)
    ptb = SHARED / "ptb"
    valid, test = str(ptb / "ptb.valid.txt"), str(ptb / "ptb.test.txt")
    static, _ = run(["score", a.model, test])
    zero, _ = run(["score", a.model, test, "--dynamic", "sgd", "--dynamic-lr", "0"])
    if not math.isclose(zero["logprob"], static["logprob"], rel_tol=1e-6):
        raise SystemExit(f"dynamic at lr 0 gives {zero['logprob']}, static {static['logprob']}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        stats_on = valid
        if a.stats_train_lines:
            stats_on = str(train_tail(d, a.stats_train_lines))
        for K in a.segments:
            seg = ["--dynamic", "rms", "--dynamic-segment", str(K), "--dynamic-decay", str(a.decay)]
            stats = str(Path(d) / f"stats{K}.npz")
            tuned = {}
            for lr in a.lrs:  # (the first run measures the statistics and saves them)
                extra = ["--dynamic-stats-on", stats_on, "--tune-on", valid] if not tuned else []
                r, _ = run(["score", a.model, valid, *seg, "--dynamic-stats", stats,
                            "--dynamic-lr", str(lr), *extra])
                tuned[lr] = r["perplexity"]
            lr = min(tuned, key=tuned.get)
            fixed = [*seg, "--dynamic-stats", stats, "--dynamic-lr", str(lr)]
            walls: dict[str, list[float]] = {"static": [], "dynamic": []}
            for _ in range(a.reps):
                walls["static"].append(run(["score", a.model, test])[1])
                dyn, w = run(["score", a.model, test, *fixed])
                walls["dynamic"].append(w)
            med = {k: float(np.median(v)) for k, v in walls.items()}
            row = {"segment": K, "valid_perplexity_by_lr": tuned, "lr": lr, "decay": a.decay,
                   "stats_on": ("PTB valid" if not a.stats_train_lines
                                else f"the last {a.stats_train_lines} lines of PTB train"),
                   "test_perplexity": dyn["perplexity"],
                   "static_perplexity": static["perplexity"],
                   "change": dyn["perplexity"] / static["perplexity"] - 1, "walls": walls,
                   "dynamic_over_static": med["dynamic"] / med["static"],
                   "tokens": static["tokens"]}
            rows.append(row)
            print(f"K={K}: lr {lr:g} (valid {tuned[lr]:.2f}), test {dyn['perplexity']:.2f} "
                  f"({100 * row['change']:+.1f}%), {med['dynamic']:.2f} s against static "
                  f"{med['static']:.2f} s ({row['dynamic_over_static']:.2f}x)", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**provenance(this_command("bench_dynamic_segment"), threads=None),
            "model": a.model, "target_cost": 4.0, "rows": rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out)
    chart(rows, Path(a.chart))


if __name__ == "__main__":
    main()
