"""The Python API on PTB test sentences: ``streamlm.Model.score_batch`` against a
Python loop of ``streamlm.Model.score`` and against the ``kenlm`` module's
``Model.score`` loop (the PTB KN5 model), in one process.

    python -m bench.bench_api MODEL.npz [--reps 3] [--threads 1] [--sentences N]

- Answers first: ``score_batch`` equals the ``score`` loop sentence by sentence
  within 1e-4 (log10) for each engine, and the ``kenlm`` module's sentence scores
  equal the ``Total:`` lines of KenLM's own ``query`` binary within 1e-4 (their
  sum too), or the script stops.
- Speed: each peer scores all the sentences (``<s>`` ... ``</s>``, as ``score``
  does by default); the peers in turn, rotated each repetition, medians of
  ``--reps``; sentences/s and tokens/s (``</s>`` counted, as KenLM does), and
  each peer's ratio to the ``kenlm`` loop and to the streamlm ``score`` loop
  from the same run. Every library runs on ``--threads`` threads (the kenlm
  module has one). Model loading is outside the timings.

Writes bench/results/api.json with its provenance (bench/report.py turns it into a
section of bench/results/REPORT.md). Skips with a message when the ``kenlm`` module or
the KenLM files are absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, provenance, this_command


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sentences", type=int, default=0, help="the first N of PTB test (0: all)")
    ap.add_argument("--out", default=str(RESULTS / "api.json"))
    args = ap.parse_args(argv)
    for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(args.threads)

    import numpy as np

    from bench.bench_kenlm import KENLM, PTB_TEST, kn5_binary
    from bench.common import CACHE

    try:
        import kenlm
    except ImportError:
        print("the kenlm module is not installed (pip install kenlm): skipped", file=sys.stderr)
        return
    if not (KENLM / "bin" / "query").exists():
        print(f"KenLM not found under {KENLM}: skipped", file=sys.stderr)
        return
    import streamlm

    CACHE.mkdir(parents=True, exist_ok=True)
    binary = kn5_binary()
    sentences = PTB_TEST.read_text().splitlines()
    if args.sentences:
        sentences = sentences[:args.sentences]
    n_sent = len(sentences)
    n_tok = sum(len(s.split()) + 1 for s in sentences)

    # -- answers first ----------------------------------------------------------
    kn = kenlm.Model(str(binary))
    q = subprocess.run([str(KENLM / "bin" / "query"), "-v", "sentence", str(binary)],
                       input="\n".join(sentences) + "\n", capture_output=True, text=True,
                       check=True)
    totals = np.array([float(x.split()[1]) for x in q.stdout.splitlines()
                       if x.startswith("Total:")])
    kn_loop = np.array([kn.score(s) for s in sentences])
    if len(totals) != n_sent or np.abs(kn_loop - totals).max() > 1e-4:
        raise SystemExit("kenlm module's scores differ from KenLM query's Total: lines")
    if abs(kn_loop.sum() - totals.sum()) > 1e-6 * abs(totals.sum()):  # query: 7 digits a line
        raise SystemExit(f"kenlm total {kn_loop.sum()} != query total {totals.sum()}")
    models = {e: streamlm.Model(args.model, engine=e) for e in ("numba", "numpy")}
    errs = {}
    for e, m in models.items():
        batch = m.score_batch(sentences)
        loop = np.array([m.score(s) for s in sentences])
        errs[e] = float(np.abs(batch - loop).max())
        if errs[e] > 1e-4:
            raise SystemExit(f"{e}: score_batch differs from the score loop by {errs[e]:.2e}")
    print(f"answers agree: batch vs loop max |diff| {errs}; kenlm vs query "
          f"{np.abs(kn_loop - totals).max():.1e}, total log10 {kn_loop.sum():.4f}",
          file=sys.stderr)

    # -- speed --------------------------------------------------------------------
    peers = {
        "streamlm score_batch (numba)": lambda: models["numba"].score_batch(sentences),
        "streamlm score_batch (numpy)": lambda: models["numpy"].score_batch(sentences),
        "streamlm score loop (numba)": lambda: [models["numba"].score(s) for s in sentences],
        "streamlm score loop (numpy)": lambda: [models["numpy"].score(s) for s in sentences],
        "kenlm module score loop (KN5)": lambda: [kn.score(s) for s in sentences],
    }
    names = list(peers)
    walls: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(args.reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            peers[name]()
            walls[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in walls.items()}
    kn_s = med["kenlm module score loop (KN5)"]
    loop_s = med["streamlm score loop (numba)"]
    cfg = models["numba"].config
    res = {"model": str(args.model), "softmax": cfg.softmax, "D": cfg.D, "H": cfg.H,
           "V": cfg.V, "C": cfg.C, "threads": args.threads, "reps": args.reps,
           "sentences": n_sent, "tokens": n_tok, "text": str(PTB_TEST),
           "check": {"batch_vs_loop_max_abs_log10": errs,
                     "kenlm_vs_query_max_abs_log10": float(np.abs(kn_loop - totals).max()),
                     "kenlm_total_log10": float(kn_loop.sum()),
                     "query_total_log10": float(totals.sum())},
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "loadavg": os.getloadavg()[0]},
           "peers": [], "provenance": provenance(this_command("bench_api"), args.threads)}
    for name in names:
        s = med[name]
        row = {"name": name, "median_s": s, "walls": walls[name],
               "sentences_per_s": n_sent / s, "tokens_per_s": n_tok / s,
               "vs_kenlm_loop": kn_s / s, "vs_streamlm_loop": loop_s / s}
        res["peers"].append(row)
        print(f"{name:32s} {s:7.3f} s  {n_sent / s:9,.0f} sent/s  {n_tok / s:10,.0f} tok/s  "
              f"{kn_s / s:6.3f}x kenlm loop  {loop_s / s:6.2f}x streamlm loop", file=sys.stderr)
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
