"""Recurrent cells: one layer of the recurrence behind one interface, as ``heads.py`` is
for output layers.

A cell owns its parameters' part of the model (``layer{l}_Wx (D_l, G H)``,
``layer{l}_Wh (H, G H)``, ``layer{l}_b (G H)``; a one-layer tanh RNN keeps the names
``rnn_Wx``, ``rnn_Wh``, ``rnn_b`` of the first model files) and its kernels, and
answers, the same for every kind (the model, the scorer, the pipeline and the API
never ask which kind they hold):

* ``state_size``: floats of carried state per stream (H; an LSTM carries h and c);
* ``input_rows(X, out)``: the input terms ``X @ Wx + b`` of some rows;
* ``input_table(embed_W, pool)``: those of every word, for layer 0 of a frozen model;
* ``begin(N, T, ...)``: a :class:`Block` of N streams and T steps: its input terms,
  the state before it, and the outputs h of every step;
* ``advance(block, n0, n1, t0, t1)``: the recurrence for some streams and steps (the
  scoring and training forward; one step is generation and the KenLM ``State``);
  ``advance_split(block, pool)``: one stream on two threads;
* ``backward(block, dhs, grads, pool)``: the gradients of the block's parameters, of
  its input X (for the layer below or the embedding) and of the state before it.

Internally time-major: ``hs[t, n]``. The layer's output h of step t is
``block.hs[t]``; its carried state after the block, ``block.final(lengths)``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from streamlm.compute import blas, plan
from streamlm.compute import kernels as K
from streamlm.compute.memory import aligned_empty
from streamlm.compute.threads import Pool, Scratch, parts, split, stream_parts
from streamlm.nn.params import CELL_KINDS, layer_names

log = logging.getLogger("streamlm.nn.cells")

# How long a thread of the split (one stream on two threads) waits for the other's half
# of a step before it goes on alone, in microseconds. A step takes a few microseconds; a
# thread that waits longer has a partner that another process took off its core (CFS
# slices are milliseconds), and waiting for it would make every step as slow as the
# slowest thread (a 5 MB line beside one busy process took 7.6x its time alone).
SPLIT_WAIT_US = 30
# ... and how long in all, on average per step: two threads running side by side wait a
# fraction of a microsecond per step; two that take turns on one core (a busy machine)
# wait a context switch at every step and are slower than one thread.
SPLIT_STEP_WAIT_US = 1.0
SPLIT_SPIN_MAX: int | None = None  # SPLIT_WAIT_US in spins (measured at first use)
SPLIT_STEP_SPINS: int | None = None


def _split_spins() -> tuple[int, int]:
    global SPLIT_SPIN_MAX, SPLIT_STEP_SPINS
    if SPLIT_SPIN_MAX is None or SPLIT_STEP_SPINS is None:
        from streamlm.compute.threads import spins_per_us

        rate = spins_per_us()
        if SPLIT_SPIN_MAX is None:
            SPLIT_SPIN_MAX = max(1, int(SPLIT_WAIT_US * rate))
        if SPLIT_STEP_SPINS is None:
            SPLIT_STEP_SPINS = max(1, int(SPLIT_STEP_WAIT_US * rate))
    return SPLIT_SPIN_MAX, SPLIT_STEP_SPINS


# At most this many rows per thread, a backward splits the weight gradients by columns
# and accumulates them into ``grads`` in place; more, by rows into partial sums (summed
# after). For a segment of dynamic evaluation (20 rows, 2x200 LSTM, 2 threads) that took
# a layer's input backward from 1.0 ms to 0.6 ms: no partial sums of (D + H) x G H floats.
FEW_ROWS = 64


def few_rows_back(pool: Pool, X, hprev, dAx, dAh, Wx, grads, names: dict, dX) -> bool:
    """The weight gradients of a layer (``X^T dAx``, ``hprev^T dAh``, the biases' sums)
    added into ``grads`` and ``dX = dAx Wx^T``, for a block of few rows: each thread
    its columns of the gradients, its rows of dX. False (nothing done) for many rows."""
    M, GH = dAx.shape
    if M > FEW_ROWS * pool.threads:
        return False
    cols, rows = split(GH, pool.threads), split(M, pool.threads)
    gWx, gWh, gb = grads[names["Wx"]], grads[names["Wh"]], grads[names["b"]]
    gbh = grads[names["bh"]] if "bh" in names else None

    def part(k):
        if k < len(cols):
            a, b = cols[k]
            blas.gemm(X.T, dAx[:, a:b], gWx[:, a:b], beta=1.0)
            blas.gemm(hprev.T, dAh[:, a:b], gWh[:, a:b], beta=1.0)
            gb[a:b] += dAx[:, a:b].sum(axis=0)
            if gbh is not None:
                gbh[a:b] += dAh[:, a:b].sum(axis=0)
        if k < len(rows):
            i, j = rows[k]
            blas.gemm(dAx[i:j], Wx.T, dX[i:j])

    pool.map(part, [(k,) for k in range(max(len(cols), len(rows)))])
    return True


def panels(W: np.ndarray) -> np.ndarray:
    """W (K, J) in the kernels' column panels (ceil(J/64), K, 64) (see K.PANEL).

    Made once per block and shared by the threads: a copy of W (40 KB at H=100). On a
    cache line: a panel row (64 floats) is then whole cache lines, and no vector load
    of it is split across two (the single-stream recurrence was 1.5x slower in the
    processes where numpy put the panels off a line: H=100, 0.59 against 0.38 us per
    step)."""
    rows, cols = W.shape
    P = aligned_empty((-(-cols // K.PANEL), rows, K.PANEL), W.dtype)
    K.rnn_panels(P, W)
    return P


class Block:
    """One layer's share of a block of N streams and T steps.

    xw: the input terms, (T, N, G H); or with ``xid`` (T, N) the rows xw[xid[t, n]] of a
    table (a frozen layer 0 reads its input table's rows itself). hs_full: (T+1, N, H),
    the state before the block in hs_full[0] and the output h of step t in hs_full[t+1].
    reset: (T, N) uint8, nonzero where the state before step t is zero. X: the layer's
    input rows (M, D_l), kept for the backward (training only).
    """

    __slots__ = ("N", "T", "xw", "xid", "hs_full", "reset", "use_blas", "P", "X", "cs_full",
                 "G")

    def __init__(self, N, T, xw, xid, hs_full, reset, use_blas, P, X=None, cs_full=None,
                 G=None):
        self.N, self.T, self.xw, self.xid = N, T, xw, xid
        self.hs_full, self.reset, self.use_blas, self.P, self.X = hs_full, reset, use_blas, P, X
        self.cs_full = cs_full  # (T+1, N, H): an LSTM's c, as hs_full its h
        self.G = G  # (T, N, 4H): a gated cell's gates, kept for the backward (training)

    @property
    def hs(self) -> np.ndarray:
        """(T, N, H): the layer's output h of every step."""
        return self.hs_full[1:]


class Cell:
    """The interface (see the module doc); ``kind`` names it in the model file's meta."""

    kind: ClassVar[str]
    gates: ClassVar[int]  # G: Wx, Wh and b have G * H columns
    carries: ClassVar[int] = 1  # vectors of H carried from step to step (h; the LSTM: h, c)
    splits: ClassVar[bool] = False  # has a kernel for one stream on two threads

    def __init__(self, params, layer: int):
        cfg = params.config
        self.params = params
        self.layer = layer
        self.H = cfg.H
        self.D_in = cfg.D if layer == 0 else cfg.H
        self.names = layer_names(cfg, layer)
        self.buf = Scratch(params.dtype)

    @property
    def state_size(self) -> int:
        return self.carries * self.H

    def W(self, part: str) -> np.ndarray:
        return self.params[self.names[part]]

    # ------------------------------------------------------------ input terms --
    def input_rows(self, X: np.ndarray, out: np.ndarray) -> None:
        """out = X @ Wx + b for some rows X (m, D_l) -> out (m, G H)."""
        blas.gemm(X, self.W("Wx"), out)
        out += self.W("b")

    def input_table(self, embed_W: np.ndarray, pool: Pool) -> np.ndarray:
        """(V, G H) embed_W @ Wx + b, one row per word (in the model's word order)."""
        V = embed_W.shape[0]
        t = aligned_empty((V, self.gates * self.H), self.params.dtype)
        pool.map(lambda i, j: self.input_rows(embed_W[i:j], t[i:j]), parts(V, pool.threads, 256))
        return t

    def run(self, blk: Block, pool: Pool) -> None:
        """The whole block on the pool's threads, the streams in ranges."""
        pool.map(lambda n0, n1: self.advance(blk, n0, n1), stream_parts(blk.N, pool.threads))


class TanhRNN(Cell):
    """The Elman RNN of the book's chapter 5: ``h_t = tanh(h_{t-1} Wh + x_t Wx + b)``."""

    kind = "rnn"
    gates = 1
    splits = True

    # ------------------------------------------------------------- the block --
    def begin(self, N: int, T: int, xw, xid, h0: np.ndarray, reset: np.ndarray, threads: int,
              forced: str = "auto", hs_full=None, X=None, tag: str = "",
              keep: bool = False) -> Block:
        """A block of N streams and T steps whose input terms are ``xw`` (and ``xid``),
        state before it ``h0`` (N, state_size), on ``threads`` threads; ``keep``: it
        will be trained (a gated cell keeps its gates)."""
        if hs_full is None:
            hs_full = self.buf("hs_full" + tag, (T + 1, N, self.H))
        hs_full[0] = h0
        use_blas = plan.recurrence_blas(N, T, self.H, self.gates, threads, forced)
        if use_blas and xid is not None:
            raise ValueError("the BLAS recurrence needs the input terms written out")
        P = None if use_blas else self.panels()
        return Block(N, T, xw, xid, hs_full, reset, use_blas, P, X)

    def panels(self) -> np.ndarray:
        return panels(self.W("Wh"))

    def advance(self, blk: Block, n0: int, n1: int, t0: int = 0, t1: int | None = None) -> None:
        """The recurrence for streams [n0, n1) and steps [t0, t1) of the block: writes
        hs_full[t0+1 : t1+1] from hs_full[t0]."""
        T = blk.T if t1 is None else t1
        hs_full, reset = blk.hs_full, blk.reset
        if not blk.use_blas:
            hs = hs_full[t0 + 1:T + 1]
            if blk.xid is None:
                K.rnn_forward_rows(hs, blk.xw[t0:T], hs_full[t0], blk.P, reset[t0:T], n0, n1)
            else:
                K.rnn_forward_rows_x(hs, blk.xw, blk.xid[t0:T], hs_full[t0], blk.P,
                                     reset[t0:T], n0, n1)
            return
        Wh, xw = self.W("Wh"), blk.xw
        any_reset = bool(reset[t0:T, n0:n1].any())
        for t in range(t0, T):
            hp = hs_full[t, n0:n1]
            if any_reset and reset[t, n0:n1].any():
                hp = hp * (reset[t, n0:n1] == 0)[:, None].astype(hp.dtype)
            out = hs_full[t + 1, n0:n1]
            blas.gemm(hp, Wh, out)
            K.tanh_add_(out, xw[t, n0:n1])

    def advance_split(self, blk: Block, pool: Pool, t0: int = 0, t1: int | None = None) -> None:
        """advance for one stream (N == 1) on two of the pool's threads: each computes
        half of Wh's panels of every step (K.rnn_forward_split); bitwise the same states.
        A thread that waits more than SPLIT_WAIT_US for the other's half of a step (or
        SPLIT_STEP_WAIT_US a step on average) gives up, and the calling thread computes
        the rest of the block alone from the first step not done by both (the other,
        when it runs again, writes at most its half of one more step: the same values),
        so a taken core costs one wait, not one per step."""
        xw, xid = blk.xw, blk.xid
        if xid is None:  # the input terms written out: row t of xw is step t's
            xid = np.arange(xw.shape[0], dtype=np.int64).reshape(-1, 1)
            xw = xw.reshape(xw.shape[0], -1)
        T = xid.shape[0] if t1 is None else t1
        P, hs_full, reset = blk.P, blk.hs_full, blk.reset
        nb = P.shape[0]
        half = (nb + 1) // 2
        flags = np.zeros(48, dtype=np.int64)
        hs = hs_full[t0 + 1:T + 1]
        args = (hs, xw, xid[t0:T], hs_full[t0], P, reset[t0:T])
        spins, step_spins = _split_spins()

        def part(me):
            b0, b1 = (0, half) if me == 0 else (half, nb)
            if K.rnn_forward_split(*args, b0, b1, flags, me, spins, step_spins) >= 0 \
                    or me != 0:
                return
            # the caller's thread goes on alone from the first step both did not finish
            # (flags[16 * k]: the steps thread k completed)
            t = int(min(flags[0], flags[16]))
            h0 = hs_full[t0] if t == 0 else hs[t - 1]
            K.rnn_forward_rows_x(hs[t:], xw, xid[t0 + t:T], h0.reshape(1, -1), P,
                                 reset[t0 + t:T], 0, 1)

        pool.map(part, [(0,), (1,)])
        if flags[K.SPLIT_GAVE_UP]:
            log.debug("the split recurrence gave up waiting: the rest of the block ran on "
                      "one thread")
            plan.SPLIT_BACKOFF.gave_up()
        else:
            plan.SPLIT_BACKOFF.completed()

    @staticmethod
    def final(blk: Block, lengths=None) -> np.ndarray:
        """(N, state_size): each stream's state after its last real step, ``lengths[n]``
        of the block's T (default all); a copy."""
        hs_full = blk.hs_full
        if lengths is None:
            return hs_full[-1].copy()
        return hs_full[np.asarray(lengths), np.arange(hs_full.shape[1])].copy()

    # -------------------------------------------------------------- backward --
    def backward(self, blk: Block, dhs: np.ndarray, grads, pool: Pool
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Accumulate the block's parameter gradients into ``grads``; return (dX (M, D_l):
        the gradient of the layer's input rows, dh0 (N, state_size))."""
        N, T = blk.N, blk.T
        M, H, D = N * T, self.H, self.D_in
        threads = pool.threads
        rows = split(M, threads)  # (the partial sums' order: as in every version before)
        buf = self.buf
        dxw = buf("dxw", (T, N, H))
        dxw2 = dxw.reshape(M, H)
        dh0 = np.empty((N, H), dtype=self.params.dtype)
        dX = buf("dX", (M, D))
        hprev = blk.hs_full[:-1].reshape(M, H)
        hs = blk.hs_full[1:]
        Wx, Wh = self.W("Wx"), self.W("Wh")
        X = blk.X

        def input_back(k, i, j):
            blas.gemm(X[i:j].T, dxw2[i:j], gWx[k])
            blas.gemm(hprev[i:j].T, dxw2[i:j], gWh[k])
            gb[k] = dxw2[i:j].sum(axis=0)
            blas.gemm(dxw2[i:j], Wx.T, dX[i:j])

        use_blas = blk.use_blas
        WhT = np.ascontiguousarray(Wh.T) if use_blas else None
        PT = None if use_blas else panels(Wh.T)
        dhs3 = dhs.reshape(T, N, H)

        def back(n0, n1):
            if not use_blas:
                K.rnn_backward_rows(dxw, dh0, dhs3, hs, PT, n0, n1)
                return
            dh = np.zeros((n1 - n0, H), dtype=dxw.dtype)
            for t in range(T - 1, -1, -1):
                K.tanh_backward_(dxw[t, n0:n1], dhs3[t, n0:n1], dh, hs[t, n0:n1])
                blas.gemm(dxw[t, n0:n1], WhT, dh)
            dh0[n0:n1] = dh

        pool.map(back, stream_parts(N, threads))
        if few_rows_back(pool, X, hprev, dxw2, dxw2, Wx, grads, self.names, dX):
            return dX, dh0
        nr = len(rows)  # (the partial sums, only for many rows)
        gWx = buf("gWx", (nr, D, H))
        gWh = buf("gWh", (nr, H, H))
        gb = buf("gb", (nr, H))
        pool.map(input_back, [(k, i, j) for k, (i, j) in enumerate(rows)])
        grads[self.names["Wx"]] += gWx.sum(axis=0)
        grads[self.names["Wh"]] += gWh.sum(axis=0)
        grads[self.names["b"]] += gb.sum(axis=0)
        return dX, dh0


class _Gated(Cell):
    """What the LSTM and the GRU share: the input terms as (X, xid) rows for the kernels,
    the gates kept for the backward, and the per-step BLAS path for large blocks."""

    def begin(self, N: int, T: int, xw, xid, h0: np.ndarray, reset: np.ndarray, threads: int,
              forced: str = "auto", hs_full=None, X=None, tag: str = "",
              keep: bool = False) -> Block:
        H, GH = self.H, self.gates * self.H
        if hs_full is None:
            hs_full = self.buf("hs_full" + tag, (T + 1, N, H))
        hs_full[0] = h0[:, :H]
        use_blas = plan.recurrence_blas(N, T, H, self.gates, threads, forced)
        if xid is None:  # the input terms written out: row t*N + n is stream n's at step t
            xid = self.buf("xid" + tag, (T, N), np.int64)
            xid[...] = np.arange(T * N, dtype=np.int64).reshape(T, N)
            xw = xw.reshape(T * N, GH)
        cs_full = None
        if self.carries == 2:
            cs_full = self.buf("cs_full" + tag, (T + 1, N, H))
            cs_full[0] = h0[:, H:]
        G = self.buf("G" + tag, (T, N, 4 * H)) if keep else self.buf("G0", (0, 0, 0))
        P = None if use_blas else self.panels()
        return Block(N, T, xw, xid, hs_full, reset, use_blas, P, X, cs_full, G)

    def panels(self) -> np.ndarray:
        return panels(self.W("Wh"))

    def advance_split(self, blk: Block, pool: Pool, t0: int = 0, t1: int | None = None) -> None:
        self.advance(blk, 0, blk.N, t0, t1)  # (no two-thread kernel: the plan asks splits)

    def final(self, blk: Block, lengths=None) -> np.ndarray:
        idx = (-1 if lengths is None else np.asarray(lengths), np.arange(blk.N))
        h = blk.hs_full[idx]
        if blk.cs_full is None:
            return h.copy()
        return np.concatenate([h, blk.cs_full[idx]], axis=1)

    def _hprev(self, blk: Block) -> np.ndarray:
        """(M, H): the state h before each step, zero where a step resets."""
        N, T, H = blk.N, blk.T, self.H
        hprev = blk.hs_full[:-1].reshape(N * T, H)
        r = blk.reset.reshape(N * T)
        if r.any():
            hprev = hprev * (r == 0)[:, None].astype(hprev.dtype)
        return hprev

    def _input_back(self, blk: Block, dAx, dAh, grads, pool: Pool) -> np.ndarray:
        """The parameter gradients from dL/d(input pre-activations) dAx and dL/d(hidden
        pre-activations) dAh (M, G H) (one array for the LSTM); returns dX (M, D_l)."""
        M, D, H = blk.N * blk.T, self.D_in, self.H
        GH = self.gates * H
        dX = self.buf("dX", (M, D))
        hprev, X, Wx = self._hprev(blk), blk.X, self.W("Wx")
        if few_rows_back(pool, X, hprev, dAx, dAh, Wx, grads, self.names, dX):
            return dX
        rows = split(M, pool.threads)  # (the partial sums, only for many rows)
        nr = len(rows)
        gWx = self.buf("gWx", (nr, D, GH))
        gWh = self.buf("gWh", (nr, H, GH))
        gb = self.buf("gb", (nr, GH))
        gbh = self.buf("gbh", (nr, GH)) if "bh" in self.names else None

        def input_back(k, i, j):
            blas.gemm(X[i:j].T, dAx[i:j], gWx[k])
            blas.gemm(hprev[i:j].T, dAh[i:j], gWh[k])
            gb[k] = dAx[i:j].sum(axis=0)
            if gbh is not None:
                gbh[k] = dAh[i:j].sum(axis=0)
            blas.gemm(dAx[i:j], Wx.T, dX[i:j])

        pool.map(input_back, [(k, i, j) for k, (i, j) in enumerate(rows)])
        grads[self.names["Wx"]] += gWx.sum(axis=0)
        grads[self.names["Wh"]] += gWh.sum(axis=0)
        grads[self.names["b"]] += gb.sum(axis=0)
        if gbh is not None:
            grads[self.names["bh"]] += gbh.sum(axis=0)
        return dX

    def _keep(self, blk: Block, t0: int, T: int):
        G = blk.G
        return G[t0:T] if G.shape[0] else G


class LSTM(_Gated):
    """The book's TimeLSTM (chapter 6), gates f, g, i, o: ``A = x Wx + h Wh + b``;
    ``f = s(A_f)``, ``g = tanh(A_g)``, ``i = s(A_i)``, ``o = s(A_o)``; ``c' = f c + g i``;
    ``h' = o tanh(c')``. It carries h and c: its state is [h, c] (2H)."""

    kind = "lstm"
    gates = 4
    carries = 2

    def advance(self, blk: Block, n0: int, n1: int, t0: int = 0, t1: int | None = None) -> None:
        T = blk.T if t1 is None else t1
        hs_full, cs_full, reset = blk.hs_full, blk.cs_full, blk.reset
        G = self._keep(blk, t0, T)
        if not blk.use_blas:
            K.lstm_forward_rows_x(hs_full[t0 + 1:T + 1], cs_full[t0 + 1:T + 1], G, blk.xw,
                                  blk.xid[t0:T], hs_full[t0], cs_full[t0], blk.P, reset[t0:T],
                                  n0, n1)
            return
        Wh = self.W("Wh")
        A = np.empty((n1 - n0, self.gates * self.H), dtype=hs_full.dtype)
        for t in range(t0, T):
            hp, cp = hs_full[t, n0:n1], cs_full[t, n0:n1]
            if reset[t, n0:n1].any():
                keep = (reset[t, n0:n1] == 0)[:, None].astype(hp.dtype)
                hp, cp = hp * keep, cp * keep
            blas.gemm(hp, Wh, A)
            K.lstm_gates_(A, blk.xw, blk.xid[t, n0:n1], cp, hs_full[t + 1, n0:n1],
                          cs_full[t + 1, n0:n1], G[t - t0, n0:n1] if G.shape[0] else G)

    def backward(self, blk: Block, dhs: np.ndarray, grads, pool: Pool
                 ) -> tuple[np.ndarray, np.ndarray]:
        N, T, H = blk.N, blk.T, self.H
        M, GH = N * T, self.gates * self.H
        dA = self.buf("dA", (T, N, GH))
        dh0 = np.empty((N, H), dtype=self.params.dtype)
        dc0 = np.empty((N, H), dtype=self.params.dtype)
        PT = panels(self.W("Wh").T)
        pool.map(lambda n0, n1: K.lstm_backward_rows(
            dA, dh0, dc0, dhs.reshape(T, N, H), blk.cs_full[1:], blk.G, blk.cs_full[0], PT,
            blk.reset, n0, n1), stream_parts(N, pool.threads))
        dX = self._input_back(blk, dA.reshape(M, GH), dA.reshape(M, GH), grads, pool)
        return dX, np.concatenate([dh0, dc0], axis=1)

class GRU(_Gated):
    """PyTorch's ``nn.GRU`` (so weights move to and from torch unchanged), gates r, z, n:
    ``ax = x Wx + b``, ``ah = h Wh + bh``; ``r = s(ax_r + ah_r)``, ``z = s(ax_z + ah_z)``;
    ``n = tanh(ax_n + r ah_n)``; ``h' = (1 - z) n + z h``."""

    kind = "gru"
    gates = 3

    def advance(self, blk: Block, n0: int, n1: int, t0: int = 0, t1: int | None = None) -> None:
        T = blk.T if t1 is None else t1
        hs_full, reset, bh = blk.hs_full, blk.reset, self.W("bh")
        G = self._keep(blk, t0, T)
        if not blk.use_blas:
            K.gru_forward_rows_x(hs_full[t0 + 1:T + 1], G, blk.xw, blk.xid[t0:T], hs_full[t0],
                                 blk.P, bh, reset[t0:T], n0, n1)
            return
        Wh = self.W("Wh")
        A = np.empty((n1 - n0, self.gates * self.H), dtype=hs_full.dtype)
        for t in range(t0, T):
            hp = hs_full[t, n0:n1]
            if reset[t, n0:n1].any():
                hp = hp * (reset[t, n0:n1] == 0)[:, None].astype(hp.dtype)
            blas.gemm(hp, Wh, A)
            K.gru_gates_(A, blk.xw, blk.xid[t, n0:n1], bh, hp, hs_full[t + 1, n0:n1],
                         G[t - t0, n0:n1] if G.shape[0] else G)

    def backward(self, blk: Block, dhs: np.ndarray, grads, pool: Pool
                 ) -> tuple[np.ndarray, np.ndarray]:
        N, T, H = blk.N, blk.T, self.H
        M, GH = N * T, self.gates * self.H
        dAx = self.buf("dAx", (T, N, GH))
        dAh = self.buf("dAh", (T, N, GH))
        dh0 = np.empty((N, H), dtype=self.params.dtype)
        PT = panels(self.W("Wh").T)
        pool.map(lambda n0, n1: K.gru_backward_rows(
            dAx, dAh, dh0, dhs.reshape(T, N, H), blk.hs_full[1:], blk.G, blk.hs_full[0], PT,
            blk.reset, n0, n1), stream_parts(N, pool.threads))
        dX = self._input_back(blk, dAx.reshape(M, GH), dAh.reshape(M, GH), grads, pool)
        return dX, dh0


CELLS: dict[str, type[Cell]] = {"rnn": TanhRNN, "lstm": LSTM, "gru": GRU}


def cell_class(kind: str) -> type[Cell]:
    """The cell of a kind (params.CELL_KINDS says its gates and carried vectors)."""
    cls = CELLS[kind]
    assert (cls.gates, cls.carries) == CELL_KINDS[kind]
    return cls
