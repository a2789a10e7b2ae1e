"""The two scoring engines: the Numba kernels, or plain numpy for jobs too small to start numba.

:func:`scoring_model` picks one; both have ``nll(xs, ts, h0, reset, lengths)
-> (nll, final state)``. Importing numba and loading its cached kernels costs about a second, which
dominates a small job. :class:`NumpyRNN` computes what
:meth:`streamlm.nn.model.RNNLM.nll` computes, with the same signature and dtypes
(float32 activations, float64 log-sum-exp), without importing numba. Totals
agree with the numba path to ~1e-6 relative (different exp/tanh
approximations), not bit for bit.
"""

from __future__ import annotations

import numpy as np

from streamlm.nn.params import Params, layer_names, state_size
from streamlm.options import Engine

_PROJ_ROWS = 512


def _full_softmax_nll(p: Params, hs: np.ndarray, labels: np.ndarray, out: np.ndarray) -> None:
    """out[m] = -log softmax(hs[m] @ affine_W + affine_b)[labels[m]] (0 where -1)."""
    M = hs.shape[0]
    for i in range(0, M, _PROJ_ROWS):
        j = min(M, i + _PROJ_ROWS)
        lg = hs[i:j] @ p.affine_W
        lg += p.affine_b
        mx = lg.max(axis=1)
        s = np.exp(lg - mx[:, None]).sum(axis=1, dtype=np.float64)
        lab = labels[i:j]
        ok = lab >= 0
        picked = lg[np.arange(j - i), np.where(ok, lab, 0)].astype(np.float64)
        out[i:j] = np.where(ok, np.log(s) + (mx.astype(np.float64) - picked), 0.0)


def _class_softmax_nll(p: Params, hs: np.ndarray, labels: np.ndarray, out: np.ndarray) -> None:
    """out[m] = -log P(labels[m] | hs[m]) for a class model (labels in class order):
    the class factor over C, then the word factor within the target's class."""
    cl = p.classes
    ok = labels >= 0
    lab = np.where(ok, labels, 0)
    tc = cl.cls[lab]
    for i in range(0, hs.shape[0], _PROJ_ROWS):
        j = min(hs.shape[0], i + _PROJ_ROWS)
        z = hs[i:j] @ p.class_W
        z += p.class_b
        mx = z.max(axis=1)
        lse = np.log(np.exp(z - mx[:, None]).sum(axis=1, dtype=np.float64)) + mx
        out[i:j] = np.where(ok[i:j], lse - z[np.arange(j - i), tc[i:j]], 0.0)
    for c in np.unique(tc[ok]):
        rows = np.flatnonzero(ok & (tc == c))
        s, e = cl.start[c], cl.start[c + 1]
        z = hs[rows] @ p.affine_W[:, s:e]
        z += p.affine_b[s:e]
        mx = z.max(axis=1)
        lse = np.log(np.exp(z - mx[:, None]).sum(axis=1, dtype=np.float64)) + mx
        out[rows] += lse - z[np.arange(len(rows)), lab[rows] - s]


_BLAS = []  # threadpoolctl's controller of numpy's BLAS, made once (it scans the libraries)


def _blas_threads(n: int):
    """A context holding numpy's BLAS at ``n`` threads (OpenBLAS starts one per CPU of the
    machine, not of this process: a job pinned to 4 of 64 cores would run 64)."""
    import contextlib

    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController().select(user_api="blas"))
    ctl = _BLAS[0]
    if not ctl.lib_controllers or all(c.num_threads <= n for c in ctl.lib_controllers):
        return contextlib.nullcontext()
    return ctl.limit(limits=n)


def _tanh_rnn(xw: np.ndarray, h0: np.ndarray, Wh: np.ndarray, reset: np.ndarray,
              hs: np.ndarray) -> None:
    """hs[t] = tanh(hs[t-1] @ Wh + xw[t]) (hs: (T+1, N, H), h0 in hs[0]; reset (N, T))."""
    hs[0] = h0
    for t in range(xw.shape[0]):
        hp = hs[t]
        r = reset[:, t]
        if r.any():
            hp = hp * (r == 0)[:, None].astype(hs.dtype)
        np.tanh(hp @ Wh + xw[t], out=hs[t + 1])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # (the kernels' form: exp overflows nowhere)


