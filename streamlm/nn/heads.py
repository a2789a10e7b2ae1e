"""Output layers: from the RNN's hidden states to log-probabilities of words.

An output layer owns its parameters' part of the model and answers four
questions, the same for every kind (the model never asks which kind it has):

* ``forward(hs, labels, scale, pool)``: the NLL of each target, keeping what
  ``backward(grads, pool)`` needs to accumulate its parameter gradients and
  return ``dhs``, the gradient w.r.t. the hidden states (training); a layer
  with ``steps_in_backward`` takes ``backward(grads, pool, step)`` too: an
  :class:`ElementStep` applied to its own parameters as their gradient is
  computed (dynamic evaluation), instead of accumulating it;
* ``score(hs, labels, out, pool)``: the NLL of each target with bounded
  memory and nothing kept (scoring); ``scratch`` / ``score_rows`` do one
  thread's share, for the single-stream pipeline;
* ``logprobs(h)``: the whole distribution over the vocabulary;
* ``sample(h, temperature, rng)``: draw the next word.

Rows are hidden states ``hs: (M, H)``; targets ``labels: (M,)`` int32 with -1
for "ignore" (NLL 0, no gradient), validated before they get here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamlm.compute import blas
from streamlm.compute import kernels as K
from streamlm.compute.threads import RANGES_PER_THREAD, Pool, Scratch, parts, slices, split
from streamlm.nn.params import Params

# When scoring, each thread projects at most PROJ_ROWS rows per GEMM (larger
# slices pack W less often) and PROJ_BYTES of logits: the logits buffer does
# not grow with a chunk's length (bench/results/REPORT.md, "Rows per GEMM slice when
# scoring"; bench/HISTORY.md, "What changed in this round...", item 8).
PROJ_ROWS = 1024
PROJ_BYTES = 48 << 20


@dataclass(frozen=True)
class ElementStep:
    """An elementwise step the output layer takes as its backward computes the
    gradient (dynamic evaluation, streamlm.jobs.dynamic): theta <- theta0 + (1 - decay)
    (theta - theta0) - lr g inv, with ``theta0`` and ``inv`` Params over the trained
    weights and the per-parameter scale; lr and decay scalars of the weights' dtype."""

    theta0: Params
    inv: Params
    lr: np.floating
    decay: np.floating


