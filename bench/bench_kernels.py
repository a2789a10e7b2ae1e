# ruff: noqa: B023  (the closures in loops are timed within their own iteration)
"""Kernel-level choices, measured: writes bench/results/kernels.json (with its provenance).

    python -m bench.bench_kernels [--quick]

1. The H x V output projection: numpy ``@`` between kernels (what streamlm
   does) versus ``np.dot`` inside an @njit function (numba's BLAS path,
   through SciPy's own OpenBLAS), on the training shape 700 x H @ H x 10000,
   alone and followed by the fused softmax.
2. The recurrence: the Numba kernel (rnn_forward_rows over Wh in column
   panels, up to 4 streams per Wh load) versus one BLAS call per step from
   Python, by streams per thread
   and H, on one thread (streamlm runs one stream group per thread). This
   sets streamlm.compute.plan.BLAS_RECUR_MIN_WORK.
3. Rows per projection slice when scoring (PROJ_ROWS), one thread.
4. The class softmax's word factor, per class: one GEMM of the class's tokens
   (gathered) by its words, then softmax_ce_forward, versus the dot-product
   kernel class_words_nll, by tokens in the class; this sets
   streamlm.nn.heads.CLASS_BLAS_MIN_TOKENS.
Every timing is the median of repeated calls on one thread unless stated;
the variants of one table are interleaved call by call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ["STREAMLM_NUMBA_BLAS"] = "1"  # keep numba's np.dot (streamlm hides SciPy otherwise)

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from bench.common import RESULTS, provenance, this_command  # noqa: E402
from streamlm.compute import blas as SB  # noqa: E402
from streamlm.compute import kernels as K  # noqa: E402
from streamlm.compute import plan  # noqa: E402
from streamlm.nn import heads
from streamlm.nn.cells import TanhRNN, panels  # noqa: E402
from streamlm.nn.params import ModelConfig, Params  # noqa: E402

V = 10000


def interleaved(fns: dict, reps: int) -> dict:
    """Median seconds per call of each fn, the fns called in turn."""
    for f in fns.values():
        f()
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in ts.items()}


@njit(cache=False, nogil=True)
def _njit_dot(out, a, b):
    np.dot(a, b, out)


@njit(cache=False, nogil=True)
def _njit_dot_softmax(nll, out, a, W, bias, labels, scale):
    np.dot(a, W, out)
    K.softmax_ce_fused(nll, out, bias, labels, scale, a, W)


def projection_table(reps, blas_threads):
    rows = []
    rng = np.random.default_rng(0)
    for H in (100, 650):
        a = rng.standard_normal((700, H)).astype(np.float32)
        W = (rng.standard_normal((H, V)) / np.sqrt(H)).astype(np.float32)
        bias = np.zeros(V, np.float32)
        labels = rng.integers(0, V, 700).astype(np.int32)
        out = np.empty((700, V), np.float32)
        nll = np.empty(700)
        s = np.float32(1 / 700)
        for threads in (1, 2):
            blas_threads(threads)
            os.environ["OPENBLAS_NUM_THREADS"] = str(threads)

            def np_gemm():
                np.matmul(a, W, out=out)

            def nb_gemm():
                _njit_dot(out, a, W)

            def np_both():
                np.matmul(a, W, out=out)
                K.softmax_ce_fused(nll, out, bias, labels, s, a, W)

            def nb_both():
                _njit_dot_softmax(nll, out, a, W, bias, labels, s)

            r = interleaved({"np": np_gemm, "nb": nb_gemm, "npb": np_both, "nbb": nb_both}, reps)
            fl = 2 * 700 * H * V
            rows.append([H, threads, f"{fl / r['np'] / 1e9:.0f}", f"{fl / r['nb'] / 1e9:.0f}",
                         f"{r['npb'] * 1e3:.1f}", f"{r['nbb'] * 1e3:.1f}",
                         f"{r['nb'] / r['np']:.2f}"])
            print("proj", rows[-1], file=sys.stderr, flush=True)
    blas_threads(2)
    return {"title": "Output projection: numpy @ between kernels vs np.dot inside @njit",
            "note": "700 x H @ H x 10000 float32 (one training block). 'np.dot in njit' goes "
                    "through SciPy's bundled OpenBLAS (a second BLAS library with its own "
                    "threads, sized here by OPENBLAS_NUM_THREADS at its load); '+softmax' adds "
                    "the fused softmax-CE (in the njit variant inside the same function). "
                    "Ratio > 1: numpy @ is faster.",
            "columns": ["H", "BLAS threads", "numpy @ GFLOP/s", "np.dot in njit GFLOP/s",
                        "numpy @ + softmax ms", "njit np.dot + softmax ms", "njit / numpy time"],
            "rows": rows}


def recurrence_backward(dxw, dh0, dhs, hs, Wh, use_blas: bool) -> None:
    """The backward of the recurrence alone (TanhRNN.backward's, before the weight
    gradients): the kernel over Wh^T's panels, or one BLAS call per step."""
    N, H = dh0.shape
    if not use_blas:
        K.rnn_backward_rows(dxw, dh0, dhs, hs, panels(Wh.T), 0, N)
        return
    dh = np.zeros((N, H), dtype=dxw.dtype)
    WhT = np.ascontiguousarray(Wh.T)
    for t in range(hs.shape[0] - 1, -1, -1):
        K.tanh_backward_(dxw[t], dhs[t], dh, hs[t])
        SB.gemm(dxw[t], WhT, dh)
    dh0[...] = dh


