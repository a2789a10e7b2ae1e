"""Dynamic evaluation against static scoring: PTB test, another domain, and the cost.

    python -m bench.bench_dynamic MODEL [--reps 3] [--segment 100] [--stats-train-lines 4000]

MODEL is a model trained on PTB (its vocabulary: PTB's words). Every figure is a
whole ``streamlm score`` process as a user runs it, the state carried:

- PTB test, static against ``--dynamic auto --tune-on`` PTB valid (the step and
  decay tuned on valid, the gradients' RMS measured on the last ``--stats-train-lines``
  lines of PTB train, the model's training text: ``--dynamic-stats-on``);
- tinyshakespeare's last 10% of lines (another domain: a play, not the Wall Street
  Journal), static against dynamic tuned on the 10% of lines before it;
- the cost: the tokens/s of dynamic scoring (its settings fixed, the statistics read
  from the file the tuning wrote) against static scoring of the same text, the two
  in turn, medians of --reps.

Before any timing, the dynamic run with learning rate and decay 0 must give the
static run's perplexity (1e-6). Writes bench/results/dynamic.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import CACHE, RESULTS, SHARED, provenance, this_command
from streamlm.options import DYNAMIC_SEGMENT


def run(cmd: list[str]) -> tuple[dict, float]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "streamlm", "-q", *cmd, "--json"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stderr}")
    return json.loads(p.stdout), wall


def shakespeare() -> tuple[Path, Path]:
    """(the 10% of lines before the last 10%: the tuning text, the last 10%)."""
    lines = (SHARED / "tinyshakespeare" / "input.txt").read_text().splitlines()
    n = len(lines)
    CACHE.mkdir(parents=True, exist_ok=True)
    tune, test = CACHE / "shakespeare_tune.txt", CACHE / "shakespeare_test.txt"
    tune.write_text("\n".join(lines[int(0.8 * n):int(0.9 * n)]) + "\n")
    test.write_text("\n".join(lines[int(0.9 * n):]) + "\n")
    return tune, test


def train_tail(directory: str, lines: int) -> Path:
    """The last ``lines`` lines of PTB train written to ``directory`` (the model's
    training text, for --dynamic-stats-on)."""
    with gzip.open(SHARED / "ptb" / "ptb.train.txt.gz", "rt", encoding="utf-8") as f:
        tail = f.readlines()[-lines:]
    out = Path(directory) / "train_tail.txt"
    out.write_text("".join(tail))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--segment", type=int, default=DYNAMIC_SEGMENT)
    ap.add_argument("--stats-train-lines", type=int, default=4000,
                    help="measure the gradients' RMS on the last N lines of PTB train (the "
                         "model's training text, --dynamic-stats-on); 0: on each tuning "
                         "text (--tune-on)")
    ap.add_argument("--out", default=str(RESULTS / "dynamic.json"))
    a = ap.parse_args(argv)
    ptb = SHARED / "ptb"
    sh_tune, sh_test = shakespeare()
    seg = ["--dynamic-segment", str(a.segment)]
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        stats_on = []
        if a.stats_train_lines:
            stats_on = ["--dynamic-stats-on", str(train_tail(d, a.stats_train_lines))]
        for name, test, tune in (("ptb", ptb / "ptb.test.txt", ptb / "ptb.valid.txt"),
                                 ("shakespeare", sh_test, sh_tune)):
            stats = Path(d) / f"{name}.stats.npz"
            static, _ = run(["score", a.model, str(test)])
            zero, _ = run(["score", a.model, str(test), "--dynamic", "sgd", "--dynamic-lr",
                           "0", "--dynamic-decay", "0", *seg])
            if not math.isclose(zero["logprob"], static["logprob"], rel_tol=1e-6):
                raise SystemExit(f"{name}: dynamic at lr 0 gives {zero['logprob']}, static "
                                 f"{static['logprob']}")
            dyn, _ = run(["score", a.model, str(test), "--dynamic", "auto", "--tune-on",
                          str(tune), *stats_on, "--dynamic-stats", str(stats), *seg])
            sgd, _ = run(["score", a.model, str(test), "--dynamic", "sgd", *seg])
            rows[name] = {"tokens": static["tokens"], "static_perplexity": static["perplexity"],
                          "dynamic_perplexity": dyn["perplexity"], "dynamic": dyn["dynamic"],
                          "change": dyn["perplexity"] / static["perplexity"] - 1,
                          "sgd_perplexity": sgd["perplexity"],
                          "static_perplexity_excl_oov": static["perplexity_excl_oov"],
                          "dynamic_perplexity_excl_oov": dyn["perplexity_excl_oov"]}
            print(f"{name}: static {static['perplexity']:.2f}, dynamic {dyn['perplexity']:.2f} "
                  f"({100 * rows[name]['change']:+.1f}%; lr {dyn['dynamic']['lr']:g}, decay "
                  f"{dyn['dynamic']['decay']:g}), sgd {sgd['perplexity']:.2f}", flush=True)
            if name == "ptb":  # the cost, on PTB test: the settings found, stats read back
                fixed = ["--dynamic", "rms", "--dynamic-stats", str(stats), "--dynamic-lr",
                         str(dyn["dynamic"]["lr"]), "--dynamic-decay",
                         str(dyn["dynamic"]["decay"]), *seg]
                walls = {"static": [], "dynamic": []}
                for _ in range(a.reps):
                    walls["static"].append(run(["score", a.model, str(test)])[1])
                    walls["dynamic"].append(run(["score", a.model, str(test), *fixed])[1])
                med = {k: float(np.median(v)) for k, v in walls.items()}
                rows["cost"] = {"walls": walls, "dynamic_over_static": med["dynamic"] /
                                med["static"], "static_tok_s": static["tokens"] / med["static"],
                                "dynamic_tok_s": static["tokens"] / med["dynamic"]}
                print(f"cost: dynamic {med['dynamic']:.2f} s against static {med['static']:.2f} "
                      f"s ({rows['cost']['dynamic_over_static']:.2f}x)", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**provenance(this_command("bench_dynamic"), threads=None), "model": a.model,
            "stats_on": (f"the last {a.stats_train_lines} lines of PTB train"
                         if a.stats_train_lines else "each tuning text"),
            "targets": {"ptb": -0.08, "shakespeare": -0.15, "cost": 4.0}, **rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
