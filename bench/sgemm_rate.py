"""The machine's SGEMM rate at an output layer's shape (M×H @ H×V, float32): the
yardstick for a training step that is mostly matrix products.

    python -m bench.sgemm_rate [--rows 700] [--hidden 400] [--vocab 10000] [--out F]

Two ways, interleaved, each checked against a float64 product first: streamlm's
(two threads, each one sequential ``blas.gemm`` on half of the columns, as the full
softmax's training step runs it; whichever library ``blas.name()`` says) and
PyTorch's (one ``torch.matmul`` on 2 threads). Prints and writes GFLOP/s, the median
of 30 products in each of 3 rounds. 700 rows: a batch of 20 by 35 time steps.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.common import RESULTS, provenance, this_command


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=700)
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "sgemm_rate.json"))
    a = ap.parse_args(argv)
    import torch

    from streamlm.compute import blas

    M, H, V = a.rows, a.hidden, a.vocab
    rng = np.random.default_rng(0)
    x = rng.random((M, H), dtype=np.float32)
    w = rng.random((H, V), dtype=np.float32)
    ours_c = np.empty((M, V), np.float32)
    halves = [slice(0, V // 2), slice(V // 2, V)]
    pool = ThreadPoolExecutor(2)

    def half(s):
        blas.gemm(x, w[:, s], ours_c[:, s])

    def ours():
        list(pool.map(half, halves))

    torch.set_num_threads(2)
    tx, tw, tc = torch.from_numpy(x), torch.from_numpy(w), torch.empty(M, V)

    def theirs():
        torch.matmul(tx, tw, out=tc)

    peers = {"streamlm (2 threads x 1)": ours, "torch (2 threads)": theirs}
    ref = x.astype(np.float64) @ w.astype(np.float64)
    for f in peers.values():  # the answer first
        f()
    for name, c in (("streamlm", ours_c), ("torch", tc.numpy())):
        if not np.allclose(c, ref, rtol=1e-4):
            raise SystemExit(f"{name}: wrong product")
    flop = 2 * M * H * V
    rates: dict[str, list[float]] = {k: [] for k in peers}
    for _ in range(a.rounds):
        for name, f in peers.items():
            for _ in range(3):
                f()
            ts = []
            for _ in range(30):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            rates[name].append(flop / st.median(ts) / 1e9)
    res = {**provenance(this_command("sgemm_rate"), threads=2), "blas": blas.name(),
           "shape": {"rows": M, "hidden": H, "vocab": V},
           "gflops": {k: sorted(v) for k, v in rates.items()},
           "median_gflops": {k: st.median(v) for k, v in rates.items()}}
    for k, v in res["median_gflops"].items():
        print(f"{k}: {v:.0f} GFLOP/s ({M}x{H} @ {H}x{V}, {blas.name()})")
    from streamlm.data.atomic import atomic_path

    with atomic_path(a.out) as tmp:
        tmp.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