def recurrence_table(reps):
    rows = []
    rng = np.random.default_rng(1)
    T = 35
    best = {}
    for H in (100, 200, 400, 650):
        for N in (1, 4, 10, 20, 32):
            Wh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)
            xw = rng.standard_normal((T, N, H)).astype(np.float32)
            hs = np.zeros((T + 1, N, H), np.float32)
            reset = np.zeros((T, N), np.uint8)
            dhs = rng.standard_normal((T, N, H)).astype(np.float32)
            dxw = np.empty_like(dhs)
            dh0 = np.empty((N, H), np.float32)
            params = Params.init(ModelConfig(V=2, D=H, H=H), dtype=np.float32)
            params["rnn_Wh"][...] = Wh
            cell = TanhRNN(params, 0)

            def fwd_bwd(use_blas):
                blk = cell.begin(N, T, xw, None, hs[0], reset, 1,
                                 forced="blas" if use_blas else "kernel", hs_full=hs)
                cell.advance(blk, 0, N)  # (the kernel's panels made in begin, every call)
                recurrence_backward(dxw, dh0, dhs, hs[1:], Wh, use_blas)

            r = interleaved({"kernel": lambda: fwd_bwd(False), "blas": lambda: fwd_bwd(True)},
                            reps)
            fl = 2 * 2 * T * N * H * H  # forward (h @ Wh) + backward (dxw @ Wh^T)
            rows.append([H, N, N * H * H, f"{r['kernel'] * 1e3:.3f}", f"{r['blas'] * 1e3:.3f}",
                         f"{fl / r['kernel'] / 1e9:.1f}", f"{fl / r['blas'] / 1e9:.1f}",
                         "kernel" if r["kernel"] <= r["blas"] else "BLAS"])
            best[(H, N)] = r["kernel"] <= r["blas"]
            print("recur", rows[-1], file=sys.stderr, flush=True)
    return {"title": "Recurrence forward + backward, one thread: Numba kernels vs one BLAS "
                     "call per step",
            "note": f"T={T} steps; N = streams handled by one thread; work = N*H*H multiply-adds "
                    f"per step. streamlm picks BLAS when N*H*H >= BLAS_RECUR_MIN_WORK "
                    f"(now {plan.BLAS_RECUR_MIN_WORK}) and N >= {plan.BLAS_RECUR_MIN_STREAMS}.",
            "columns": ["H", "N", "N*H*H", "kernel ms", "BLAS ms", "kernel GFLOP/s",
                        "BLAS GFLOP/s", "faster"],
            "rows": rows}


