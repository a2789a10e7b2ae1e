"""Where a gated model's training step goes: the output layer against the recurrent
layers, forward and backward, with each phase's GFLOP/s.

    python -m bench.profile_gated [--hidden 400] [--layers 2] [--cell lstm] [--steps 40]
                                  [--out results/profile_gated.json]

The 2-hour recipe's model by default (tied, V=10000, N=20, T=35, dropout 0.35),
random ids, float32, the BLAS that ``blas.name()`` reports. The model's loss on a
first block (no dropout) is checked against a float64 numpy forward of the same
weights before anything is timed. Phases are the model's own methods, timed
around each call (wall time, medians over ``--steps`` steps after 5 of warm-up);
the optimiser step, clipping and batching are outside them (compare a training
log's seconds per step).
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
import time
from collections import defaultdict

import numpy as np

from bench.common import RESULTS, provenance, this_command


def numpy_loss(a: dict, cell: str, layers: int, xs: np.ndarray, ts: np.ndarray) -> float:
    """Mean NLL of one block from zero state, float64: the LSTM of the issue (gates
    f, g, i, o) or PyTorch's GRU (r, z, n)."""
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    a = {name: v.astype(np.float64) for name, v in a.items()}
    N, T = xs.shape
    x = a["embed_W"][xs]  # (N, T, D)
    for k in range(layers):
        Wx, Wh, b = a[f"layer{k}_Wx"], a[f"layer{k}_Wh"], a[f"layer{k}_b"]
        H = Wh.shape[0]
        h, c, out = np.zeros((N, H)), np.zeros((N, H)), []
        for t in range(T):
            if cell == "lstm":
                A = x[:, t] @ Wx + h @ Wh + b
                f, g, i, o = sig(A[:, :H]), np.tanh(A[:, H:2 * H]), sig(A[:, 2 * H:3 * H]), \
                    sig(A[:, 3 * H:])
                c = f * c + g * i
                h = o * np.tanh(c)
            else:
                ax, ah = x[:, t] @ Wx + b, h @ Wh + a[f"layer{k}_bh"]
                r, z = sig(ax[:, :H] + ah[:, :H]), sig(ax[:, H:2 * H] + ah[:, H:2 * H])
                n = np.tanh(ax[:, 2 * H:] + r * ah[:, 2 * H:])
                h = (1 - z) * n + z * h
            out.append(h)
        x = np.stack(out, axis=1)
    W = a["affine_W"] if "affine_W" in a else a["embed_W"].T
    logits = x @ W + a["affine_b"]
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(logp, ts[..., None], axis=-1).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--dropout", type=float, default=0.35)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default=str(RESULTS / "profile_gated.json"))
    o = ap.parse_args(argv)
    from streamlm.compute import blas
    from streamlm.nn.model import RNNLM
    from streamlm.nn.params import ModelConfig, Params

    V, H, L, N, T = o.vocab, o.hidden, o.layers, 20, 35
    p = Params.init(ModelConfig(V=V, D=H, H=H, tied=True, cell=o.cell, layers=L),
                    seed=1, dtype=np.float32)
    m = RNNLM(p, dropout=o.dropout)
    rng = np.random.default_rng(0)
    xs, ts = (rng.integers(0, V, (N, T)).astype(np.int32) for _ in range(2))
    got, _ = m.forward(xs, ts, None, train=False)
    want = numpy_loss(p.file_arrays(), o.cell, L, xs, ts)
    if abs(got - want) > 1e-4 * abs(want):
        raise SystemExit(f"wrong loss: streamlm {got} against numpy {want}")
    acc: dict[str, list[float]] = defaultdict(list)

    def wrap(obj, name, key):
        f = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            r = f(*a, **k)
            acc[key].append(time.perf_counter() - t0)
            return r
        setattr(obj, name, timed)

    wrap(m, "_run_layers", "recurrent layers, forward (with the dropout masks)")
    wrap(m.head, "forward", "output layer, forward (with the softmax)")
    wrap(m.head, "backward", "output layer, backward")
    for i, c in enumerate(m.cells):
        wrap(c, "backward", f"layer {i}, backward")
    g, h = p.zeros_like(), None
    for it in range(5 + o.steps):
        xs, ts = (rng.integers(0, V, (N, T)).astype(np.int32) for _ in range(2))
        t0 = time.perf_counter()
        _, h = m.forward(xs, ts, h, train=True)
        g.flat[:] = 0
        m.backward(g)
        acc["step: forward and backward"].append(time.perf_counter() - t0)
        if it == 4:
            acc.clear()
    G = {"lstm": 4, "gru": 3}[o.cell]
    gemm = 2 * N * T * H * G * H / 1e9  # one M x H @ H x GH product
    flop = {"recurrent layers, forward (with the dropout masks)": 2 * gemm * L,
            "output layer, forward (with the softmax)": 2 * N * T * H * V / 1e9,
            "output layer, backward": 4 * N * T * H * V / 1e9,
            **{f"layer {i}, backward": 4 * gemm for i in range(L)}}
    flop["step: forward and backward"] = sum(flop.values())
    tot = st.median(acc["step: forward and backward"])
    rows = []
    for k, v in acc.items():
        ms = st.median(v)
        rows.append({"phase": k, "ms": ms * 1e3, "share": ms / tot, "gflop": flop[k],
                     "gflops": flop[k] / ms})
        print(f"{k:52s} {ms * 1e3:7.1f} ms {ms / tot * 100:5.1f}% {flop[k] / ms:5.0f} GFLOP/s")
    res = {**provenance(this_command("profile_gated"), threads=None), "blas": blas.name(),
           "options": vars(o), "check": {"streamlm": got, "numpy_float64": want}, "rows": rows}
    from streamlm.data.atomic import atomic_path

    with atomic_path(o.out) as tmp:
        tmp.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {o.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
