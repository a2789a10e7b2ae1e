"""Forward/backward orchestration of the RNN language model.

Layers, in order: Embedding -> RNN (tanh) -> output layer (``streamlm.heads``)
-> cross-entropy, over a block of T steps for N parallel streams. The layer
functions only call kernels (``streamlm.kernels``) and GEMMs
(``streamlm.blas``), in order; ``RNNLM`` holds the weights' views and
preallocated buffers and splits the work over streamlm's threads
(``streamlm.threads``).

The carried hidden state is not the model's: every call takes the state
before the block, ``h0`` (N, H) (None = zeros), and returns the state after
it, a new array the caller keeps (the trainer, the scorer's lanes, the API's
states). Nothing about one stream survives a call inside the model.

Internally everything is time-major: token ``m = t * N + n``. The public
methods take and return batch-major ``(N, T)`` arrays, like the book.
Truncated BPTT: ``backward`` stops at the block start; the gradient w.r.t.
``h0`` is returned (for tests) but never applied. A frozen model (scoring,
generation, evaluation) looks the input term up in a table (``input_table``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from streamlm import blas
from streamlm import kernels as K
from streamlm.heads import output_layer
from streamlm.memory import aligned_empty
from streamlm.params import Params
from streamlm.recurrence import (
    BACKOFF,
    recur_panels,
    rnn_backward_rows,
    rnn_recur_rows,
    rnn_recur_split,
    split_recurrence,
)
from streamlm.threads import Pool, Scratch, parts, pool, split, stream_parts

# The H x H product of each recurrence step goes to BLAS (from Python) from this
# many multiply-adds per step for one thread's streams (N/threads * H * H), and
# at least this many streams per thread; otherwise the whole block runs in one
# Numba kernel (bench/RESULTS.md, "recurrence threshold"). Since the panel
# kernels the kernel is the faster at every size measured there (up to 32
# streams per thread at H=650, 1.35e7), so BLAS is left for larger work only.
BLAS_RECUR_MIN_WORK = 16_000_000
BLAS_RECUR_MIN_STREAMS = 4
# A block of one step (generation) goes to BLAS from this H on: the kernel's
# panels, a copy of Wh made per call (recur_panels), then cost more than BLAS's
# overhead (one step, H=650: 175 us with the kernel, 130 with BLAS; H=256:
# 69 and 73; H=100: 32 and 39, model.step in turn).
BLAS_ONE_STEP_MIN_H = 256

# Rows per segment of the single-stream pipeline (``_nll_pipelined``). Full
# softmax: 1024 left the projecting thread idle for a quarter of a 4096-token
# chunk. Class softmax: a segment is cheap to score, and its per-call work (the
# grouping by class) wants long ones: 1024 rows scored 1.4x faster than 256.
PIPE_ROWS = 256
CLASS_PIPE_ROWS = 1024

_SERIAL = Pool(1)


def final_states(hs_full: np.ndarray, lengths=None) -> np.ndarray:
    """(N, H): row n's state after its last real step, ``lengths[n]`` of the block's
    T (default all), from hs_full (T+1, N, H); a copy."""
    if lengths is None:
        return hs_full[-1].copy()
    return hs_full[np.asarray(lengths), np.arange(hs_full.shape[1])].copy()


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


# --------------------------------------------------------------- the model --
@dataclass
class _Cache:
    """What ``backward`` needs from the last ``forward``."""

    N: int
    T: int
    ids: np.ndarray  # (M,) int32 time-major inputs
    X: np.ndarray  # (M, D) embedding output (after dropout)
    hs_full: np.ndarray  # (T+1, N, H)
    mask_x: np.ndarray | None
    mask_h: np.ndarray | None


class RNNLM:
    """SimpleRnnlm over blocks of N parallel streams, with preallocated buffers.
    ``forward(xs, ts, h0)`` returns the mean loss over the block and the final state
    and keeps what ``backward`` needs; ``nll(xs, ts, h0)`` keeps nothing."""

    def __init__(self, params: Params, dropout: float = 0.0, seed: int = 0,
                 recur: str = "auto", frozen: bool = False):
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if recur not in ("auto", "kernel", "blas"):
            raise ValueError("recur must be auto, kernel or blas")
        self.params = params
        self.classes = params.classes  # a class model keeps its words in class order
        self.head = output_layer(params)
        self.dropout = float(dropout)
        self.rng = np.random.default_rng(seed)
        self.recur = recur
        self._cache: _Cache | None = None
        self._touched = None
        self.buf = Scratch(params.dtype)
        self.frozen = bool(frozen)  # weights that do not move: see input_table
        self._table: np.ndarray | None = None
        self._table_of: RNNLM | None = None  # another frozen model of the same weights

    def sharing(self) -> RNNLM:
        """A frozen model of the same weights sharing this one's input table."""
        m = RNNLM(self.params, recur=self.recur, frozen=True)
        m._table_of = self
        return m

    def input_table(self) -> np.ndarray:
        """(V, H) embed_W @ rnn_Wx + rnn_b in the model's word order, made once: a row
        copy per token instead of a D x H product."""
        if self._table is None and self._table_of is not None:
            self._table = self._table_of.input_table()
        if self._table is None:
            p = self.params
            t = aligned_empty((self.config.V, self.config.H), p.dtype)
            pl = pool()

            def rows(i, j):
                blas.gemm(p.embed_W[i:j], p.rnn_Wx, t[i:j])
                t[i:j] += p.rnn_b

            pl.map(rows, parts(self.config.V, pl.threads, 256))
            self._table = t
        return self._table

    @property
    def config(self):
        return self.params.config

    def zero_state(self, N: int) -> np.ndarray:
        return np.zeros((N, self.config.H), dtype=self.params.dtype)

    def _h0(self, h0, N: int) -> np.ndarray:
        if h0 is None:
            return self.zero_state(N)
        h0 = np.asarray(h0)
        if h0.shape != (N, self.config.H):
            raise ValueError(f"state has shape {h0.shape}, the block needs ({N}, "
                             f"{self.config.H})")
        return h0

    def _use_blas(self, N: int, threads: int, T: int) -> bool:
        """BLAS per step or the Numba kernel, by the work of one thread's streams
        (and for a block of one step by H, BLAS_ONE_STEP_MIN_H)."""
        if self.recur != "auto":
            return self.recur == "blas"
        if T == 1 and self.config.H >= BLAS_ONE_STEP_MIN_H:
            return True
        n = -(-N // threads)
        return n >= BLAS_RECUR_MIN_STREAMS and n * self.config.H ** 2 >= BLAS_RECUR_MIN_WORK

    def _block(self, xs, ts) -> tuple[np.ndarray, np.ndarray]:
        """Check an (N, T) block, validated against V (-1 = ignore) before any kernel
        sees it; return xs and the time-major (N*T,) int32 targets, both in the
        model's own word order (a class model's class order)."""
        xs = np.asarray(xs)
        ts = np.asarray(ts)
        if xs.ndim != 2 or xs.shape != ts.shape:
            raise ValueError("xs and ts must both be (N, T)")
        labels = np.ascontiguousarray(ts.T, dtype=np.int32).reshape(xs.size)
        check_ids(labels, self.config.V, "target ids", allow_ignore=True)
        if self.classes is not None:
            check_ids(xs, self.config.V, "input ids")
            xs = self.classes.rank[xs]
            labels = self.classes.to_internal(labels)
        return xs, labels

    def _reset_tm(self, reset, T: int, N: int) -> np.ndarray:
        if reset is None:
            r = self.buf("reset0", (T, N), np.uint8)
            r[...] = 0
            return r
        return np.ascontiguousarray(np.asarray(reset, dtype=np.uint8).T)

    def _dropout_mask(self, shape) -> np.ndarray:
        keep = 1.0 - self.dropout
        m = self.rng.random(shape, dtype=np.float32) < keep
        return m.astype(self.params.dtype) * self.params.dtype.type(1.0 / keep)

    # shared front half ---------------------------------------------------
    def _input_terms(self, ids, T: int, N: int, pl: Pool, use_blas: bool, table, X=None,
                     mask_x=None):
        """The input term x_t @ Wx + b of every token of a block, as (xw, xid) for
        rnn_recur_rows: with ``table`` (a frozen model's input_table) and the kernel
        recurrence, the table itself and the ids (the kernel reads its rows); else
        (T, N, H) written out, from the table's rows or as X @ Wx + b (X: an (M, D)
        buffer for the embedding, kept for the backward; mask_x: its dropout)."""
        if table is not None and not use_blas:
            return table, ids.reshape(T, N)
        p = self.params
        M, H = T * N, self.config.H
        xw = self.buf("xw", (T, N, H))
        xw2 = xw.reshape(M, H)

        def rows(i, j):
            if table is not None:
                K.embedding_forward(xw2[i:j], ids[i:j], table)
                return
            K.embedding_forward(X[i:j], ids[i:j], p.embed_W)
            if mask_x is not None:
                X[i:j] *= mask_x[i:j]
            blas.gemm(X[i:j], p.rnn_Wx, xw2[i:j])
            xw2[i:j] += p.rnn_b

        pl.map(rows, parts(M, pl.threads, 256))
        return xw, None

    def _run_rnn(self, xs, h0, reset, train: bool, pl: Pool, keep: bool = True):
        """Embedding, input term and recurrence of an (N, T) block (threads: rows, streams).
        keep=False (scoring): X is not needed, and a frozen model looks the input
        term up in its table."""
        p = self.params
        N, T = xs.shape
        H, D = self.config.H, self.config.D
        M = N * T
        ids = np.ascontiguousarray(xs.T, dtype=np.int32).reshape(M)
        check_ids(ids, self.config.V, "input ids")
        mask_x = self._dropout_mask((M, D)) if train and self.dropout > 0 else None
        table = self.input_table() if self.frozen and not keep and not train else None
        X = self.buf("X", (M, D)) if table is None else None
        use_blas = self._use_blas(N, pl.threads, T)
        xw, xid = self._input_terms(ids, T, N, pl, use_blas, table, X, mask_x)
        hs_full = self.buf("hs_full", (T + 1, N, H))
        hs_full[0] = self._h0(h0, N)
        reset_tm = self._reset_tm(reset, T, N)
        Wh = p.rnn_Wh
        P = None if use_blas else recur_panels(Wh)
        pl.map(lambda n0, n1: rnn_recur_rows(hs_full, xw, Wh, reset_tm, n0, n1, use_blas, P=P,
                                             xid=xid), stream_parts(N, pl.threads))
        return ids, X, hs_full, mask_x

    # training ------------------------------------------------------------
    def forward(self, xs: np.ndarray, ts: np.ndarray, h0: np.ndarray | None = None,
                train: bool = False) -> tuple[float, np.ndarray]:
        """(mean NLL over the non-ignored targets, final state (N, H)) of one block.

        xs: (N, T) int input ids; ts: (N, T) int targets (-1 = ignore); h0: the
        state before the block (None: zeros). Keeps the activations for
        ``backward``. With train=True, dropout (if configured) is applied.
        """
        xs, labels = self._block(xs, ts)
        N, T = xs.shape
        M, H = N * T, self.config.H
        pl = pool()
        ids, X, hs_full, mask_x = self._run_rnn(xs, h0, None, train, pl)
        hs_in = hs_full[1:].reshape(M, H)
        mask_h = None
        if train and self.dropout > 0:
            mask_h = self._dropout_mask((M, H))
            hs_in = np.multiply(hs_in, mask_h, out=self.buf("hs_in", (M, H)))
        count = int((labels >= 0).sum())
        dt = self.params.dtype.type
        scale = dt(1.0 / count) if count else dt(0.0)
        nll = self.head.forward(hs_in, labels, scale, pl)
        self._cache = _Cache(N, T, ids, X, hs_full, mask_x, mask_h)
        self._touched = None
        loss = float(nll.sum() / count) if count else 0.0
        return loss, hs_full[T].copy()

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
        H, D = self.config.H, self.config.D
        pl = pool()
        P = pl.threads
        rows = split(M, P)
        use_blas = self._use_blas(N, P, T)
        dxw = self.buf("dxw", (T, N, H))
        dxw2 = dxw.reshape(M, H)
        dh0 = np.empty((N, H), dtype=p.dtype)
        dX = self.buf("dX", (M, D))
        gWx = self.buf("gWx", (P, D, H))
        gWh = self.buf("gWh", (P, H, H))
        gb = self.buf("gb", (P, H))
        hprev = c.hs_full[:-1].reshape(M, H)
        hs = c.hs_full[1:]
        Wx, Wh = p.rnn_Wx, p.rnn_Wh

        def input_back(k, i, j):
            blas.gemm(c.X[i:j].T, dxw2[i:j], gWx[k])
            blas.gemm(hprev[i:j].T, dxw2[i:j], gWh[k])
            gb[k] = dxw2[i:j].sum(axis=0)
            blas.gemm(dxw2[i:j], Wx.T, dX[i:j])
            if c.mask_x is not None:
                dX[i:j] *= c.mask_x[i:j]

        dhs = self.head.backward(grads, pl)
        if c.mask_h is not None:
            dhs *= c.mask_h
        WhT = np.ascontiguousarray(Wh.T) if use_blas else None
        PT = None if use_blas else recur_panels(Wh.T)
        pl.map(lambda n0, n1: rnn_backward_rows(dxw, dh0, dhs.reshape(T, N, H), hs, Wh,
                                                n0, n1, use_blas, WhT, PT), split(N, P))
        pl.map(input_back, [(k, i, j) for k, (i, j) in enumerate(rows)])
        nr = len(rows)
        grads["rnn_Wx"] += gWx[:nr].sum(axis=0)
        grads["rnn_Wh"] += gWh[:nr].sum(axis=0)
        grads["rnn_b"] += gb[:nr].sum(axis=0)
        K.embedding_backward(grads["embed_W"], c.ids, dX)
        self._cache = None
        if self.classes is not None:
            self._touched = (c.ids, self.head.touched_ranges)
        return dh0

    def touched(self) -> np.ndarray | None:
        """After ``backward``: the ranges (K, 2) of the flat gradient buffer that can be
        nonzero, for a row-sparse optimiser step (a class model: the embedding
        rows of the inputs, the target classes' words, and every other
        parameter); None when the gradient is dense (a full softmax)."""
        if self.classes is None or self._touched is None:
            return None
        ids, ranges = self._touched
        return self.params.segments(ids, ranges)

    # scoring ---------------------------------------------------------------
    def nll(self, xs: np.ndarray, ts: np.ndarray, h0: np.ndarray | None = None,
            reset: np.ndarray | None = None, lengths: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """(per-token NLL (natural log) as float64 (N, T), final state (N, H)).

        Targets of -1 are ignored (NLL 0). ``h0``: the state before the block
        (None: zeros). ``reset`` (N, T): where nonzero, the state before that
        step is zero. The final state of row n is the state after its last
        real step: ``lengths[n]`` steps (default T). No dropout, nothing kept
        for backward; the output layer's memory is bounded per thread.
        """
        xs, labels = self._block(xs, ts)
        N, T = xs.shape
        M = N * T
        pl = pool()
        out = np.empty(M, dtype=np.float64)
        if N >= pl.threads or pl.threads == 1:
            _, _, hs_full, _ = self._run_rnn(xs, h0, reset, False, pl, keep=False)
            self.head.score(hs_full[1:].reshape(M, self.config.H), labels, out, pl)
        else:
            hs_full = self._nll_pipelined(xs, h0, reset, labels, out, pl)
        return out.reshape(T, N).T.copy(), final_states(hs_full, lengths)

    def scoring_front(self, xs, h0, reset, threads: int, hs_full=None):
        """What the recurrence of a scoring block xs (N, T) (model word order) needs,
        its input terms made on the calling thread: (xw, xid, hs_full with the
        state before the block in hs_full[0], reset (T, N), use_blas). ``threads``:
        the threads the recurrence will run on (it picks the kernel or BLAS);
        hs_full: a (T+1, N, H) buffer, else the model's own."""
        N, T = xs.shape
        M = N * T
        ids = np.ascontiguousarray(xs.T, dtype=np.int32).reshape(M)
        check_ids(ids, self.config.V, "input ids")
        use_blas = self._use_blas(N, threads, T)
        table = self.input_table() if self.frozen else None
        X = self.buf("X", (M, self.config.D)) if table is None else None
        xw, xid = self._input_terms(ids, T, N, _SERIAL, use_blas, table, X)
        if hs_full is None:
            hs_full = self.buf("hs_full", (T + 1, N, self.config.H))
        hs_full[0] = self._h0(h0, N)
        return xw, xid, hs_full, self._reset_tm(reset, T, N), use_blas

    def _nll_pipelined(self, xs, h0, reset, labels, out, pl: Pool):
        """Fewer streams than threads: while the calling thread runs the
        recurrence segment by segment, the other threads score the segments
        already done; then the calling thread joins the scoring. One stream at
        large H instead runs its recurrence on two threads, then the scoring on
        all of them (streamlm.recurrence.split_recurrence)."""
        p = self.params
        N, T = xs.shape
        M = N * T
        H = self.config.H
        # (the input terms on the calling thread: the other threads are the pipeline's)
        xw, xid, hs_full, reset_tm, use_blas = self.scoring_front(xs, h0, reset, pl.threads)
        P = None if use_blas else recur_panels(p.rnn_Wh)
        if split_recurrence(N, H, pl.threads, use_blas) and BACKOFF.allow():  # on two threads
            rnn_recur_split(hs_full, xw, P, reset_tm, pl, xid=xid)
            self.head.score(hs_full[1:].reshape(M, H), labels, out, pl)
            return hs_full
        rows = self.head.row_limit(M)
        work = self.head.scratch(pl.threads, rows)
        # steps per segment: small segments balance the two threads at the end
        pipe = PIPE_ROWS if self.classes is None else CLASS_PIPE_ROWS
        seg_t = max(1, min(rows, pipe) // N)
        segs = [(t, min(T, t + seg_t)) for t in range(0, T, seg_t)]
        ready = [threading.Event() for _ in segs]
        nxt = iter(range(len(segs)))
        lock = threading.Lock()
        hs = hs_full[1:].reshape(M, H)
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
                self.head.score_rows(work[k], hs[a:b], labels[a:b], out[a:b])

        def run(k):
            if k == 0:
                try:
                    for s, (t0, t1) in enumerate(segs):
                        rnn_recur_rows(hs_full, xw, p.rnn_Wh, reset_tm, 0, N, use_blas, t0, t1,
                                       P, xid)
                        ready[s].set()
                except BaseException:
                    failed.append(True)
                    for e in ready:
                        e.set()
                    raise
            project(k)

        # the recurrence's thread, and no more scorers than there are segments
        pl.map(run, [(k,) for k in range(min(pl.threads, 1 + len(segs)))])
        return hs_full

    # generation ------------------------------------------------------------
    def step(self, ids: np.ndarray, h0: np.ndarray | None = None) -> np.ndarray:
        """Feed one token per row (ids: (N,)); return the new state (N, H)."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1, 1)
        check_ids(ids, self.config.V, "input ids")
        if self.classes is not None:
            ids = self.classes.rank[ids]
        _, _, hs_full, _ = self._run_rnn(ids, h0, None, False, _SERIAL, keep=False)
        return hs_full[1].copy()

    def logprobs(self, h: np.ndarray) -> np.ndarray:
        """log p(next word) for every word id: (N, V) from states h: (N, H)."""
        lp = self.head.logprobs(np.asarray(h, dtype=self.params.dtype))
        return lp if self.classes is None else lp[:, self.classes.rank]

    def sample(self, h: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        """The next word id drawn from p(w | h) ** (1/temperature); h: (H,)."""
        k = self.head.sample(np.asarray(h, dtype=self.params.dtype), temperature, rng)
        return k if self.classes is None else int(self.classes.order[k])


def warmup(dtype=np.float32) -> None:
    """Compile (or load from cache) every kernel for ``dtype`` on tiny arrays."""
    from streamlm import threads
    from streamlm.classes import WordClasses
    from streamlm.params import ModelConfig

    xs = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32)
    ts = np.array([[1, 2, 3], [4, 5, -1]], dtype=np.int32)
    classes = WordClasses(np.array([0, 0, 1, 1, 1, 2, 2], dtype=np.int32))
    for cfg, cl in ((ModelConfig(V=7, D=3, H=4), None),
                    (ModelConfig(V=7, D=3, H=4, softmax="class", C=3), classes)):
        p = Params.init(cfg, seed=0, dtype=dtype, classes=cl)
        g = p.zeros_like()
        for recur in ("kernel", "blas"):
            m = RNNLM(p, recur=recur)
            m.forward(xs, ts)
            m.backward(g)
            m.nll(xs, ts, reset=np.zeros_like(xs))
        h = m.step(np.array([0, 1]))
        m.sample(h[0], 1.0, np.random.default_rng(0))
    seg = np.array([[0, 3], [5, 9]], dtype=np.int64)
    threads.sum_squares(g.flat, seg)
    threads.sgd_update(p.flat, g.flat, p.dtype.type(0.0), seg=seg)
    threads.zero(g.flat, seg)
    threads.sum_squares(g.flat)
    threads.sgd_update(p.flat, g.flat, p.dtype.type(0.0))
    mm, vv = np.zeros_like(p.flat), np.zeros_like(p.flat)
    one = p.dtype.type
    threads.adam_update(p.flat, g.flat, mm, vv, one(0.0), one(0.9), one(0.999), one(1e-8),
                        one(1.0))
    threads.adam_update(p.flat, g.flat, mm, vv, one(0.0), one(0.9), one(0.999), one(1e-8),
                        one(1.0), seg)
    K.all_finite(p.flat)
