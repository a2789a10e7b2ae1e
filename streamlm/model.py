"""Forward/backward orchestration of the RNN language model.

Layers, in order: Embedding -> RNN (tanh) -> Affine -> softmax cross-entropy,
over a block of T steps for N parallel streams. The ``time_*`` functions only
call kernels (``streamlm.kernels``) and numpy BLAS, in order; ``RNNLM`` holds
the carried hidden state and preallocated buffers.

Internally everything is time-major: token ``m = t * N + n``. The public
methods take and return batch-major ``(N, T)`` arrays, like the book.

Truncated BPTT: ``forward`` starts from the carried state ``h`` (zeros at
first), and ``backward`` stops at the block start (the gradient w.r.t. ``h0``
is returned, for tests, but never applied).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from streamlm import kernels as K
from streamlm.params import Params

log = logging.getLogger(__name__)

# Above this many multiply-adds per recurrence step (N * H * H) the H x H
# product of each step goes to BLAS from Python; below it the whole block
# runs in one Numba kernel. Chosen by bench/bench_kernels.py (see README).
BLAS_RECUR_MIN_WORK = 4 * 128 * 128

# Rows of the output projection computed at once when scoring: bounds the
# logits buffer to PROJ_ROWS * V floats however long a chunk is.
PROJ_ROWS = 512


def check_ids(ids: np.ndarray, V: int, what: str = "token ids", allow_ignore: bool = False):
    """Raise ValueError unless every id is in [0, V) (or -1 when allow_ignore).

    Numba does no bounds checking: this runs before any kernel sees ids.
    """
    if ids.size == 0:
        return
    lo = -1 if allow_ignore else 0
    mn, mx = int(ids.min()), int(ids.max())
    if mn < lo or mx >= V:
        bad = mn if mn < lo else mx
        raise ValueError(f"{what} out of range: {bad} not in [{lo}, {V})")


# ------------------------------------------------------------ time layers --
def time_embedding_forward(X, ids, W):
    """X: (M, D) out; ids: (M,) int32; W: (V, D)."""
    K.embedding_forward(X, ids, W)


def time_embedding_backward(dW, ids, dX):
    """dW: (V, D) accumulated; ids: (M,) int32; dX: (M, D)."""
    K.embedding_backward(dW, ids, dX)


def time_rnn_forward(hs_full, xw, X, Wx, Wh, b, reset, use_blas: bool):
    """Run the RNN over a block.

    hs_full: (T+1, N, H) with hs_full[0] = h0 on entry; hs_full[1:] written.
    xw: (T, N, H) scratch, written with X @ Wx + b.  X: (T*N, D).
    reset: (T, N) uint8 (nonzero: state before step t is zero).
    """
    T, N, H = xw.shape
    np.matmul(X, Wx, out=xw.reshape(T * N, H))
    xw += b
    if not use_blas:
        K.rnn_forward(hs_full[1:], xw, hs_full[0], Wh, reset)
        return
    any_reset = bool(reset.any())
    for t in range(T):
        hp = hs_full[t]
        if any_reset and reset[t].any():
            hp = hp * (reset[t] == 0)[:, None].astype(hp.dtype)
        np.matmul(hp, Wh, out=hs_full[t + 1])
        K.tanh_add_(hs_full[t + 1], xw[t])


def time_rnn_backward(dxw, dh0, dhs, hs_full, X, Wx, Wh, grads_Wx, grads_Wh, grads_b,
                      use_blas: bool):
    """Backward through the RNN block (truncated at the block start).

    Writes dxw: (T, N, H) and dh0: (N, H); accumulates the Wx, Wh, b
    gradients; returns dX: (T*N, D) (a new array).
    dhs: (T, N, H) gradient w.r.t. the RNN outputs hs_full[1:].
    """
    T, N, H = dxw.shape
    hs = hs_full[1:]
    if not use_blas:
        K.rnn_backward(dxw, dh0, dhs, hs, Wh)
    else:
        dh = np.zeros((N, H), dtype=dxw.dtype)
        WhT = Wh.T
        for t in range(T - 1, -1, -1):
            K.tanh_backward_(dxw[t], dhs[t], dh, hs[t])
            np.matmul(dxw[t], WhT, out=dh)
        dh0[...] = dh
    D2 = dxw.reshape(T * N, H)
    grads_Wh += hs_full[:-1].reshape(T * N, H).T @ D2
    grads_Wx += X.T @ D2
    grads_b += D2.sum(axis=0)
    return D2 @ Wx.T


# --------------------------------------------------------------- the model --
@dataclass
class _Cache:
    N: int
    T: int
    ids: np.ndarray  # (M,) int32 time-major inputs
    labels: np.ndarray  # (M,) int32 time-major targets
    count: int
    X: np.ndarray  # (M, D) embedding output (after dropout)
    hs_full: np.ndarray  # (T+1, N, H)
    hs_in: np.ndarray  # (M, H) affine input (after dropout)
    mask_x: np.ndarray | None
    mask_h: np.ndarray | None


class RNNLM:
    """SimpleRnnlm with a carried hidden state and preallocated buffers.

    ``forward(xs, ts)`` returns the mean loss over the block and keeps what
    ``backward`` needs; the final state is carried to the next call.
    ``nll(xs, ts)`` scores without keeping anything for backward, computing
    the output projection in slices of PROJ_ROWS rows so memory stays flat.
    """

    def __init__(self, params: Params, dropout: float = 0.0, seed: int = 0,
                 recur: str = "auto"):
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if recur not in ("auto", "kernel", "blas"):
            raise ValueError("recur must be auto, kernel or blas")
        self.params = params
        self.dropout = float(dropout)
        self.rng = np.random.default_rng(seed)
        self.recur = recur
        self.h: np.ndarray | None = None
        self._cache: _Cache | None = None
        self._bufs: dict[tuple, np.ndarray] = {}

    # state ------------------------------------------------------------
    @property
    def config(self):
        return self.params.config

    def reset_state(self) -> None:
        self.h = None

    def set_state(self, h) -> None:
        h = np.array(h, dtype=self.params.dtype, copy=True)
        if h.ndim == 1:
            h = h[None, :]
        if h.ndim != 2 or h.shape[1] != self.config.H:
            raise ValueError(f"state must be (N, {self.config.H})")
        self.h = h

    def get_state(self) -> np.ndarray | None:
        return None if self.h is None else self.h.copy()

    def _h0(self, N: int) -> np.ndarray:
        if self.h is None:
            return np.zeros((N, self.config.H), dtype=self.params.dtype)
        if self.h.shape[0] != N:
            raise ValueError(f"carried state has {self.h.shape[0]} rows, batch has {N}")
        return self.h

    def _use_blas(self, N: int) -> bool:
        if self.recur != "auto":
            return self.recur == "blas"
        return N * self.config.H * self.config.H >= BLAS_RECUR_MIN_WORK

    def _buf(self, name: str, shape: tuple, dtype=None) -> np.ndarray:
        dtype = np.dtype(dtype or self.params.dtype)
        key = (name, shape, dtype.str)
        b = self._bufs.get(key)
        if b is None:
            # one buffer per name: drop buffers of other shapes
            for k in [k for k in self._bufs if k[0] == name]:
                del self._bufs[k]
            b = self._bufs[key] = np.empty(shape, dtype=dtype)
        return b

    # shared front half ---------------------------------------------------
    def _run_rnn(self, xs, reset, train: bool):
        p = self.params
        N, T = xs.shape
        H, D = self.config.H, self.config.D
        M = N * T
        ids = np.ascontiguousarray(xs.T, dtype=np.int32).reshape(M)
        check_ids(ids, self.config.V, "input ids")
        X = self._buf("X", (M, D))
        time_embedding_forward(X, ids, p.embed_W)
        mask_x = None
        if train and self.dropout > 0:
            mask_x = self._dropout_mask((M, D))
            X *= mask_x
        hs_full = self._buf("hs_full", (T + 1, N, H))
        hs_full[0] = self._h0(N)
        xw = self._buf("xw", (T, N, H))
        if reset is None:
            reset_tm = self._buf("reset0", (T, N), np.uint8)
            reset_tm[...] = 0
        else:
            reset_tm = np.ascontiguousarray(np.asarray(reset, dtype=np.uint8).T)
        time_rnn_forward(hs_full, xw, X, p.rnn_Wx, p.rnn_Wh, p.rnn_b, reset_tm,
                         self._use_blas(N))
        return ids, X, hs_full, mask_x

    def _dropout_mask(self, shape) -> np.ndarray:
        keep = 1.0 - self.dropout
        m = self.rng.random(shape, dtype=np.float32) < keep
        return m.astype(self.params.dtype) * self.params.dtype.type(1.0 / keep)

    # training ------------------------------------------------------------
    def forward(self, xs: np.ndarray, ts: np.ndarray, train: bool = False) -> float:
        """Mean NLL over the non-ignored targets of one (N, T) block.

        xs: (N, T) int input ids; ts: (N, T) int targets (-1 = ignore).
        Keeps the activations for ``backward`` and carries the state.
        With train=True, dropout (if configured) is applied.
        """
        xs = np.asarray(xs)
        ts = np.asarray(ts)
        if xs.ndim != 2 or xs.shape != ts.shape:
            raise ValueError("xs and ts must both be (N, T)")
        N, T = xs.shape
        M = N * T
        V, H = self.config.V, self.config.H
        labels = np.ascontiguousarray(ts.T, dtype=np.int32).reshape(M)
        check_ids(labels, V, "target ids", allow_ignore=True)
        ids, X, hs_full, mask_x = self._run_rnn(xs, None, train)
        hs_in = hs_full[1:].reshape(M, H)
        mask_h = None
        if train and self.dropout > 0:
            mask_h = self._dropout_mask((M, H))
            hs_in = hs_in * mask_h
        p = self.params
        logits = self._buf("logits", (M, V))
        np.matmul(hs_in, p.affine_W, out=logits)
        nll = self._buf("nll", (M,), np.float64)
        count = int((labels >= 0).sum())
        scale = p.dtype.type(1.0 / count) if count else p.dtype.type(0.0)
        K.softmax_ce_fused(nll, logits, p.affine_b, labels, scale)  # logits -> dlogits
        self._cache = _Cache(N, T, ids, labels, count, X, hs_full, hs_in, mask_x, mask_h)
        self.h = hs_full[T].copy()
        return float(nll.sum() / count) if count else 0.0

    def backward(self, grads: Params) -> np.ndarray:
        """Accumulate the gradients of the last ``forward``'s mean loss into ``grads``.

        The caller zeroes ``grads``. Returns dL/dh0 (N, H) (tests only: truncated
        BPTT drops it).
        """
        c = self._cache
        if c is None:
            raise RuntimeError("backward() without forward()")
        p = self.params
        N, T, M = c.N, c.T, c.N * c.T
        H = self.config.H
        dlogits = self._buf("logits", (M, self.config.V))
        grads["affine_W"] += c.hs_in.T @ dlogits
        grads["affine_b"] += dlogits.sum(axis=0)
        dhs = dlogits @ p.affine_W.T  # (M, H)
        if c.mask_h is not None:
            dhs *= c.mask_h
        dxw = self._buf("dxw", (T, N, H))
        dh0 = np.empty((N, H), dtype=p.dtype)
        dX = time_rnn_backward(dxw, dh0, dhs.reshape(T, N, H), c.hs_full, c.X,
                               p.rnn_Wx, p.rnn_Wh, grads["rnn_Wx"], grads["rnn_Wh"],
                               grads["rnn_b"], self._use_blas(N))
        if c.mask_x is not None:
            dX *= c.mask_x
        time_embedding_backward(grads["embed_W"], c.ids, dX)
        self._cache = None
        return dh0

    # scoring ---------------------------------------------------------------
    def nll(self, xs: np.ndarray, ts: np.ndarray, reset: np.ndarray | None = None,
            lengths: np.ndarray | None = None) -> np.ndarray:
        """Per-token NLL (natural log) of an (N, T) block, as float64 (N, T).

        Targets of -1 are ignored (NLL 0). ``reset`` (N, T): where nonzero, the
        state before that step is zero. The carried state becomes, per row,
        the state after its last real step: ``lengths[n]`` steps (default T).
        No dropout, nothing kept for backward; memory is bounded by PROJ_ROWS.
        """
        xs = np.asarray(xs)
        ts = np.asarray(ts)
        if xs.ndim != 2 or xs.shape != ts.shape:
            raise ValueError("xs and ts must both be (N, T)")
        N, T = xs.shape
        M = N * T
        V, H = self.config.V, self.config.H
        labels = np.ascontiguousarray(ts.T, dtype=np.int32).reshape(M)
        check_ids(labels, V, "target ids", allow_ignore=True)
        _, _, hs_full, _ = self._run_rnn(xs, reset, train=False)
        hs = hs_full[1:].reshape(M, H)
        p = self.params
        out = np.empty(M, dtype=np.float64)
        rows = min(M, PROJ_ROWS)
        logits = self._buf("proj", (rows, V))
        for i in range(0, M, rows):
            j = min(M, i + rows)
            lg = logits[: j - i]
            np.matmul(hs[i:j], p.affine_W, out=lg)
            K.softmax_ce_forward(out[i:j], lg, p.affine_b, labels[i:j])
        if lengths is None:
            self.h = hs_full[T].copy()
        else:
            lengths = np.asarray(lengths)
            self.h = hs_full[lengths, np.arange(N)].copy()
        return out.reshape(T, N).T.copy()

    def step_logprobs(self, ids: np.ndarray) -> np.ndarray:
        """Feed one token per row (ids: (N,)) and return log p(next) as (N, V)."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1, 1)
        _, _, hs_full, _ = self._run_rnn(ids, None, train=False)
        self.h = hs_full[1].copy()
        p = self.params
        lp = hs_full[1] @ p.affine_W
        K.log_softmax_rows(lp, lp, p.affine_b)
        return lp


def warmup(dtype=np.float32) -> None:
    """Compile (or load from cache) every kernel for ``dtype`` on tiny arrays."""
    from streamlm.params import ModelConfig

    cfg = ModelConfig(V=7, D=3, H=4)
    p = Params.init(cfg, seed=0, dtype=dtype)
    g = p.zeros_like()
    xs = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32)
    ts = np.array([[1, 2, 3], [4, 5, -1]], dtype=np.int32)
    for recur in ("kernel", "blas"):
        m = RNNLM(p, recur=recur)
        m.forward(xs, ts)
        m.backward(g)
        m.nll(xs, ts, reset=np.zeros_like(xs))
    m.step_logprobs(np.array([0, 1]))
    K.sum_squares(g.flat)
    K.scale_(g.flat, p.dtype.type(1.0))
    K.sgd_update(p.flat, g.flat, p.dtype.type(0.0))
    mm, vv = np.zeros_like(p.flat), np.zeros_like(p.flat)
    one = p.dtype.type
    K.adam_update(p.flat, g.flat, mm, vv, one(0.0), one(0.9), one(0.999), one(1e-8))
    K.all_finite(p.flat)
    K.sample_from_logits(p.affine_b, p.affine_b, 1.0, 0.5)
