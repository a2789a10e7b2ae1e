"""Forward/backward orchestration of the RNN language model.

Layers, in order: Embedding -> RNN (tanh) -> Affine -> softmax cross-entropy,
over a block of T steps for N parallel streams. The module-level layer
functions only call kernels (``streamlm.kernels``) and GEMMs
(``streamlm.blas``), in order; ``RNNLM`` holds the carried hidden state and
preallocated buffers and splits the work over streamlm's own threads.

Internally everything is time-major: token ``m = t * N + n``. The public
methods take and return batch-major ``(N, T)`` arrays, like the book.

Truncated BPTT: ``forward`` starts from the carried state ``h`` (zeros at
first), and ``backward`` stops at the block start (the gradient w.r.t. ``h0``
is returned, for tests, but never applied).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from streamlm import blas
from streamlm import kernels as K
from streamlm.params import Params

log = logging.getLogger(__name__)

# From this many multiply-adds per recurrence step for one thread's streams
# (N/threads * H * H), and at least BLAS_RECUR_MIN_STREAMS streams per
# thread, the H x H product of each step goes to BLAS from Python; otherwise
# the whole block runs in one Numba kernel. Chosen by bench/bench_kernels.py
# (bench/RESULTS.md, forward + backward, T=35, one thread: the kernel wins up
# to 2e5 (H=100 with 20 streams: a tie), BLAS from 3.2e5 with 4 or more
# streams; with one stream the kernel wins even at H=650).
BLAS_RECUR_MIN_WORK = 250_000
BLAS_RECUR_MIN_STREAMS = 4

# The output layer's products are split over threads by columns of W (each
# thread packs only its block of W, once per call; the softmax then goes by
# rows): one W packing per call instead of one per thread was +20-40% at
# D=H=650 and +6-13% at D=H=100 (bench/RESULTS.md). When scoring, PROJ_ROWS
# rows per thread go through one GEMM at a time (larger slices pack W less
# often: 1024 rows scored D=H=650 25% faster than 256); the logits buffer is
# at most PROJ_ROWS * V floats and PROJ_BYTES per thread however long a
# chunk is.
PROJ_ROWS = 1024
PROJ_BYTES = 48 << 20

# Rows per segment of the single-stream pipeline (``_nll_pipelined``): 1024
# left the projecting thread idle for a quarter of a 4096-token chunk.
PIPE_ROWS = 256



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


# ---------------------------------------------------------------- threads --
# streamlm runs its own threads: each task calls serial (nogil) kernels and
# single-threaded BLAS on its share of the rows, streams or columns. One pool,
# coarse tasks: no second thread pool (OpenBLAS's, numba's) spins against it.
class _Engine:
    """``threads`` workers (the calling thread is one of them)."""

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._pool = None
        self._depth = 0  # single_blas nesting
        self._blas = blas.openblas_threads() if self.threads > 1 else None
        if self.threads > 1 and self._blas is None and blas.load() is None:
            # numpy's @ with a BLAS whose threads streamlm cannot hold at one
            log.debug("no CBLAS library streamlm can drive: running on one thread")
            self.threads = 1

    def map(self, fn, ranges) -> None:
        """fn(*r) for every r in ranges, concurrently; re-raises the first error."""
        if len(ranges) == 1 or self.threads == 1:
            for r in ranges:
                fn(*r)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="streamlm")
        futs = [self._pool.submit(fn, *r) for r in ranges[1:]]
        try:
            fn(*ranges[0])
        finally:
            errs = [f.exception() for f in futs]
        for e in errs:
            if e is not None:
                raise e

    @contextmanager
    def single_blas(self):
        """numpy's OpenBLAS on one thread while streamlm's own threads run.

        Only when OpenBLAS does streamlm's products (MKL is loaded sequential).
        Re-entrant: jobs hold it around their whole loop (``hold_blas``), so the
        per-call uses inside are free. Restoring OpenBLAS's thread count after
        every call wakes its worker threads, which then spin on the cores
        streamlm's threads compute on: a D=H=650 training step took 259 ms
        that way against 235 ms held (bench/RESULTS.md).
        """
        lib = blas.load()
        if self._blas is None or (lib is not None and lib.name != "openblas"):
            yield
            return
        self._depth += 1
        prev = None
        try:
            if self._depth == 1:
                set_, get = self._blas
                prev = get()
                if prev != 1:
                    set_(1)
            yield
        finally:
            self._depth -= 1
            if prev is not None and prev != 1:
                self._blas[0](prev)


_ENGINE: _Engine | None = None


def set_num_threads(n: int | None = None) -> None:
    """Threads streamlm computes on (default: numba's NUMBA_NUM_THREADS)."""
    global _ENGINE
    if n is None:
        from numba import config

        n = config.NUMBA_NUM_THREADS
    _ENGINE = _Engine(n)


def _engine() -> _Engine:
    if _ENGINE is None:
        set_num_threads()
    return _ENGINE


def get_num_threads() -> int:
    return _engine().threads


def hold_blas():
    """Context manager: numpy's OpenBLAS stays on one thread for the whole block.

    Jobs (training, scoring) wrap their loop in it; every RNNLM call inside
    then skips the set/restore of OpenBLAS's thread count (see
    ``_Engine.single_blas``). numpy's own ``@`` is single-threaded inside.
    """
    return _engine().single_blas()


def _slices(i: int, j: int, rows: int) -> list[tuple[int, int]]:
    """[i, j) in near-equal contiguous slices of at most ``rows`` (1025 rows in
    slices of 1024 -> 513 + 512, not 1024 + 1)."""
    n = j - i
    if n <= 0:
        return []
    return [(i + a, i + b) for a, b in _split(n, -(-n // max(1, rows)))]


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous, near-equal ranges covering [0, n)."""
    parts = max(1, min(parts, n))
    q, r = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + q + (1 if i < r else 0)
        out.append((lo, hi))
        lo = hi
    return out


# ------------------------------------------------------------ optimisers --
# The kernels of the same names, run on slices of the flat buffers in
# streamlm's threads (same arguments). Slices are multiples of 4096 elements.
def _chunks(P: int, threads: int) -> list[tuple[int, int]]:
    if threads == 1 or P < 65536:
        return [(0, P)]
    step = -(-P // threads)
    step = -(-step // 4096) * 4096
    return [(i, min(P, i + step)) for i in range(0, P, step)]


def sum_squares(g: np.ndarray) -> float:
    """sum(g**2) in float64 of a flat buffer g: (P,)."""
    eng = _engine()
    parts = _chunks(g.shape[0], eng.threads)
    out = [0.0] * len(parts)

    def run(k, i, j):
        out[k] = K.sum_squares(g[i:j])

    eng.map(run, [(k, i, j) for k, (i, j) in enumerate(parts)])
    return float(sum(out))


def sgd_update(p: np.ndarray, g: np.ndarray, lr, gscale=None) -> None:
    """p -= lr * (g * gscale) (lr, gscale: scalars of p's dtype; gscale default 1)."""
    gs = p.dtype.type(1) if gscale is None else gscale
    _engine().map(lambda i, j: K.sgd_update(p[i:j], g[i:j], lr, gs),
                  _chunks(p.shape[0], _engine().threads))


def adam_update(p, g, m, v, lr_t, beta1, beta2, eps, gscale=None) -> None:
    """The book's Adam step on g * gscale (see kernels.adam_update), on all threads."""
    gs = p.dtype.type(1) if gscale is None else gscale
    _engine().map(lambda i, j: K.adam_update(p[i:j], g[i:j], m[i:j], v[i:j], lr_t, beta1,
                                             beta2, eps, gs),
                  _chunks(p.shape[0], _engine().threads))


# ------------------------------------------------------------ time layers --
def time_embedding_forward(X, ids, W):
    """X: (M, D) out; ids: (M,) int32; W: (V, D)."""
    K.embedding_forward(X, ids, W)


def time_embedding_backward(dW, ids, dX):
    """dW: (V, D) accumulated; ids: (M,) int32; dX: (M, D)."""
    K.embedding_backward(dW, ids, dX)


def rnn_recur_rows(hs_full, xw, Wh, reset, n0, n1, use_blas: bool, t0=0, t1=None):
    """The recurrence for streams [n0, n1) and steps [t0, t1) of a block.

    hs_full: (T+1, N, H), hs_full[t0] holds the state before step t0 on entry,
    hs_full[t0+1:t1+1] is written; xw: (T, N, H) = X @ Wx + b;
    reset: (T, N) uint8 (nonzero: the state before step t is zero).
    """
    T = xw.shape[0] if t1 is None else t1
    if not use_blas:
        K.rnn_forward_rows(hs_full[t0 + 1:T + 1], xw[t0:T], hs_full[t0], Wh, reset[t0:T], n0, n1)
        return
    rs = reset[t0:T, n0:n1]
    any_reset = bool(rs.any())
    for t in range(t0, T):
        hp = hs_full[t, n0:n1]
        if any_reset and reset[t, n0:n1].any():
            hp = hp * (reset[t, n0:n1] == 0)[:, None].astype(hp.dtype)
        out = hs_full[t + 1, n0:n1]
        blas.gemm(hp, Wh, out)
        K.tanh_add_(out, xw[t, n0:n1])


def rnn_backward_rows(dxw, dh0, dhs, hs, Wh, n0, n1, use_blas: bool, WhT=None):
    """dxw, dh0 for streams [n0, n1) (see K.rnn_backward). WhT: a contiguous copy
    of Wh.T for the BLAS path (the callers' threads share one), made if None."""
    if not use_blas:
        K.rnn_backward_rows(dxw, dh0, dhs, hs, Wh, n0, n1)
        return
    T = hs.shape[0]
    dh = np.zeros((n1 - n0, hs.shape[2]), dtype=dxw.dtype)
    if WhT is None:  # per-step GEMMs: N x H @ H x H is 1.5x faster NN than NT
        WhT = np.ascontiguousarray(Wh.T)
    for t in range(T - 1, -1, -1):
        K.tanh_backward_(dxw[t, n0:n1], dhs[t, n0:n1], dh, hs[t, n0:n1])
        blas.gemm(dxw[t, n0:n1], WhT, dh)
    dh0[n0:n1] = dh


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
        """BLAS per step or the Numba kernel, by the work of one thread's streams."""
        if self.recur != "auto":
            return self.recur == "blas"
        n = -(-N // _engine().threads)
        return n >= BLAS_RECUR_MIN_STREAMS and n * self.config.H ** 2 >= BLAS_RECUR_MIN_WORK

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
    def _run_rnn(self, xs, reset, train: bool, eng: _Engine):
        """Embedding, input term and recurrence of an (N, T) block (threads: rows, streams)."""
        p = self.params
        N, T = xs.shape
        H, D = self.config.H, self.config.D
        M = N * T
        ids = np.ascontiguousarray(xs.T, dtype=np.int32).reshape(M)
        check_ids(ids, self.config.V, "input ids")
        mask_x = None
        if train and self.dropout > 0:
            mask_x = self._dropout_mask((M, D))
        X = self._buf("X", (M, D))
        xw = self._buf("xw", (T, N, H))
        xw2 = xw.reshape(M, H)
        Wx, b, E = p.rnn_Wx, p.rnn_b, p.embed_W

        def embed_rows(i, j):
            time_embedding_forward(X[i:j], ids[i:j], E)
            if mask_x is not None:
                X[i:j] *= mask_x[i:j]
            blas.gemm(X[i:j], Wx, xw2[i:j])
            xw2[i:j] += b

        eng.map(embed_rows, _split(M, eng.threads))
        hs_full = self._buf("hs_full", (T + 1, N, H))
        hs_full[0] = self._h0(N)
        if reset is None:
            reset_tm = self._buf("reset0", (T, N), np.uint8)
            reset_tm[...] = 0
        else:
            reset_tm = np.ascontiguousarray(np.asarray(reset, dtype=np.uint8).T)
        use_blas = self._use_blas(N)
        Wh = p.rnn_Wh
        eng.map(lambda n0, n1: rnn_recur_rows(hs_full, xw, Wh, reset_tm, n0, n1, use_blas),
                _split(N, eng.threads))
        return ids, X, hs_full, mask_x

    def _dropout_mask(self, shape) -> np.ndarray:
        keep = 1.0 - self.dropout
        m = self.rng.random(shape, dtype=np.float32) < keep
        return m.astype(self.params.dtype) * self.params.dtype.type(1.0 / keep)

    def _block(self, xs, ts) -> tuple[np.ndarray, np.ndarray]:
        """Check an (N, T) block; return xs and the time-major (N*T,) int32 targets,
        validated against V (-1 = ignore) before any kernel sees them."""
        xs = np.asarray(xs)
        ts = np.asarray(ts)
        if xs.ndim != 2 or xs.shape != ts.shape:
            raise ValueError("xs and ts must both be (N, T)")
        labels = np.ascontiguousarray(ts.T, dtype=np.int32).reshape(xs.size)
        check_ids(labels, self.config.V, "target ids", allow_ignore=True)
        return xs, labels

    # training ------------------------------------------------------------
    def forward(self, xs: np.ndarray, ts: np.ndarray, train: bool = False) -> float:
        """Mean NLL over the non-ignored targets of one (N, T) block.

        xs: (N, T) int input ids; ts: (N, T) int targets (-1 = ignore).
        Keeps the activations for ``backward`` and carries the state.
        With train=True, dropout (if configured) is applied.
        """
        xs, labels = self._block(xs, ts)
        N, T = xs.shape
        M = N * T
        V, H = self.config.V, self.config.H
        eng = _engine()
        with eng.single_blas():
            ids, X, hs_full, mask_x = self._run_rnn(xs, None, train, eng)
            hs_in = hs_full[1:].reshape(M, H)
            mask_h = None
            if train and self.dropout > 0:
                mask_h = self._dropout_mask((M, H))
                hs_in = self._buf("hs_in", (M, H))
            p = self.params
            logits = self._buf("logits", (M, V))
            nll = self._buf("nll", (M,), np.float64)
            count = int((labels >= 0).sum())
            scale = p.dtype.type(1.0 / count) if count else p.dtype.type(0.0)
            parts = _split(M, eng.threads)
            dbp = self._buf("dbp", (len(parts), V))
            W, bias, hs = p.affine_W, p.affine_b, hs_full[1:].reshape(M, H)

            if mask_h is not None:
                np.multiply(hs, mask_h, out=hs_in)
            cols = _split(V, eng.threads)

            def head_cols(a, b):  # logits[:, cols] = hs_in @ W[:, cols]: W packed once
                blas.gemm(hs_in, W[:, a:b], logits[:, a:b])

            def head_rows(k, i, j):  # then the softmax, by rows
                dbp[k] = 0
                K.softmax_ce_fused_db(nll[i:j], logits[i:j], bias, labels[i:j], scale,
                                      dbp[k], hs_in[i:j], W)  # logits -> dlogits

            eng.map(head_cols, cols)
            eng.map(head_rows, [(k, i, j) for k, (i, j) in enumerate(parts)])
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
        H, D, V = self.config.H, self.config.D, self.config.V
        eng = _engine()
        P = eng.threads
        dlogits = self._buf("logits", (M, V))
        dbp = self._buf("dbp", (len(_split(M, P)), V))
        grads["affine_b"] += dbp.sum(axis=0)
        W = p.affine_W
        gW = grads["affine_W"]
        rows, cols = _split(M, P), _split(V, P)
        use_blas = self._use_blas(N)
        dxw = self._buf("dxw", (T, N, H))
        dxw2 = dxw.reshape(M, H)
        dh0 = np.empty((N, H), dtype=p.dtype)
        dX = self._buf("dX", (M, D))
        gWx = self._buf("gWx", (P, D, H))
        gWh = self._buf("gWh", (P, H, H))
        gb = self._buf("gb", (P, H))
        hprev = c.hs_full[:-1].reshape(M, H)
        hs = c.hs_full[1:]
        Wx, Wh = p.rnn_Wx, p.rnn_Wh

        dhp = self._buf("dhs_part", (len(cols), M, H))

        def affine_back(k):
            # one block of V columns per thread: dW[:, cols] = hs_in^T @ dlogits[:, cols]
            # and the partial dhs_k = dlogits[:, cols] @ W[:, cols]^T (summed below),
            # so each thread packs only its own part of W
            a, b = cols[k]
            blas.gemm(c.hs_in.T, dlogits[:, a:b], gW[:, a:b], beta=1.0)
            blas.gemm(dlogits[:, a:b], W[:, a:b].T, dhp[k])

        def input_back(k, i, j):
            blas.gemm(c.X[i:j].T, dxw2[i:j], gWx[k])
            blas.gemm(hprev[i:j].T, dxw2[i:j], gWh[k])
            gb[k] = dxw2[i:j].sum(axis=0)
            blas.gemm(dxw2[i:j], Wx.T, dX[i:j])
            if c.mask_x is not None:
                dX[i:j] *= c.mask_x[i:j]

        with eng.single_blas():
            eng.map(affine_back, [(k,) for k in range(len(cols))])
            dhs = dhp[0]
            for k in range(1, len(cols)):
                dhs += dhp[k]
            if c.mask_h is not None:
                dhs *= c.mask_h
            streams = _split(N, P)
            WhT = np.ascontiguousarray(Wh.T) if use_blas else None
            eng.map(lambda n0, n1: rnn_backward_rows(dxw, dh0, dhs.reshape(T, N, H), hs, Wh,
                                                     n0, n1, use_blas, WhT), streams)
            eng.map(input_back, [(k, i, j) for k, (i, j) in enumerate(rows)])
        nr = len(rows)
        grads["rnn_Wx"] += gWx[:nr].sum(axis=0)
        grads["rnn_Wh"] += gWh[:nr].sum(axis=0)
        grads["rnn_b"] += gb[:nr].sum(axis=0)
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
        No dropout, nothing kept for backward; memory is bounded by PROJ_ROWS
        rows (and PROJ_BYTES) of logits per thread.
        """
        xs, labels = self._block(xs, ts)
        N, T = xs.shape
        M = N * T
        V, H = self.config.V, self.config.H
        eng = _engine()
        p = self.params
        out = np.empty(M, dtype=np.float64)
        P = eng.threads
        rows = min(M, PROJ_ROWS, max(64, PROJ_BYTES // (V * p.dtype.itemsize)))
        logits = self._buf("proj", (P, rows, V))
        W, bias = p.affine_W, p.affine_b
        with eng.single_blas():
            if N >= P or P == 1:
                _, _, hs_full, _ = self._run_rnn(xs, reset, False, eng)
                hs = hs_full[1:].reshape(M, H)

                lgs = logits.reshape(P * rows, V)
                cols = _split(V, P)
                for a0, b0 in _slices(0, M, P * rows):  # P * rows rows at a time
                    lg = lgs[: b0 - a0]

                    def gemm_cols(a, b, a0=a0, b0=b0, lg=lg):  # W packed once
                        blas.gemm(hs[a0:b0], W[:, a:b], lg[:, a:b])

                    def softmax_rows(i, j, a0=a0, lg=lg):
                        K.softmax_ce_forward(out[a0 + i:a0 + j], lg[i:j], bias,
                                             labels[a0 + i:a0 + j])

                    eng.map(gemm_cols, cols)
                    eng.map(softmax_rows, _split(b0 - a0, P))
            else:
                hs_full = self._nll_pipelined(xs, reset, labels, out, logits, eng)
        if lengths is None:
            self.h = hs_full[T].copy()
        else:
            lengths = np.asarray(lengths)
            self.h = hs_full[lengths, np.arange(N)].copy()
        return out.reshape(T, N).T.copy()

    def _nll_pipelined(self, xs, reset, labels, out, logits, eng: _Engine):
        """Fewer streams than threads: while the calling thread runs the
        recurrence segment by segment, the other threads project the segments
        already done; then the calling thread joins the projection."""
        import threading

        p = self.params
        N, T = xs.shape
        M = N * T
        H = self.config.H
        ids = np.ascontiguousarray(xs.T, dtype=np.int32).reshape(M)
        check_ids(ids, self.config.V, "input ids")
        X = self._buf("X", (M, self.config.D))
        xw = self._buf("xw", (T, N, H))
        time_embedding_forward(X, ids, p.embed_W)
        blas.gemm(X, p.rnn_Wx, xw.reshape(M, H))
        xw += p.rnn_b
        hs_full = self._buf("hs_full", (T + 1, N, H))
        hs_full[0] = self._h0(N)
        if reset is None:
            reset_tm = self._buf("reset0", (T, N), np.uint8)
            reset_tm[...] = 0
        else:
            reset_tm = np.ascontiguousarray(np.asarray(reset, dtype=np.uint8).T)
        use_blas = self._use_blas(N)
        rows = logits.shape[1]
        # steps per segment: small segments balance the two threads at the end
        seg_t = max(1, min(rows, PIPE_ROWS) // N)
        segs = [(t, min(T, t + seg_t)) for t in range(0, T, seg_t)]
        ready = [threading.Event() for _ in segs]
        nxt = iter(range(len(segs)))
        lock = threading.Lock()
        hs = hs_full[1:].reshape(M, H)
        W, bias = p.affine_W, p.affine_b
        failed = []

        def project(k):
            while True:
                with lock:
                    s = next(nxt, None)
                if s is None:
                    return
                ready[s].wait()
                if failed:
                    return
                a, b = segs[s][0] * N, segs[s][1] * N
                lg = logits[k, : b - a]
                blas.gemm(hs[a:b], W, lg)
                K.softmax_ce_forward(out[a:b], lg, bias, labels[a:b])

        def work(k):
            if k == 0:
                try:
                    for s, (t0, t1) in enumerate(segs):
                        rnn_recur_rows(hs_full, xw, p.rnn_Wh, reset_tm, 0, N, use_blas, t0, t1)
                        ready[s].set()
                except BaseException:
                    failed.append(True)
                    for e in ready:
                        e.set()
                    raise
            project(k)

        eng.map(work, [(k,) for k in range(eng.threads)])
        return hs_full

    def step_logprobs(self, ids: np.ndarray) -> np.ndarray:
        """Feed one token per row (ids: (N,)) and return log p(next) as (N, V)."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1, 1)
        _, _, hs_full, _ = self._run_rnn(ids, None, False, _Engine(1))
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
    sum_squares(g.flat)
    sgd_update(p.flat, g.flat, p.dtype.type(0.0))
    mm, vv = np.zeros_like(p.flat), np.zeros_like(p.flat)
    one = p.dtype.type
    adam_update(p.flat, g.flat, mm, vv, one(0.0), one(0.9), one(0.999), one(1e-8), one(1.0))
    K.all_finite(p.flat)
    K.sample_from_logits(p.affine_b, p.affine_b, 1.0, 0.5)
