"""The recurrence kernels of this tree against those of another commit, interleaved.

    python -m bench.bench_recurrence [--base REV] [--reps 9] [--steps 1000] [--quick]

Loads ``streamlm/compute/kernels.py`` as it is at REV (default 35405e7, before the
panel kernels) as a second module, checks that both trees' kernels agree
(float64 to 1e-10, float32 to 1e-5, with resets), then times them call by call
in turn (order swapped every repetition; the median of --reps) on one thread:
the forward (rnn_forward_rows) and the backward (rnn_backward_rows) for N = 1,
2, 3, 4 streams and H = 100, 256, 650, float32. Prints ns per step of the whole
group of N streams and GFLOP/s (2 N H^2 per step). The machine is shared:
only the ratio of interleaved timings means something.

The new kernels are timed with their panels of Wh (Wh^T for the backward)
made inside the timed call, as streamlm.nn.cells does once per block
(streamlm.nn.cells.panels).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from streamlm.compute import kernels as K
from streamlm.nn.cells import panels

ROOT = Path(__file__).resolve().parent.parent


def load_base(rev: str):
    """kernels.py at rev, imported as the module 'base_kernels' (its own cache dir)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:streamlm/compute/kernels.py"],
                         check=True, capture_output=True, text=True).stdout
    d = Path(tempfile.mkdtemp(prefix="bench_recur_"))
    path = d / "base_kernels.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("base_kernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def problem(H, N, T, dtype, seed=0):
    rng = np.random.default_rng(seed)
    Wh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    xw = rng.standard_normal((T, N, H)).astype(dtype)
    h0 = (rng.standard_normal((N, H)) * 0.5).astype(dtype)
    reset = np.zeros((T, N), np.uint8)
    reset[T // 3, 0] = 1
    reset[T // 2, N - 1] = 1
    dhs = rng.standard_normal((T, N, H)).astype(dtype)
    return Wh, xw, h0, reset, dhs


def calls(B, H, N, T, dtype):
    """{pass: (base fn, new fn)} on one problem; each fn() runs one call. Both trees
    write the same output buffers (returned): which page offsets a buffer gets
    changes these timings by up to 1.5x, so the two must not have their own."""
    Wh, xw, h0, reset, dhs = problem(H, N, T, dtype)
    hs = np.empty((T, N, H), dtype)
    hs_in = np.empty((T, N, H), dtype)  # the backward's input, the new forward's output
    dxw = np.empty((T, N, H), dtype)
    dh0 = np.empty((N, H), dtype)

    def fwd_base():
        if hasattr(B, "rnn_panels"):  # a base that has panels too
            P = np.empty((-(-H // 64), H, 64), dtype)
            B.rnn_panels(P, Wh)
            B.rnn_forward_rows(hs, xw, h0, P, reset, 0, N)
        else:
            B.rnn_forward_rows(hs, xw, h0, Wh, reset, 0, N)

    def fwd_new():
        K.rnn_forward_rows(hs, xw, h0, panels(Wh), reset, 0, N)

    def bwd_base():
        if hasattr(B, "rnn_panels"):
            PT = np.empty((-(-H // 64), H, 64), dtype)
            B.rnn_panels(PT, Wh.T)
            B.rnn_backward_rows(dxw, dh0, dhs, hs_in, PT, 0, N)
        else:
            B.rnn_backward_rows(dxw, dh0, dhs, hs_in, Wh, 0, N)

    def bwd_new():
        K.rnn_backward_rows(dxw, dh0, dhs, hs_in, panels(Wh.T), 0, N)

    K.rnn_forward_rows(hs_in, xw, h0, panels(Wh), reset, 0, N)
    return {"fwd": (fwd_base, fwd_new), "bwd": (bwd_base, bwd_new)}, (hs, dxw, dh0)


def check(B):
    """Both trees' kernels agree, float64 and float32, on a few shapes with resets."""
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        for H, N in ((3, 1), (100, 1), (100, 2), (70, 3), (130, 5)):
            fns, outs = calls(B, H, N, 20, dtype)
            for base, new in fns.values():
                base()
                want = [o.copy() for o in outs]
                new()
                for o, w in zip(outs, want):
                    np.testing.assert_allclose(o, w, rtol=tol, atol=tol)
    print("check: both trees agree (float64 1e-10, float32 1e-5)", flush=True)


def interleaved(a, b, reps):
    """Median seconds of a() and b(), called in turn, the order swapped every rep."""
    a()
    b()
    ta, tb = [], []
    for i in range(reps):
        for f, ts in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return float(np.median(ta)), float(np.median(tb))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="35405e7")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="H=100 only, 300 steps")
    a = ap.parse_args()
    B = load_base(a.base)
    check(B)
    Hs = (100,) if a.quick else (100, 256, 650)
    T = 300 if a.quick else a.steps
    print(f"float32, one thread, {T} steps per call, median of {a.reps}; base = {a.base}")
    print(f"{'pass':4} {'H':>4} {'N':>2} {'base ns/step':>13} {'new ns/step':>12} "
          f"{'base GF/s':>10} {'new GF/s':>9} {'speed-up':>8}")
    for which in ("fwd", "bwd"):
        for H in Hs:
            for N in (1, 2, 3, 4):
                T_ = T if H < 650 else max(50, T // 8)  # ~0.03 s per call at H=650
                fns, _ = calls(B, H, N, T_, np.float32)
                tb, tn = interleaved(*fns[which], a.reps)
                fl = 2 * N * H * H * T_
                print(f"{which:4} {H:4d} {N:2d} {tb / T_ * 1e9:13.0f} {tn / T_ * 1e9:12.0f} "
                      f"{fl / tb / 1e9:10.1f} {fl / tn / 1e9:9.1f} {tb / tn:8.2f}", flush=True)


if __name__ == "__main__":
    main()
