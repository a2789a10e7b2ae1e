"""Output layers: from the RNN's hidden states to log-probabilities of words.

An output layer owns its parameters' part of the model and answers four
questions, the same for every kind (the model never asks which kind it has):

* ``forward(hs, labels, scale, pool)``: the NLL of each target, keeping what
  ``backward(grads, pool)`` needs to accumulate its parameter gradients and
  return ``dhs``, the gradient w.r.t. the hidden states (training);
* ``score(hs, labels, out, pool)``: the NLL of each target with bounded
  memory and nothing kept (scoring); ``scratch`` / ``score_rows`` do one
  thread's share, for the single-stream pipeline;
* ``logprobs(h)``: the whole distribution over the vocabulary;
* ``sample(h, temperature, rng)``: draw the next word.

Rows are hidden states ``hs: (M, H)``; targets ``labels: (M,)`` int32 with -1
for "ignore" (NLL 0, no gradient), validated before they get here.
"""

from __future__ import annotations

import numpy as np

from streamlm import blas
from streamlm import kernels as K
from streamlm.params import Params
from streamlm.threads import Pool, Scratch, slices, split

# When scoring, each thread projects at most PROJ_ROWS rows per GEMM (larger
# slices pack W less often) and PROJ_BYTES of logits: the logits buffer does
# not grow with a chunk's length (bench/RESULTS.md, "projection slices").
PROJ_ROWS = 1024
PROJ_BYTES = 48 << 20


class FullSoftmax:
    """``p(w | h) = softmax(h @ affine_W + affine_b)`` over all V words.

    The products are split over threads by columns of ``affine_W`` (each thread
    packs only its block of W, once per call), the softmax by rows
    (bench/RESULTS.md, "output layer by columns").
    """

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

    def backward(self, grads: Params, pool: Pool) -> np.ndarray:
        """Accumulate d affine_W, d affine_b into grads; return dhs: (M, H)."""
        hs, self._hs = self._hs, None
        if hs is None:
            raise RuntimeError("backward() without forward()")
        p = self.params
        M, V, H = hs.shape[0], p.config.V, p.config.H
        W = p.affine_W
        gW = grads["affine_W"]
        dlogits = self.buf("logits", (M, V))
        grads["affine_b"] += self.buf("dbp", (len(split(M, pool.threads)), V)).sum(axis=0)
        cols = split(V, pool.threads)
        dhp = self.buf("dhs_part", (len(cols), M, H))

        def by_cols(k):
            # one block of V columns per thread: dW[:, cols] = hs^T @ dlogits[:, cols] and
            # the partial dhs_k = dlogits[:, cols] @ W[:, cols]^T (summed below)
            a, b = cols[k]
            blas.gemm(hs.T, dlogits[:, a:b], gW[:, a:b], beta=1.0)
            blas.gemm(dlogits[:, a:b], W[:, a:b].T, dhp[k])

        pool.map(by_cols, [(k,) for k in range(len(cols))])
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
        cols = split(V, P)
        for a0, b0 in slices(0, M, P * rows):  # P * rows rows at a time
            lg = lgs[: b0 - a0]

            def by_cols(a, b, a0=a0, b0=b0, lg=lg):  # W packed once
                blas.gemm(hs[a0:b0], W[:, a:b], lg[:, a:b])

            def by_rows(i, j, a0=a0, lg=lg):
                K.softmax_ce_forward(out[a0 + i:a0 + j], lg[i:j], bias, labels[a0 + i:a0 + j])

            pool.map(by_cols, cols)
            pool.map(by_rows, split(b0 - a0, P))

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


def output_layer(params: Params):
    """The output layer of a model's parameters."""
    return FullSoftmax(params)
