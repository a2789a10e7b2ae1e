"""streamlm's own threads: one pool, coarse tasks, and how work is split over it.

Each task calls serial (nogil) Numba kernels and single-threaded BLAS on its
share of the rows, streams or columns, so no second thread pool (OpenBLAS's,
numba's) spins against streamlm's. While a pool of more than one thread
exists, the process's BLAS libraries (numpy's) are held at one thread with
threadpoolctl; :func:`set_num_threads` (or :func:`shutdown`) gives them back.
The hold lasts as long as the pool, not one call: restoring OpenBLAS's thread
count after every call woke its workers, which then spun on the cores
streamlm computes on (bench/RESULTS.md).

Also here: the optimisers and the gradient norm over the flat parameter
buffer, run on slices in the pool (same arguments as the kernels).
"""

from __future__ import annotations

import logging

import numpy as np

from streamlm import blas
from streamlm import kernels as K
from streamlm.memory import aligned_empty

log = logging.getLogger(__name__)


class Pool:
    """``threads`` workers (the calling thread is one of them)."""

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._executor = None
        self._limit = None
        if self.threads > 1:
            lib = blas.load()
            if lib is None or lib.name != "mkl":  # MKL as streamlm loads it is sequential
                self._limit = blas.single_thread_limit()
                if self._limit is None:
                    log.warning("cannot hold numpy's BLAS at one thread (threadpoolctl finds "
                                "no BLAS library it can control): streamlm runs on one thread")
                    self.threads = 1

    def map(self, fn, ranges) -> None:
        """fn(*r) for every r in ranges, concurrently; re-raises the first error."""
        if len(ranges) == 1 or self.threads == 1:
            for r in ranges:
                fn(*r)
            return
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="streamlm")
        futs = [self._executor.submit(fn, *r) for r in ranges[1:]]
        try:
            fn(*ranges[0])
        finally:
            errs = [f.exception() for f in futs]
        for e in errs:
            if e is not None:
                raise e

    def close(self) -> None:
        """Stop the workers and give the BLAS libraries their thread counts back."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        if self._limit is not None:
            self._limit.restore_original_limits()
            self._limit = None


_POOL: Pool | None = None


def set_num_threads(n: int | None = None) -> None:
    """Threads streamlm computes on (default: numba's NUMBA_NUM_THREADS, the cores)."""
    global _POOL
    if n is None:
        from numba import config

        n = config.NUMBA_NUM_THREADS
    shutdown()
    _POOL = Pool(n)


def shutdown() -> None:
    """Close the pool (the next use opens a new one)."""
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


def pool() -> Pool:
    if _POOL is None:
        set_num_threads()
    return _POOL


def get_num_threads() -> int:
    return pool().threads


# ------------------------------------------------------------- splitting --
def split(n: int, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous, near-equal ranges covering [0, n)."""
    parts = max(1, min(parts, n))
    q, r = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + q + (1 if i < r else 0)
        out.append((lo, hi))
        lo = hi
    return out


def slices(i: int, j: int, rows: int) -> list[tuple[int, int]]:
    """[i, j) in near-equal contiguous slices of at most ``rows`` (1025 rows in
    slices of 1024 -> 513 + 512, not 1024 + 1)."""
    n = j - i
    if n <= 0:
        return []
    return [(i + a, i + b) for a, b in split(n, -(-n // max(1, rows)))]


def flat_chunks(P: int, threads: int) -> list[tuple[int, int]]:
    """Slices of a flat buffer of P elements for the optimisers: multiples of 4096."""
    if threads == 1 or P < 65536:
        return [(0, P)]
    step = -(-P // threads)
    step = -(-step // 4096) * 4096
    return [(i, min(P, i + step)) for i in range(0, P, step)]


class Scratch:
    """Named work buffers, reused from call to call (one per name: a new shape
    replaces the old buffer)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self._bufs: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple, dtype=None) -> np.ndarray:
        dtype = np.dtype(dtype or self.dtype)
        b = self._bufs.get(name)
        if b is None or b.shape != shape or b.dtype != dtype:
            b = self._bufs[name] = aligned_empty(shape, dtype)
        return b


# ------------------------------------------------------------ optimisers --
# Each takes ``seg``: None for the whole flat buffer, or (K, 2) int64 ranges
# [a, b) of it, the only elements a row-sparse step touches (a class model's
# touched rows and columns; streamlm.params.Params.segments). With ``seg`` the
# updates also zero the gradient there, in the same pass.
def _segment_parts(seg: np.ndarray, threads: int) -> list[np.ndarray]:
    """The segments split into at most ``threads`` groups of near-equal length."""
    if threads == 1 or seg.shape[0] < 2:
        return [seg]
    ends = np.cumsum(seg[:, 1] - seg[:, 0])
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, threads) / threads)
    return [g for g in np.split(seg, np.unique(cuts)) if len(g)]


def sum_squares(g: np.ndarray, seg: np.ndarray | None = None) -> float:
    """sum(g**2) in float64 of a flat buffer g: (P,) (or of its segments)."""
    p = pool()
    if seg is not None:
        parts = _segment_parts(seg, p.threads)
        sums = [0.0] * len(parts)

        def run_seg(k):
            sums[k] = K.sum_squares_segments(g, parts[k])

        p.map(run_seg, [(k,) for k in range(len(parts))])
        return float(sum(sums))
    parts = flat_chunks(g.shape[0], p.threads)
    out = [0.0] * len(parts)

    def run(k, i, j):
        out[k] = K.sum_squares(g[i:j])

    p.map(run, [(k, i, j) for k, (i, j) in enumerate(parts)])
    return float(sum(out))


def sgd_update(p: np.ndarray, g: np.ndarray, lr, gscale=None,
               seg: np.ndarray | None = None) -> None:
    """p -= lr * (g * gscale) (lr, gscale: scalars of p's dtype; gscale default 1);
    with ``seg``, only on the segments, and g = 0 there afterwards."""
    gs = p.dtype.type(1) if gscale is None else gscale
    pl = pool()
    if seg is not None:
        pl.map(lambda s: K.sgd_segments(p, g, s, lr, gs),
               [(s,) for s in _segment_parts(seg, pl.threads)])
        return
    pl.map(lambda i, j: K.sgd_update(p[i:j], g[i:j], lr, gs), flat_chunks(p.shape[0],
                                                                          pl.threads))


def adam_update(p, g, m, v, lr_t, beta1, beta2, eps, gscale=None,
                seg: np.ndarray | None = None) -> None:
    """The book's Adam step on g * gscale (see kernels.adam_update), on all threads;
    with ``seg``, lazily: only the segments' weights and moments move, and g = 0
    there afterwards."""
    gs = p.dtype.type(1) if gscale is None else gscale
    pl = pool()
    if seg is not None:
        pl.map(lambda s: K.adam_segments(p, g, m, v, s, lr_t, beta1, beta2, eps, gs),
               [(s,) for s in _segment_parts(seg, pl.threads)])
        return
    pl.map(lambda i, j: K.adam_update(p[i:j], g[i:j], m[i:j], v[i:j], lr_t, beta1, beta2,
                                      eps, gs),
           flat_chunks(p.shape[0], pl.threads))


def zero(g: np.ndarray, seg: np.ndarray | None = None) -> None:
    """g = 0 (or only its segments)."""
    if seg is None:
        g.fill(0)
        return
    pl = pool()
    pl.map(lambda s: K.zero_segments(g, s), [(s,) for s in _segment_parts(seg, pl.threads)])