class FullSoftmax:
    """``p(w | h) = softmax(h @ affine_W + affine_b)`` over all V words.

    The products are split over threads by columns of ``affine_W`` (each thread
    packs only its block of W, once per call), the softmax by rows
    (bench/HISTORY.md, "What changed in this round, and what each change bought",
    item 7, "The output layer split by columns of W").
    """

    steps_in_backward = True

    def __init__(self, params: Params):
        self.params = params
        self.buf = Scratch(params.dtype)
        self._hs: np.ndarray | None = None

    # ------------------------------------------------------------ training --
    def forward(self, hs: np.ndarray, labels: np.ndarray, scale, pool: Pool) -> np.ndarray:
        """nll: (M,) float64 of rows hs: (M, H); keeps dlogits = scale * d(sum nll)."""
        p = self.params
        M, V = hs.shape[0], p.config.V
        W, bias = p.affine_W, p.affine_b
        logits = self.buf("logits", (M, V))
        nll = self.buf("nll", (M,), np.float64)
        parts = split(M, pool.threads)
        dbp = self.buf("dbp", (len(parts), V))

        def by_cols(a, b):  # logits[:, cols] = hs @ W[:, cols]: W packed once
            blas.gemm(hs, W[:, a:b], logits[:, a:b])

        def by_rows(k, i, j):  # then the softmax, by rows: logits -> dlogits
            dbp[k] = 0
            K.softmax_ce_fused_db(nll[i:j], logits[i:j], bias, labels[i:j], scale, dbp[k],
                                  hs[i:j], W)

        pool.map(by_cols, split(V, pool.threads))
        pool.map(by_rows, [(k, i, j) for k, (i, j) in enumerate(parts)])
        self._hs = hs
        return nll

    def backward(self, grads: Params, pool: Pool, step: ElementStep | None = None
                 ) -> np.ndarray:
        """Accumulate d affine_W, d affine_b into grads; return dhs: (M, H).

        With ``step`` (dynamic evaluation), affine_W and affine_b take the step instead,
        each thread on its columns right after computing their gradient (into a
        scratch buffer: not accumulated, never zeroed) and their share of dhs (from the
        weights before the step)."""
        hs, self._hs = self._hs, None
        if hs is None:
            raise RuntimeError("backward() without forward()")
        p = self.params
        M, V, H = hs.shape[0], p.config.V, p.config.H
        W = p.affine_W
        dlogits = self.buf("logits", (M, V))
        db = self.buf("dbp", (len(split(M, pool.threads)), V)).sum(axis=0)
        cols = split(V, pool.threads)
        dhp = self.buf("dhs_part", (len(cols), M, H))
        if step is None:
            grads["affine_b"] += db
            gW = grads["affine_W"]
        else:
            gW = self.buf("step_g", (H, V))
            W0, inv = step.theta0.affine_W, step.inv.affine_W

        def by_cols(k):
            # one block of V columns per thread: dW[:, cols] = hs^T @ dlogits[:, cols] and
            # the partial dhs_k = dlogits[:, cols] @ W[:, cols]^T (summed below)
            a, b = cols[k]
            blas.gemm(dlogits[:, a:b], W[:, a:b].T, dhp[k])
            if step is None:
                blas.gemm(hs.T, dlogits[:, a:b], gW[:, a:b], beta=1.0)
            else:  # (the thread's block of the gradient, then its step, W read for dhs first)
                blas.gemm(hs.T, dlogits[:, a:b], gW[:, a:b])
                K.dyn_step_cols(W, W0, gW, inv, step.lr, step.decay, a, b)

        pool.map(by_cols, [(k,) for k in range(len(cols))])
        if step is not None:
            K.dyn_step_cols(p.affine_b[None], step.theta0.affine_b[None], db[None],
                            step.inv.affine_b[None], step.lr, step.decay, 0, V)
        dhs = dhp[0]
        for k in range(1, len(cols)):
            dhs += dhp[k]
        return dhs

    # ------------------------------------------------------------- scoring --
    def row_limit(self, M: int) -> int:
        """Rows one thread projects per GEMM when scoring M rows."""
        V = self.params.config.V
        return min(M, PROJ_ROWS, max(64, PROJ_BYTES // (V * self.params.dtype.itemsize)))

    def scratch(self, threads: int, rows: int) -> list[np.ndarray]:
        """One work buffer per thread for ``score_rows`` of up to ``rows`` rows."""
        lg = self.buf("proj", (threads, rows, self.params.config.V))
        return list(lg)

    def score_rows(self, work: np.ndarray, hs, labels, out) -> None:
        """One thread: out[m] = NLL of rows hs (at most the scratch's rows)."""
        p = self.params
        lg = work[: hs.shape[0]]
        blas.gemm(hs, p.affine_W, lg)
        K.softmax_ce_forward(out, lg, p.affine_b, labels)

    def score(self, hs: np.ndarray, labels: np.ndarray, out: np.ndarray, pool: Pool) -> None:
        """out: (M,) float64 = NLL of each row's target; logits of at most
        row_limit rows per thread exist at a time."""
        p = self.params
        M, V = hs.shape[0], p.config.V
        P = pool.threads
        rows = self.row_limit(M)
        lgs = self.buf("proj", (P, rows, V)).reshape(P * rows, V)
        W, bias = p.affine_W, p.affine_b
        cols = parts(V, P, 512)
        for a0, b0 in slices(0, M, P * rows):  # P * rows rows at a time
            lg = lgs[: b0 - a0]

            def by_cols(a, b, a0=a0, b0=b0, lg=lg):  # W packed once
                blas.gemm(hs[a0:b0], W[:, a:b], lg[:, a:b])

            def by_rows(i, j, a0=a0, lg=lg):
                K.softmax_ce_forward(out[a0 + i:a0 + j], lg[i:j], bias, labels[a0 + i:a0 + j])

            pool.map(by_cols, cols)
            pool.map(by_rows, parts(b0 - a0, P, 64))

    # ------------------------------------------------------------ sampling --
    def logprobs(self, h: np.ndarray) -> np.ndarray:
        """log p(w | h) for every word: (N, V) from h: (N, H)."""
        p = self.params
        lp = h @ p.affine_W
        K.log_softmax_rows(lp, lp, p.affine_b)
        return lp

    def sample(self, h: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        """One word drawn from p(w | h) ** (1 / temperature), h: (H,); one uniform of rng."""
        lp = self.logprobs(h[None, :])[0]
        zeros = np.zeros_like(lp)
        return int(K.sample_from_logits(lp, zeros, temperature, float(rng.random())))


# A class with at least this many tokens in a call has its word logits done as
# one GEMM; classes with fewer go to one kernel call that does them all
# (bench/HISTORY.md, "Large classes of a large vocabulary: BLAS, not the kernel").
CLASS_BLAS_MIN_TOKENS = 256
# ... and so does a class whose weights are larger than a core's L2 once it has
# CLASS_BLAS_MIN_TOKENS_LARGE tokens, in a model whose output weights do not fit
# a last-level cache (CLASS_BLAS_WEIGHTS_BYTES): the kernel reads a class's
# weights once per 4 tokens, then from memory (the rare words' classes of a
# large vocabulary: 19,268 words, 19 MB at H=256 in the V=100k bench), where a
# GEMM reads them once. With the weights in L3 (V=10k, H=650: 26 MB) the kernel
# is faster (one stream: GEMMs from 8 tokens on took 1.10x the time).
CLASS_BLAS_MIN_BYTES = 1 << 20
CLASS_BLAS_WEIGHTS_BYTES = 32 << 20
CLASS_BLAS_MIN_TOKENS_LARGE = 8
# Word logits of one GEMM when scoring, at most (floats): a large class's tokens
# go through in slices.
CLASS_BLAS_LOGITS = 1 << 22
# Rows per call when scoring: bounds the class logits and gathered states.
CLASS_SCORE_ROWS = 8192

_SERIAL = Pool(1)


class ClassSoftmax:
    """``P(w | h) = P(c(w) | h) P(w | c(w), h)`` (Mikolov's class-factored softmax).

    The class factor is ``softmax(h @ class_W + class_b)`` over the C classes; the
    word factor ``softmax(h @ affine_W[:, c] + affine_b[c])`` over the words of
    the target's class only, so a token costs O(H (C + |c|)), not O(H V). The
    model keeps the words in class order (class c is the column range
    ``start[c]:start[c+1]``); targets here are in that order. A call groups its
    tokens by target class: the class logits are one GEMM, a class with many
    tokens is one GEMM, the rest one kernel call (see CLASS_BLAS_MIN_TOKENS).
    """

    steps_in_backward = False  # (its gradient is row-sparse: the caller steps its rows)

    def __init__(self, params: Params):
        self.params = params
        cl = params.classes
        self.C = cl.C
        self.start = cl.start
        self.cls = cl.cls
        self.sizes = cl.sizes.astype(np.int64)
        self.buf = Scratch(params.dtype)
        self._ctx: dict | None = None

    # -------------------------------------------------------------- helpers --
    def _target_classes(self, labels: np.ndarray) -> np.ndarray:
        return np.where(labels >= 0, self.cls[np.maximum(labels, 0)], -1).astype(np.int32)

    def _group(self, labels: np.ndarray, buf: Scratch):
        """(perm, off): the tokens with a target grouped by class (K.group_by_class)."""
        perm = buf("perm", (labels.shape[0],), np.int64)
        off = buf("off", (self.C + 1,), np.int64)
        n = K.group_by_class(perm, off, labels, self.cls)
        return perm[:n], off

    def _plan(self, off: np.ndarray, threads: int) -> list[tuple[np.ndarray, list[int]]]:
        """Per thread: (classes for the kernel, classes for BLAS), by equal work."""
        ntok = np.diff(off)
        present = np.flatnonzero(ntok)
        work = ntok[present] * self.sizes[present]
        cuts = np.searchsorted(np.cumsum(work), work.sum() * np.arange(1, threads) / threads,
                               side="right")
        plan = []
        cfg, item = self.params.config, self.params.dtype.itemsize
        large = (self.sizes * (cfg.H * item) >= CLASS_BLAS_MIN_BYTES) & (
            cfg.V * cfg.H * item > CLASS_BLAS_WEIGHTS_BYTES)
        for grp in np.split(present, cuts):
            big = (ntok[grp] >= CLASS_BLAS_MIN_TOKENS) | (
                large[grp] & (ntok[grp] >= CLASS_BLAS_MIN_TOKENS_LARGE))
            plan.append((np.ascontiguousarray(grp[~big], dtype=np.int64), grp[big].tolist()))
        return [p for p in plan if len(p[0]) or p[1]] or [(present[:0].astype(np.int64), [])]

    # ------------------------------------------------------------- scoring --
    def row_limit(self, M: int) -> int:
        return min(M, CLASS_SCORE_ROWS)

    def scratch(self, threads: int, rows: int) -> list[Scratch]:
        return [Scratch(self.params.dtype) for _ in range(threads)]

    def score_rows(self, work: Scratch, hs, labels, out) -> None:
        """One thread: out[m] = NLL of rows hs with work's buffers."""
        self._score(hs, labels, out, _SERIAL, work)

    def score(self, hs: np.ndarray, labels: np.ndarray, out: np.ndarray, pool: Pool) -> None:
        """out: (M,) float64 = NLL of each row's target (0 where -1)."""
        for a, b in slices(0, hs.shape[0], CLASS_SCORE_ROWS):
            self._score(hs[a:b], labels[a:b], out[a:b], pool, self.buf)

    def _score(self, hs, labels, out, pool: Pool, buf: Scratch) -> None:
        p = self.params
        M = hs.shape[0]
        WT, b, start = p.affine_W.T, p.affine_b, self.start  # WT (V, H): the storage
        Z = buf("Z", (M, self.C))
        tcls = self._target_classes(labels)
        perm, off = self._group(labels, buf)
        lab = labels[perm]
        nll = np.zeros(perm.shape[0])  # of the BLAS classes, in group order
        plan = self._plan(off, min(pool.threads * RANGES_PER_THREAD, max(1, M // 512))
                          if pool.threads > 1 else 1)
        ntok = np.diff(off)
        step = {c: max(1, min(int(ntok[c]), CLASS_BLAS_LOGITS // int(self.sizes[c])))
                for _, big in plan for c in big}  # tokens per GEMM of class c
        L = [buf(f"L{k}", (max([step[c] * int(self.sizes[c]) for c in big] or [0]),))
             for k, (_, big) in enumerate(plan)]
        rows = parts(M, pool.threads, 256)
        cn = buf("cn", (M,), np.float64)  # the class factor's NLL
        out[:] = 0  # the word factor's, added token by token

        def part(k):  # thread k: its rows' class factor, its classes' word factor
            if k < len(rows):
                i, j = rows[k]
                blas.gemm(hs[i:j], p.class_W, Z[i:j])
                K.softmax_ce_forward(cn[i:j], Z[i:j], p.class_b, tcls[i:j])
            if k >= len(plan):
                return
            small, big = plan[k]
            K.class_words_nll(out, hs, perm, labels, WT, b, start, off, small)
            for c in big:
                s, e = start[c], start[c + 1]
                for o, o2 in slices(off[c], off[c + 1], step[c]):
                    lg = L[k][: (o2 - o) * (e - s)].reshape(o2 - o, e - s)
                    blas.gemm(hs[perm[o:o2]], WT[s:e].T, lg)
                    K.softmax_ce_forward(nll[o:o2], lg, b[s:e],
                                         (lab[o:o2] - s).astype(np.int32))
                    out[perm[o:o2]] = nll[o:o2]  # a token is in one class: no other writer

        pool.map(part, [(k,) for k in range(max(len(plan), len(rows)))])
        out += cn

    # ------------------------------------------------------------ training --
    def forward(self, hs: np.ndarray, labels: np.ndarray, scale, pool: Pool) -> np.ndarray:
        """nll: (M,) float64 of rows hs: (M, H); keeps the logit gradients of
        scale * sum(nll) for backward."""
        p = self.params
        M, H = hs.shape
        WT, b, start, buf = p.affine_W.T, p.affine_b, self.start, self.buf
        Z = buf("Z", (M, self.C))
        nll = buf("nll", (M,), np.float64)
        tcls = self._target_classes(labels)
        perm, off = self._group(labels, buf)
        perm, off = perm.copy(), off.copy()
        n = perm.shape[0]
        hg = np.take(hs, perm, axis=0, out=buf("hg", (n, H)))
        lab = labels[perm]
        ntok = np.diff(off)
        boff = np.zeros(self.C + 1, dtype=np.int64)
        np.cumsum(ntok * self.sizes, out=boff[1:])
        store = buf("store", (int(boff[-1]),))
        plan = self._plan(off, pool.threads)
        rows = split(M, len(plan))
        nt = max(len(plan), len(rows))
        dbc = buf("dbc", (nt, self.C))
        dbw = buf("dbw", (nt, p.config.V))
        nll_g = np.zeros(n)
        ident = np.arange(n, dtype=np.int64)  # hg holds the tokens in group order

        def part(k):  # thread k: its rows' class factor, its classes' word factor
            dbc[k] = 0
            dbw[k] = 0
            i, j = rows[k] if k < len(rows) else (0, 0)
            if j > i:
                blas.gemm(hs[i:j], p.class_W, Z[i:j])
                K.softmax_ce_fused_db(nll[i:j], Z[i:j], p.class_b, tcls[i:j], scale, dbc[k],
                                      hs[i:j], p.class_W)  # Z -> dZ
            small, big = plan[k] if k < len(plan) else (plan[0][0][:0], [])
            K.class_words_fused(nll_g, store, hg, ident, lab, WT, b, dbw[k], scale, start, off,
                                boff, small)
            for c in big:
                o, o2, s, e = off[c], off[c + 1], start[c], start[c + 1]
                lg = store[boff[c]:boff[c + 1]].reshape(o2 - o, e - s)
                blas.gemm(hg[o:o2], WT[s:e].T, lg)
                tmp = np.empty(o2 - o)
                K.softmax_ce_fused_db(tmp, lg, b[s:e], (lab[o:o2] - s).astype(np.int32), scale,
                                      dbw[k, s:e], hg[o:o2], WT[s:e].T)
                nll_g[o:o2] += tmp

        pool.map(part, [(k,) for k in range(nt)])
        nll[perm] += nll_g
        present = np.flatnonzero(ntok)
        self._ctx = {"hs": hs, "perm": perm, "off": off, "boff": boff, "hg": hg,
                     "plan": plan, "nt": nt,
                     "ranges": np.stack([start[present], start[present + 1]], axis=1)}
        return nll

    def backward(self, grads: Params, pool: Pool) -> np.ndarray:
        """Accumulate the gradients of class_W, class_b and of the target classes'
        columns of affine_W and entries of affine_b; return dhs: (M, H)."""
        c, self._ctx = self._ctx, None
        if c is None:
            raise RuntimeError("backward() without forward()")
        p = self.params
        hs, perm, off, boff, hg, plan = c["hs"], c["perm"], c["off"], c["boff"], c["hg"], c["plan"]
        M, H = hs.shape
        WT, start, buf = p.affine_W.T, self.start, self.buf
        dZ = buf("Z", (M, self.C))
        store = buf("store", (int(boff[-1]),))
        nt = c["nt"]
        grads["class_b"] += buf("dbc", (nt, self.C)).sum(axis=0)
        grads["affine_b"] += buf("dbw", (nt, p.config.V)).sum(axis=0)
        gcW, gWT = grads["class_W"], grads["affine_W"].T
        dhs = buf("dhs", (M, H))
        dhg = buf("dhg", (perm.shape[0], H))
        cols = split(self.C, nt)
        rows = split(M, nt)

        def part(k):  # thread k: class_W columns, dhs rows, its classes' words
            if k < len(cols):
                a, b_ = cols[k]
                blas.gemm(hs.T, dZ[:, a:b_], gcW[:, a:b_], beta=1.0)
            if k < len(rows):
                i, j = rows[k]
                blas.gemm(dZ[i:j], p.class_W.T, dhs[i:j])
            if k >= len(plan):
                return
            small, big = plan[k]
            K.class_words_backward(gWT, dhg, store, hg, WT, start, off, boff, small)
            for cl in big:
                o, o2, s, e = off[cl], off[cl + 1], start[cl], start[cl + 1]
                g = store[boff[cl]:boff[cl + 1]].reshape(o2 - o, e - s)
                blas.gemm(g.T, hg[o:o2], gWT[s:e], beta=1.0)
                blas.gemm(g, WT[s:e], dhg[o:o2])

        pool.map(part, [(k,) for k in range(nt)])
        dhs[perm] += dhg
        self.touched_ranges = c["ranges"]
        return dhs

    # ------------------------------------------------------------ sampling --
    def logprobs(self, h: np.ndarray) -> np.ndarray:
        """log p(w | h) for every word (class order): (N, V) from h: (N, H)."""
        p = self.params
        lc = h @ p.class_W
        K.log_softmax_rows(lc, lc, p.class_b)
        lw = h @ p.affine_W
        for c in range(self.C):
            s, e = self.start[c], self.start[c + 1]
            blk = np.ascontiguousarray(lw[:, s:e])
            K.log_softmax_rows(blk, blk, p.affine_b[s:e])
            lw[:, s:e] = blk + lc[:, c:c + 1]
        return lw

    def sample(self, h: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        """A class drawn from P(c | h) ** (1/T), then a word of it from
        P(w | c, h) ** (1/T); two uniforms of rng. Returns a class-order id."""
        p = self.params
        zc = h @ p.class_W
        c = int(K.sample_from_logits(zc, p.class_b, temperature, float(rng.random())))
        s, e = self.start[c], self.start[c + 1]
        zw = h @ p.affine_W[:, s:e]
        return int(s + K.sample_from_logits(zw, p.affine_b[s:e], temperature,
                                            float(rng.random())))


def output_layer(params: Params):
    """The output layer of a model's parameters."""
    if params.config.softmax == "class":
        return ClassSoftmax(params)
    return FullSoftmax(params)
