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
import os
import threading

import numpy as np

from streamlm import blas
from streamlm import kernels as K
from streamlm.memory import aligned_empty

log = logging.getLogger(__name__)


# Spins a waiting thread makes before it sleeps: 0.7 ms on the benchmark
# machine, longer than the gaps between the parallel phases of a training step.
# Spinning longer (2**24, 6 ms) took a core from the reader thread when scoring
# (20 streams: 1.13x the time) for no clear gain in training.
SPIN_MAX = 1 << 21
_FLAG_STRIDE = 8  # int64s per flag: one cache line each


class Pool:
    """``threads`` workers (the calling thread is one of them).

    A worker waits for its next task, and the caller for the workers' results,
    by spinning on a counter without the GIL (streamlm.kernels.pool_wait) for
    up to SPIN_MAX spins, and only then sleeps on a semaphore. A sleeping thread
    takes about 40 us to wake on the VMs streamlm runs on, and a class model's
    training step hands work over about ten times in 5 ms (bench/NOTES.md,
    "Pool hand-offs"). Spinning is off when there are more threads than cores
    (a spinner would take the core of the thread it waits for) and without
    the JIT (the loop would hold the GIL).
    """

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._limit = None
        self._workers: list = []
        if self.threads > 1:
            lib = blas.load()
            if lib is None or lib.name != "mkl":  # MKL as streamlm loads it is sequential
                self._limit = blas.single_thread_limit()
                if self._limit is None:
                    log.warning("cannot hold numpy's BLAS at one thread (threadpoolctl finds "
                                "no BLAS library it can control): streamlm runs on one thread")
                    self.threads = 1
        self._busy = threading.Lock()  # one map at a time; others run serially
        self._local = threading.local()

    def _start(self) -> None:
        from numba import config

        W = self.threads - 1
        self._pid = os.getpid()
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        self._spin = 0 if config.DISABLE_JIT or self.threads > cores else SPIN_MAX
        # per worker w: post (its task count), done, and the two sleep flags
        self._flags = np.zeros(4 * W * _FLAG_STRIDE, dtype=np.int64)
        self._tasks: list = [None] * W
        self._errs: list = [None] * W
        self._seqs = [0] * W  # tasks posted to each worker
        self._wake = [threading.Semaphore(0) for _ in range(W)]  # the worker's
        self._back = [threading.Semaphore(0) for _ in range(W)]  # the caller's
        self._workers = [threading.Thread(target=self._work, args=(w,), daemon=True,
                                          name=f"streamlm-{w + 1}") for w in range(W)]
        for t in self._workers:
            t.start()

    def _idx(self, w: int, k: int) -> int:  # k: 0 post, 1 done, 2 worker asleep, 3 caller asleep
        return (4 * w + k) * _FLAG_STRIDE

    def _await(self, w: int, k: int, seq: int, sems) -> None:
        """Wait until flag k of worker w reaches seq: spin, then sleep."""
        if not K.pool_wait(self._flags, self._idx(w, k), seq, self._spin):
            self._sleep(w, k, seq, sems)

    def _sleep(self, w: int, k: int, seq: int, sems) -> None:
        """After the spin gave up: announce the sleep (flag k + 2), and sleep on
        sems[w] unless flag k reached seq meanwhile with nobody to wake us."""
        if K.pool_announce_sleep(self._flags, self._idx(w, k + 2), self._idx(w, k), seq) != 1:
            sems[w].acquire()

    def _post(self, w: int) -> None:
        """Hand worker w its task (self._tasks[w], None to stop)."""
        self._seqs[w] += 1
        if K.pool_signal(self._flags, self._idx(w, 0), self._seqs[w], self._idx(w, 2)):
            self._wake[w].release()

    def _work(self, w: int) -> None:
        self._local.worker = True
        f, post = self._flags, self._idx(w, 0)
        seq, spun = 1, K.pool_wait(f, post, 1, self._spin)
        while True:
            if not spun:
                self._sleep(w, 0, seq, self._wake)
            task, self._tasks[w] = self._tasks[w], None
            if task is None:  # close()
                return
            err = None
            try:
                for fn, r in task:
                    fn(*r)
            except BaseException as e:  # re-raised by the caller
                err = e
            self._errs[w] = err
            # done, and spin for the next task, without taking the GIL in between
            code = K.pool_signal_wait(f, self._idx(w, 1), seq, self._idx(w, 3), post, seq + 1,
                                      self._spin)
            if code & 1:
                self._back[w].release()
            seq, spun = seq + 1, bool(code & 2)

    def map(self, fn, ranges) -> None:
        """fn(*r) for every r in ranges, concurrently; re-raises the first error.

        The calling thread runs ranges[0], ranges[P], ...; worker w the ranges
        w + 1, w + 1 + P, ... A map from inside a task, or while another
        thread's map runs, runs serially on its caller."""
        ranges = list(ranges)
        P = self.threads
        if len(ranges) == 1 or P == 1 or getattr(self._local, "worker", False) \
                or not self._busy.acquire(blocking=False):
            for r in ranges:
                fn(*r)
            return
        try:
            if not self._workers or self._pid != os.getpid():  # (a forked child has none)
                self._start()
            used = [w for w in range(P - 1) if w + 1 < len(ranges)]
            for w in used:
                self._tasks[w] = [(fn, r) for r in ranges[w + 1::P]]
                self._post(w)
            mine = None
            try:
                for r in ranges[::P]:
                    fn(*r)
            except BaseException as e:
                mine = e
            for w in used:
                self._await(w, 1, self._seqs[w], self._back)
            errs = [self._errs[w] for w in used]
            for w in used:
                self._errs[w] = None
        finally:
            self._busy.release()
        if mine is not None:
            raise mine
        for e in errs:
            if e is not None:
                raise e

    def close(self) -> None:
        """Stop the workers and give the BLAS libraries their thread counts back."""
        if self._workers and self._pid == os.getpid():
            with self._busy:
                for w in range(self.threads - 1):
                    self._tasks[w] = None
                    self._post(w)
                for t in self._workers:
                    t.join()
                self._workers = []
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
