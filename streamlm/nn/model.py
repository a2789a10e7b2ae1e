"""Forward/backward orchestration of the RNN language model.

Layers, in order: Embedding -> the recurrent layers (``streamlm.nn.cells``: one or more
cells, layer 0 reading the embedding, layer l the layer below) -> output layer
(``streamlm.nn.heads``) -> cross-entropy, over a block of T steps for N parallel
streams. The layer functions only call kernels and GEMMs, in order; ``RNNLM`` holds
the weights' views and preallocated buffers and splits the work over streamlm's
threads (``streamlm.compute.threads``), as ``streamlm.compute.plan`` decides.

The carried state is not the model's: every call takes the state before the block,
``h0`` (N, S) (None = zeros; S = ``state_size``, every layer's state side by side),
and returns the state after it, a new array the caller keeps (the trainer, the
scorer's lanes, the API's states). Nothing about one stream survives a call inside
the model.

Internally everything is time-major: token ``m = t * N + n``. The public methods take
and return batch-major ``(N, T)`` arrays, like the book. Truncated BPTT: ``backward``
stops at the block start; the gradient w.r.t. ``h0`` is returned (for tests) but
never applied. A frozen model (scoring, generation, evaluation) looks layer 0's input
term up in a table (``input_table``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from streamlm.compute import kernels as K
from streamlm.compute import plan
from streamlm.compute.threads import Pool, Scratch, parts, pool
from streamlm.nn.cells import Block, Cell, cell_class
from streamlm.nn.heads import output_layer
from streamlm.nn.params import Params

_SERIAL = Pool(1)


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
    blocks: list[Block]  # per layer, each with its input rows X
    mask_x: np.ndarray | None  # the embedding's dropout
    masks: list[np.ndarray | None]  # the dropout on layer l's output (the last: the head's)


class RNNLM:
    """The language model over blocks of N parallel streams, with preallocated buffers.
    ``forward(xs, ts, h0)`` returns the mean loss over the block and the final state
    and keeps what ``backward`` needs; ``nll(xs, ts, h0)`` keeps nothing."""

    def __init__(self, params: Params, dropout: float = 0.0, seed: int = 0,
                 recur: str = "auto", frozen: bool = False, variational: bool = False):
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if recur not in ("auto", "kernel", "blas"):
            raise ValueError("recur must be auto, kernel or blas")
        self.params = params
        self.classes = params.classes  # a class model keeps its words in class order
        self.head = output_layer(params)
        cls = cell_class(params.config.cell)
        self.cells: list[Cell] = [cls(params, layer) for layer in range(params.config.layers)]
        sizes = [c.state_size for c in self.cells]
        self.state_size = int(sum(sizes))
        self._slices = [slice(int(a), int(a + s)) for a, s in zip(np.cumsum([0, *sizes]), sizes)]
        self.dropout = float(dropout)
        self.variational = bool(variational)  # Gal's: one mask per stream for every step
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
        """(V, G H): layer 0's input term of every word, embed_W @ Wx + b in the model's
        word order, made once: a row copy per token instead of a D x GH product."""
        if self._table is None and self._table_of is not None:
            self._table = self._table_of.input_table()
        if self._table is None:
            self._table = self.cells[0].input_table(self.params.embed_W, pool())
        return self._table

    @property
    def config(self):
        return self.params.config

    @property
    def sizes(self) -> plan.Sizes:
        cfg = self.config
        return plan.Sizes(V=cfg.V, C=cfg.C, H=cfg.H, G=self.cells[-1].gates)

    def zero_state(self, N: int) -> np.ndarray:
        return np.zeros((N, self.state_size), dtype=self.params.dtype)

    def top(self, state: np.ndarray) -> np.ndarray:
        """The top layer's output h (..., H) of states (..., S): what the head reads."""
        s = self._slices[-1]
        return state[..., s.start:s.start + self.config.H]

    def _h0(self, h0, N: int) -> np.ndarray:
        if h0 is None:
            return self.zero_state(N)
        h0 = np.asarray(h0)
        if h0.shape != (N, self.state_size):
            raise ValueError(f"state has shape {h0.shape}, the block needs ({N}, "
                             f"{self.state_size})")
        return h0

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

    def _dropout_mask(self, shape, N: int) -> np.ndarray:
        """An inverted-dropout mask for (M, width) time-major rows of N streams: drawn
        per row, or (variational) per stream and the same at every step."""
        keep = 1.0 - self.dropout
        M, width = shape
        draw = (N, width) if self.variational else shape
        m = self.rng.random(draw, dtype=np.float32) < keep
        m = m.astype(self.params.dtype) * self.params.dtype.type(1.0 / keep)
        return np.tile(m, (M // N, 1)) if self.variational else m

    # the recurrent layers ---------------------------------------------------
    def _layer0_terms(self, ids, T: int, N: int, pl: Pool, use_blas: bool, table, X=None,
                      mask_x=None):
        """Layer 0's input terms of a block, as (xw, xid) for its cell: with ``table``
        (a frozen model's input_table) and the kernel recurrence, the table itself and
        the ids (the kernel reads its rows); else (T, N, G H) written out, from the
        table's rows or as X @ Wx + b (X: an (M, D) buffer for the embedding, kept for
        the backward; mask_x: its dropout)."""
        if table is not None and not use_blas:
            return table, ids.reshape(T, N)
        p, cell = self.params, self.cells[0]
        M = T * N
        xw = self.buf("xw0", (T, N, cell.gates * cell.H))
        xw2 = xw.reshape(M, -1)

        def rows(i, j):
            if table is not None:
                K.embedding_forward(xw2[i:j], ids[i:j], table)
                return
            K.embedding_forward(X[i:j], ids[i:j], p.embed_W)
            if mask_x is not None:
                X[i:j] *= mask_x[i:j]
            cell.input_rows(X[i:j], xw2[i:j])

        pl.map(rows, parts(M, pl.threads, 256))
        return xw, None

    def _front(self, xs, h0, reset, threads: int, pl: Pool, train: bool = False,
               keep: bool = False, top=None):
        """The blocks of every layer for xs (N, T) (model word order): layer 0's input
        terms made (on ``pl``), each layer's state before the block set; layers above 0
        get their input terms as the layer below advances (_advance). ``threads``: the
        threads the recurrence will run on (it picks the kernel or BLAS); ``top``: a
        (T+1, N, H) buffer for the top layer's states (a pipeline's own), else the
        model's. Returns (ids, blocks, mask_x)."""
        N, T = xs.shape
        M = N * T
        cfg = self.config
        ids = np.ascontiguousarray(xs.T, dtype=np.int32).reshape(M)
        check_ids(ids, cfg.V, "input ids")
        c0 = self.cells[0]
        use_blas = plan.recurrence_blas(N, T, c0.H, c0.gates, threads, self.recur)
        mask_x = self._dropout_mask((M, cfg.D), N) if train and self.dropout > 0 else None
        table = self.input_table() if self.frozen and not keep and not train else None
        X = self.buf("X", (M, cfg.D)) if table is None else None
        xw, xid = self._layer0_terms(ids, T, N, pl, use_blas, table, X, mask_x)
        h0 = self._h0(h0, N)
        reset_tm = self._reset_tm(reset, T, N)
        blocks = []
        last = len(self.cells) - 1
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                xw, xid = self.buf(f"xw{layer}", (T, N, cell.gates * cell.H)), None
            blocks.append(cell.begin(
                N, T, xw, xid, h0[:, self._slices[layer]], reset_tm, threads, self.recur,
                hs_full=top if layer == last else None, X=X if layer == 0 and keep else None,
                tag=str(layer), keep=keep))
        return ids, blocks, mask_x

    def _inputs_above(self, blocks: list[Block], layer: int, t0: int, t1: int, pl: Pool,
                      masks=None, keep: bool = False) -> None:
        """Layer ``layer`` (> 0)'s input terms for steps [t0, t1) from the layer below's
        outputs (with its dropout mask, training)."""
        below, blk, cell = blocks[layer - 1], blocks[layer], self.cells[layer]
        N = blk.N
        X = below.hs[t0:t1].reshape((t1 - t0) * N, -1)
        if masks is not None and masks[layer - 1] is not None:
            X = np.multiply(X, masks[layer - 1][t0 * N:t1 * N],
                            out=self.buf(f"Xin{layer}", X.shape))
        if keep:
            blk.X = X
        out = blk.xw.reshape(blk.T * N, -1)[t0 * N:t1 * N]  # (time-major rows)
        pl.map(lambda i, j: cell.input_rows(X[i:j], out[i:j]),
               parts((t1 - t0) * N, pl.threads, 256))

    def _run_layers(self, xs, h0, reset, train: bool, pl: Pool, keep: bool = True):
        """Every layer's recurrence over an (N, T) block (threads: rows, streams).
        keep=False (scoring): the input rows are not kept, and a frozen model looks
        layer 0's input terms up in its table. Returns (ids, blocks, mask_x, masks)."""
        N, T = xs.shape
        ids, blocks, mask_x = self._front(xs, h0, reset, pl.threads, pl, train, keep)
        M, H = N * T, self.config.H
        drop = train and self.dropout > 0
        masks: list[np.ndarray | None] = []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                self._inputs_above(blocks, layer, 0, T, pl, masks, keep)
            cell.run(blocks[layer], pl)
            masks.append(self._dropout_mask((M, H), N) if drop else None)
        return ids, blocks, mask_x, masks

    def _advance(self, blocks: list[Block], t0: int, t1: int, pl: Pool) -> None:
        """Steps [t0, t1) of every layer of every stream, layer by layer, on pl's
        threads (a pipeline's calling thread: _SERIAL)."""
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                self._inputs_above(blocks, layer, t0, t1, pl)
            blk = blocks[layer]
            cell.advance(blk, 0, blk.N, t0, t1)

    def final_states(self, blocks: list[Block], lengths=None) -> np.ndarray:
        """(N, S): every layer's state after each stream's last real step."""
        states = [cell.final(blk, lengths) for cell, blk in zip(self.cells, blocks)]
        return states[0] if len(states) == 1 else np.concatenate(states, axis=1)

    # training ------------------------------------------------------------
    def forward(self, xs: np.ndarray, ts: np.ndarray, h0: np.ndarray | None = None,
                train: bool = False, tokens: bool = False):
        """(mean NLL over the non-ignored targets, final state (N, S)) of one block;
        with ``tokens``, the per-token NLL (N, T) float64 instead of the mean (dynamic
        evaluation scores a segment with the pass it then learns from).

        xs: (N, T) int input ids; ts: (N, T) int targets (-1 = ignore); h0: the
        state before the block (None: zeros). Keeps the activations for
        ``backward``. With train=True, dropout (if configured) is applied.
        """
        xs, labels = self._block(xs, ts)
        N, T = xs.shape
        M, H = N * T, self.config.H
        pl = pool()
        ids, blocks, mask_x, masks = self._run_layers(xs, h0, None, train, pl)
        hs_in = blocks[-1].hs.reshape(M, H)
        if masks[-1] is not None:
            hs_in = np.multiply(hs_in, masks[-1], out=self.buf("hs_in", (M, H)))
        count = int((labels >= 0).sum())
        dt = self.params.dtype.type
        scale = dt(1.0 / count) if count else dt(0.0)
        nll = self.head.forward(hs_in, labels, scale, pl)
        self._cache = _Cache(N, T, ids, blocks, mask_x, masks)
        self._touched = None
        if tokens:
            return nll.reshape(T, N).T.copy(), self.final_states(blocks)
        loss = float(nll.sum() / count) if count else 0.0
        return loss, self.final_states(blocks)

    def backward(self, grads: Params, step=None) -> np.ndarray:
        """Accumulate the gradients of the last ``forward``'s mean loss into ``grads``.

        The caller zeroes ``grads``. Returns dL/dh0 (N, S) (tests only: truncated
        BPTT drops it). ``step`` (a heads.ElementStep, for an output layer that
        ``steps_in_backward``): the output layer takes it instead of accumulating
        its gradient (dynamic evaluation).
        """
        c = self._cache
        if c is None:
            raise RuntimeError("backward() without forward()")
        pl = pool()
        if step is None:
            dhs = self.head.backward(grads, pl)
        else:
            dhs = self.head.backward(grads, pl, step)
        dh0 = []
        for layer in range(len(self.cells) - 1, -1, -1):
            mask = c.masks[layer]
            if mask is not None:
                dhs *= mask
            dX, d = self.cells[layer].backward(c.blocks[layer], dhs, grads, pl)
            dh0.append(d)
            dhs = dX
        if c.mask_x is not None:
            dhs *= c.mask_x
        K.embedding_backward(grads["embed_W"], c.ids, dhs)
        self._cache = None
        if self.classes is not None:
            self._touched = (c.ids, self.head.touched_ranges)
        return dh0[0] if len(dh0) == 1 else np.concatenate(dh0[::-1], axis=1)

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
        """(per-token NLL (natural log) as float64 (N, T), final state (N, S)).

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
        if plan.within_block(N, pl.threads):
            blocks = self._nll_pipelined(xs, h0, reset, labels, out, pl)
        else:
            _, blocks, _, _ = self._run_layers(xs, h0, reset, False, pl, keep=False)
            self.head.score(blocks[-1].hs.reshape(M, self.config.H), labels, out, pl)
        return out.reshape(T, N).T.copy(), self.final_states(blocks, lengths)

    def scoring_front(self, xs, h0, reset, threads: int, top=None) -> list[Block]:
        """The blocks of a scoring block xs (N, T) (model word order), layer 0's input
        terms made on the calling thread (a pipeline's other threads score); advance
        them with ``advance``. ``threads``: the threads the recurrence will run on;
        ``top``: a (T+1, N, H) buffer for the top layer's states, else the model's."""
        _, blocks, _ = self._front(xs, h0, reset, threads, _SERIAL, top=top)
        return blocks

    def advance(self, blocks: list[Block], t0: int, t1: int) -> None:
        """Steps [t0, t1) of every layer of a scoring_front's blocks, on this thread."""
        self._advance(blocks, t0, t1, _SERIAL)

    def _nll_pipelined(self, xs, h0, reset, labels, out, pl: Pool) -> list[Block]:
        """Fewer streams than threads: while the calling thread runs the
        recurrence segment by segment, the other threads score the segments
        already done; then the calling thread joins the scoring. One stream at
        large H instead runs its recurrence on two threads, then the scoring on
        all of them (streamlm.compute.plan.can_split)."""
        N, T = xs.shape
        M = N * T
        H = self.config.H
        # (the input terms on the calling thread: the other threads are the pipeline's)
        blocks = self.scoring_front(xs, h0, reset, pl.threads)
        hs = blocks[-1].hs.reshape(M, H)
        if all(plan.can_split(N, c.H, pl.threads, b.use_blas, c.gates)
               for c, b in zip(self.cells, blocks)) and plan.SPLIT_BACKOFF.allow():
            for layer, cell in enumerate(self.cells):  # each layer on two threads
                if layer > 0:
                    self._inputs_above(blocks, layer, 0, T, pl)
                cell.advance_split(blocks[layer], pl)
            self.head.score(hs, labels, out, pl)
            return blocks
        rows = self.head.row_limit(M)
        work = self.head.scratch(pl.threads, rows)
        # steps per segment: small segments balance the two threads at the end
        seg_t = max(1, min(rows, plan.pipe_rows(self.sizes)) // N)
        segs = [(t, min(T, t + seg_t)) for t in range(0, T, seg_t)]
        ready = [threading.Event() for _ in segs]
        nxt = iter(range(len(segs)))
        lock = threading.Lock()
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
                        self._advance(blocks, t0, t1, _SERIAL)
                        ready[s].set()
                except BaseException:
                    failed.append(True)
                    for e in ready:
                        e.set()
                    raise
            project(k)

        # the recurrence's thread, and no more scorers than there are segments
        pl.map(run, [(k,) for k in range(min(pl.threads, 1 + len(segs)))])
        return blocks

    # generation ------------------------------------------------------------
    def step(self, ids: np.ndarray, h0: np.ndarray | None = None) -> np.ndarray:
        """Feed one token per row (ids: (N,)); return the new state (N, S)."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1, 1)
        check_ids(ids, self.config.V, "input ids")
        if self.classes is not None:
            ids = self.classes.rank[ids]
        _, blocks, _, _ = self._run_layers(ids, h0, None, False, _SERIAL, keep=False)
        return self.final_states(blocks)

    def logprobs(self, state: np.ndarray) -> np.ndarray:
        """log p(next word) for every word id: (N, V) from states (N, S)."""
        lp = self.head.logprobs(np.asarray(self.top(state), dtype=self.params.dtype))
        return lp if self.classes is None else lp[:, self.classes.rank]

    def sample(self, state: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        """The next word id drawn from p(w | state) ** (1/temperature); state: (S,)."""
        h = np.ascontiguousarray(self.top(state), dtype=self.params.dtype)
        k = self.head.sample(h, temperature, rng)
        return k if self.classes is None else int(self.classes.order[k])


def warmup(dtype=np.float32) -> None:
    """Compile (or load from cache) every kernel for ``dtype`` on tiny arrays."""
    from streamlm.nn import optim
    from streamlm.nn.classes import WordClasses
    from streamlm.nn.params import ModelConfig

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
    optim.sum_squares(g.flat, seg)
    optim.sgd_update(p.flat, g.flat, p.dtype.type(0.0), seg=seg)
    optim.zero(g.flat, seg)
    optim.sum_squares(g.flat)
    optim.sgd_update(p.flat, g.flat, p.dtype.type(0.0))
    mm, vv = np.zeros_like(p.flat), np.zeros_like(p.flat)
    one = p.dtype.type
    optim.adam_update(p.flat, g.flat, mm, vv, one(0.0), one(0.9), one(0.999), one(1e-8),
                      one(1.0))
    optim.adam_update(p.flat, g.flat, mm, vv, one(0.0), one(0.9), one(0.999), one(1e-8),
                      one(1.0), seg)
    K.all_finite(p.flat)
