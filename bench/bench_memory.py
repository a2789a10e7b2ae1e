"""Peak RSS of ``streamlm score`` on a 1M- and a 10M-token input.

    python -m bench.bench_memory [--sizes 1,11] [--extra "--reset line"]

Inputs are PTB train repeated k times (929,589 tokens each, so k=1 is about
1M and k=11 about 10M tokens), written under /tmp. The model is V=10000,
D=H=100 with PTB's vocabulary. Each run is a fresh process; its peak RSS is
ru_maxrss of the child. Writes bench/results/memory.json (with its provenance).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    CACHE,
    RESULTS,
    Shape,
    load_weights,
    provenance,
    ptb_text,
    ptb_vocab,
    this_command,
    weights_file,
)

PTB_TOKENS = 929_589


def ptb_model() -> Path:
    from streamlm.nn.params import ModelConfig, Params, save_model

    f = CACHE / "ptb_model_V10000_H100.npz"
    if not f.exists():
        w = load_weights(weights_file(Shape(10000, 100, 100)))
        p = Params.from_arrays(ModelConfig(V=10000, D=100, H=100), w)
        save_model(f, p, ptb_vocab())
    return f


def peak_rss(cmd: list[str]) -> tuple[float, float, str]:
    """(peak RSS MB, wall s, stdout) of cmd run in a fresh child of a fresh python."""
    probe = ("import resource, subprocess, sys, time, json\n"
             "t = time.perf_counter()\n"
             f"r = subprocess.run({cmd!r}, capture_output=True, text=True)\n"
             "dt = time.perf_counter() - t\n"
             "sys.stderr.write(r.stderr[-3000:])\n"
             "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt,"
             " r.returncode, r.stdout]))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    rss_kb, dt, rc, out = json.loads(r.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}):\n{r.stderr}")
    return rss_kb / 1024, dt, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,11", help="Copies of PTB train per input.")
    ap.add_argument("--extra", default="", help="Extra options for streamlm score.")
    ap.add_argument("--out", default=str(RESULTS / "memory.json"), help="JSON results.")
    args = ap.parse_args(argv)
    model = ptb_model()
    rows = []
    for k in (int(s) for s in args.sizes.split(",")):
        inp = ptb_text(k)
        cmd = [sys.executable, "-m", "streamlm", "score", str(model), str(inp), "--json",
               "--no-progress"] + shlex.split(args.extra)
        t0 = time.time()
        rss, wall, out = peak_rss(cmd)
        res = json.loads(out.strip().splitlines()[-1])
        tokens = PTB_TOKENS * k
        rows.append({"tokens": tokens, "rss_mb": rss, "wall_s": wall, "copies": k,
                     "summary": res, "started": t0})
        print(f"{tokens:>12,} tokens: peak RSS {rss:.0f} MB, {wall:.1f} s "
              f"({tokens / wall:,.0f} tok/s)", file=sys.stderr, flush=True)
    note = (f"`streamlm score MODEL INPUT --json --no-progress {args.extra}`; model V=10000, "
            f"D=H=100; inputs PTB train x k under {CACHE}.")
    if len(rows) >= 2:
        a, b = rows[0]["rss_mb"], rows[-1]["rss_mb"]
        note += f" Peak RSS ratio largest/smallest input: {b / a:.3f}."
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps({"rows": rows, "note": note, "provenance": provenance(
            this_command("bench_memory"), None)}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