def _lstm(xw, h0, Wh, reset, hs, H):
    """The LSTM (gates f, g, i, o): hs (T+1, N, 2H) holds [h, c] of each step."""
    hs[0] = h0
    for t in range(xw.shape[0]):
        h, c = hs[t, :, :H], hs[t, :, H:]
        r = reset[:, t]
        if r.any():
            keep = (r == 0)[:, None].astype(hs.dtype)
            h, c = h * keep, c * keep
        A = h @ Wh + xw[t]
        f, g = _sigmoid(A[:, :H]), np.tanh(A[:, H:2 * H])
        i, o = _sigmoid(A[:, 2 * H:3 * H]), _sigmoid(A[:, 3 * H:])
        c = f * c + g * i
        hs[t + 1, :, H:] = c
        hs[t + 1, :, :H] = o * np.tanh(c)


def _gru(xw, h0, Wh, reset, hs, H, bh):
    """PyTorch's GRU (gates r, z, n): hs (T+1, N, H)."""
    hs[0] = h0
    for t in range(xw.shape[0]):
        h = hs[t]
        rs = reset[:, t]
        if rs.any():
            h = h * (rs == 0)[:, None].astype(hs.dtype)
        ax, ah = xw[t], h @ Wh + bh
        r = _sigmoid(ax[:, :H] + ah[:, :H])
        z = _sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
        n = np.tanh(ax[:, 2 * H:] + r * ah[:, 2 * H:])
        hs[t + 1] = (1 - z) * n + z * h


class NumpyRNN:
    """Scoring only: ``nll(xs, ts, h0, reset, lengths) -> (nll, final state)``."""

    def __init__(self, params: Params):
        self.params = params
        self.state_size = state_size(params.config)

    def nll(self, xs, ts, h0=None, reset=None, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        from streamlm.compute import cpus

        with _blas_threads(cpus.threads()):
            return self._nll(xs, ts, h0, reset, lengths)

    def _nll(self, xs, ts, h0, reset, lengths) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        cfg = p.config
        V, H = cfg.V, cfg.H
        xs, ts = np.asarray(xs), np.asarray(ts)
        N, T = xs.shape
        if xs.size and (xs.min() < 0 or xs.max() >= V or ts.min() < -1 or ts.max() >= V):
            raise ValueError(f"token ids out of range [0, {V})")
        if p.classes is not None:  # the model's own (class) order
            xs, ts = p.classes.rank[xs], p.classes.to_internal(ts)
        reset = np.zeros((N, T), np.uint8) if reset is None else np.asarray(reset)
        state0 = np.zeros((N, self.state_size), p.dtype) if h0 is None else np.asarray(h0)
        lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
        X = p.embed_W[xs].transpose(1, 0, 2)  # (T, N, D) time-major
        finals, width = [], self.state_size // cfg.layers
        for layer in range(cfg.layers):
            n = layer_names(cfg, layer)
            xw = X @ p[n["Wx"]]  # (T, N, G H)
            xw += p[n["b"]]
            hs = np.empty((T + 1, N, width), dtype=p.dtype)
            h0 = state0[:, layer * width:(layer + 1) * width]
            if cfg.cell == "rnn":
                _tanh_rnn(xw, h0, p[n["Wh"]], reset, hs)
            elif cfg.cell == "lstm":
                _lstm(xw, h0, p[n["Wh"]], reset, hs, H)
            else:
                _gru(xw, h0, p[n["Wh"]], reset, hs, H, p[n["bh"]])
            finals.append(hs[lengths, np.arange(N)])
            X = hs[1:, :, :H]
        flat = np.ascontiguousarray(X).reshape(T * N, H)  # time-major rows of the top h
        labels = np.ascontiguousarray(ts.T).reshape(-1)
        out = np.zeros(T * N, dtype=np.float64)
        (_full_softmax_nll if p.classes is None else _class_softmax_nll)(p, flat, labels, out)
        final = finals[0] if len(finals) == 1 else np.concatenate(finals, axis=1)
        return out.reshape(T, N).T.copy(), final.copy()


def scoring_model(params: Params, engine: Engine | str):
    """:class:`~streamlm.nn.model.RNNLM` for ``numba``, :class:`NumpyRNN` for ``numpy``."""
    if Engine.parse(engine, "--engine") == Engine.numpy:
        return NumpyRNN(params)
    from streamlm.nn.model import RNNLM  # imports numba: only when it is used

    return RNNLM(params, frozen=True)  # weights that do not change: the input table