def slices_table(reps):
    rows = []
    rng = np.random.default_rng(2)
    H = 100
    Mrows = 2048
    hs = rng.standard_normal((Mrows, H)).astype(np.float32)
    W = (rng.standard_normal((H, V)) / np.sqrt(H)).astype(np.float32)
    bias = np.zeros(V, np.float32)
    labels = rng.integers(0, V, Mrows).astype(np.int32)
    out = np.empty(Mrows)
    fns = {}
    sizes = (64, 128, 256, 512, 1024)
    for rws in sizes:
        buf = np.empty((rws, V), np.float32)

        def score(rws=rws, buf=buf):
            for a in range(0, Mrows, rws):
                b = min(Mrows, a + rws)
                SB.gemm(hs[a:b], W, buf[: b - a])
                K.softmax_ce_forward(out[a:b], buf[: b - a], bias, labels[a:b])

        fns[rws] = score
    r = interleaved(fns, reps)
    for rws in sizes:
        rows.append([rws, f"{Mrows / r[rws]:,.0f}"])
    return {"title": f"Rows per GEMM slice when scoring (one thread, H={H}, V=10000, "
                     f"{Mrows} rows)",
            "note": "GEMM (streamlm.compute.blas) into a reused slice buffer + softmax_ce_forward. "
                    f"Now PROJ_ROWS={heads.PROJ_ROWS} (capped at {heads.PROJ_BYTES >> 20} MB of "
                    "logits per thread).",
            "columns": ["rows", "score rows/s"], "rows": rows}


def class_table(reps):
    """Word factor of one class: GEMM + softmax_ce_forward vs class_words_nll."""
    rows = []
    rng = np.random.default_rng(3)
    for H in (100, 256, 650):
        for nw in (50, 150, 400):
            WT = (rng.standard_normal((nw, H)) / np.sqrt(H)).astype(np.float32)
            b = np.zeros(nw, np.float32)
            start = np.array([0, nw], np.int64)
            classes = np.array([0], np.int64)
            for n in (16, 64, 256, 1024):
                hs = rng.standard_normal((n, H)).astype(np.float32)
                labels = rng.integers(0, nw, n).astype(np.int32)
                perm = np.arange(n, dtype=np.int64)
                off = np.array([0, n], np.int64)
                out = np.zeros(n)
                lg = np.empty((n, nw), np.float32)
                nll = np.empty(n)

                def kern():
                    out[:] = 0
                    K.class_words_nll(out, hs, perm, labels, WT, b, start, off, classes)

                def gemm():
                    SB.gemm(hs[perm], WT.T, lg)
                    K.softmax_ce_forward(nll, lg, b, labels)

                kern()
                gemm()
                if not np.allclose(out, nll, rtol=1e-4, atol=1e-4):  # the answer first
                    raise SystemExit(f"class word factor: kernel and GEMM disagree (H={H})")
                r = interleaved({"kernel": kern, "gemm": gemm}, reps)
                rows.append([H, nw, n, f"{n / r['kernel']:,.0f}", f"{n / r['gemm']:,.0f}",
                             f"{r['kernel'] / r['gemm']:.2f}"])
    return {"title": "class softmax: BLAS or kernel per class (one thread)",
            "note": "Tokens/s of one class's word factor: the dot-product kernel "
                    "class_words_nll against a GEMM of the gathered tokens (compute.blas) plus "
                    "softmax_ce_forward; 'kernel/GEMM' > 1 means the GEMM is faster. Now "
                    f"CLASS_BLAS_MIN_TOKENS={heads.CLASS_BLAS_MIN_TOKENS}.",
            "columns": ["H", "words in class", "tokens", "kernel tok/s", "GEMM tok/s",
                        "kernel/GEMM time"], "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Fewer repetitions.")
    ap.add_argument("--out", default=str(RESULTS / "kernels.json"), help="JSON results.")
    args = ap.parse_args(argv)
    reps = 5 if args.quick else 15
    from threadpoolctl import threadpool_limits

    def blas_threads(n):  # numpy's BLAS, as streamlm.compute.threads holds it
        threadpool_limits(limits=n, user_api="blas")

    sections = [projection_table(reps, blas_threads)]
    blas_threads(1)
    sections.append(recurrence_table(reps * 2))
    sections.append(slices_table(reps))
    sections.append(class_table(reps))
    blas_threads(2)
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps({"sections": sections,
                                   "provenance": provenance(this_command("bench_kernels"), 1)},
                                  indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
