"""Start-up and compile time: wall time of whole processes.

    python -m bench.bench_startup [--runs 5]

Rows (each a fresh process, median of --runs):
- ``import streamlm.nn.model; warmup()`` with a warm kernel cache, and cold
  (NUMBA_CACHE_DIR pointed at a fresh empty directory: every kernel compiles);
- ``streamlm score MODEL one-line.txt`` warm and cold, when the score command
  exists (V=10000, D=H=100 model written under /tmp);
- ``python -c "import streamlm.cli.app"`` and ``streamlm --help`` (import cost).
Writes bench/results/startup.json (with its provenance).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    CACHE,
    RESULTS,
    Shape,
    load_weights,
    provenance,
    this_command,
    weights_file,
)


def model_file() -> Path:
    """A V=10000, D=H=100 streamlm model file (PTB-like vocabulary)."""
    from streamlm.nn.params import ModelConfig, Params, save_model

    f = CACHE / "startup_model_V10000_H100.npz"
    if not f.exists():
        w = load_weights(weights_file(Shape(10000, 100, 100)))
        p = Params.from_arrays(ModelConfig(V=10000, D=100, H=100), w)
        vocab = ["<unk>", "<eos>"] + [f"w{i}" for i in range(2, 10000)]
        save_model(f, p, vocab)
    return f


_CPU = []  # CPU seconds (user + sys) of the last timed child


def timed(cmd: list[str], env: dict) -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="Runs per row (median reported).")
    ap.add_argument("--cold-runs", type=int, default=2, help="Runs per cold-cache row.")
    ap.add_argument("--out", default=str(RESULTS / "startup.json"), help="JSON results.")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    py = sys.executable
    warm_cmd = [py, "-c", "import streamlm.nn.model as m; m.warmup()"]
    rows = []

    def row(name, cmd, cache, runs):
        ts = []
        del _CPU[:]
        for _ in range(runs):
            e = dict(env)
            if cache == "cold":
                d = tempfile.mkdtemp(prefix="streamlm_numba_cold_")
                e["NUMBA_CACHE_DIR"] = d
            ts.append(timed(cmd, e))
        rows.append({"cmd": name, "cache": cache, "median_s": float(np.median(ts)),
                     "n": runs, "all_s": ts, "cpu_s": float(np.median(_CPU))})
        print(f"{name:60s} {cache:5s} {np.median(ts):6.2f} s  {' '.join(f'{t:.2f}' for t in ts)}",
              file=sys.stderr, flush=True)

    row("python -c 'import numpy'", [py, "-c", "import numpy"], "-", args.runs)
    row("python -c 'import streamlm.cli.app'", [py, "-c", "import streamlm.cli.app"], "-",
        args.runs)
    timed(warm_cmd, env)  # make sure the default cache is warm
    row("python -c 'import streamlm.nn.model; streamlm.nn.model.warmup()'", warm_cmd, "warm",
        args.runs)
    row("python -c 'import streamlm.nn.model; streamlm.nn.model.warmup()'", warm_cmd, "cold",
        args.cold_runs)
    has_score = subprocess.run([py, "-m", "streamlm", "score", "--help"],
                               capture_output=True).returncode == 0
    note = ""
    if has_score:
        mf = model_file()
        inp = CACHE / "one_line.txt"
        inp.write_text("w2 w3 w4 w5 w6 w7 w8 w9\n")
        cmd = [py, "-m", "streamlm", "score", str(mf), str(inp)]
        timed(cmd, env)
        row("streamlm score MODEL one-line.txt (V=10000, D=H=100)", cmd, "warm", args.runs)
        row("streamlm score MODEL one-line.txt (V=10000, D=H=100)", cmd, "cold", args.cold_runs)
        cmd = cmd + ["--engine", "numba"]
        timed(cmd, env)
        row("streamlm score --engine numba MODEL one-line.txt", cmd, "warm", args.runs)
        row("streamlm score --engine numba MODEL one-line.txt", cmd, "cold", args.cold_runs)
    else:
        note = "`streamlm score` not available yet: only warmup() measured."
    out = {"rows": rows, "note": note, "threads": os.environ.get("NUMBA_NUM_THREADS", "default"),
           "provenance": provenance(this_command("bench_startup"), None)}
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
