"""streamlm's own threads: one pool, coarse tasks, and how work is split over it.

Each task calls serial (nogil) Numba kernels and single-threaded BLAS on its
share of the rows, streams or columns, so no second thread pool (OpenBLAS's,
numba's) spins against streamlm's. While a pool of more than one thread
exists, the process's BLAS libraries (numpy's) are held at one thread with
threadpoolctl; :func:`set_num_threads` (or :func:`shutdown`) gives them back.
The hold lasts as long as the pool, not one call: restoring OpenBLAS's thread
count after every call woke its workers, which then spun on the cores
streamlm computes on (bench/HISTORY.md, "What changed in this round, and what
each change bought", item 5). (The optimisers' maps over the flat
parameter buffer are in :mod:`streamlm.nn.optim`.)
"""

from __future__ import annotations

import itertools
import logging
import os
import threading

import numpy as np

from streamlm.compute import blas, cpus
from streamlm.compute import kernels as K
from streamlm.compute.memory import aligned_empty

log = logging.getLogger(__name__)


# How long a waiting thread spins before it sleeps on a semaphore, in microseconds:
# longer than the gaps between the parallel phases of a training step (waking a
# sleeping thread costs 40-80 us on the VMs streamlm runs on: bench/HISTORY.md, "Pool
# hand-offs"). The spin offers its core to any other runnable thread about every
# microsecond (kernels._yield): on an idle core that returns at once, on a busy one
# the other thread runs, so a spinner never keeps a core from this process's own
# threads or from another process. 100 us spins took class D=H=100 training 0.94x
# the speed; 0 (sleep at once) 0.91x. STREAMLM_SPIN_US overrides it (0: never spin).
SPIN_US = 700
_FLAG_STRIDE = 8  # int64s per flag: one cache line each
_GEN, _DONE, _CALLER_ASLEEP, _WORKER_ASLEEP = 0, 1, 2, 3  # flag k at k * _FLAG_STRIDE


def spins_per_us() -> float:
    """pool_wait's spins per microsecond on this machine, measured once (about 1 ms)."""
    import time

    f = np.zeros(1, dtype=np.int64)
    K.pool_wait(f, 0, 1, 1000)  # compiled or loaded before the clock starts
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        K.pool_wait(f, 0, 1, 1 << 18)
        best = max(best, (1 << 18) / max(1e-9, (time.perf_counter() - t) * 1e6))
    return best


class _Task:
    """One map: ``fn`` over ``ranges``, claimed one range at a time by whichever thread
    is free (the caller runs range 0 first). A thread that a busy machine has
    descheduled holds up only the range it is running, never a share fixed in
    advance. Claims and completions count with itertools.count, whose next() is
    atomic under the GIL (every thread takes the GIL to call fn anyway)."""

    __slots__ = ("fn", "ranges", "n", "gen", "claim", "finished", "error")

    def __init__(self, fn, ranges: list, gen: int):
        self.fn, self.ranges, self.n, self.gen = fn, ranges, len(ranges), gen
        self.claim = itertools.count(1)  # range 0 is the caller's
        self.finished = itertools.count(1)
        self.error: BaseException | None = None

    def run(self, k: int | None = None) -> bool:
        """Run ranges (k first, then claimed ones) until none is left; True when this
        thread finished the map's last range."""
        last = False
        if k is None:
            k = next(self.claim)
        while k < self.n:
            if self.error is None:  # after an error the rest is skipped, but counted
                try:
                    self.fn(*self.ranges[k])
                except BaseException as e:  # re-raised by the caller
                    if self.error is None:
                        self.error = e
            if next(self.finished) == self.n:
                last = True
            k = next(self.claim)
        return last


class Pool:
    """``threads`` threads for coarse tasks (the calling thread is one of them).

    ``map(fn, ranges)`` runs fn over ranges, each range claimed by the next thread
    that is free, so that a thread which another process's work has taken off its
    core delays only the range it holds. A waiting thread (a worker for the next
    map, the caller for the last range of this one) spins on a flag without the
    GIL (streamlm.compute.kernels.pool_wait) for SPIN_US, offering its core to any other
    runnable thread about every microsecond, then sleeps on a semaphore.
    Workers start when a map first has ranges for them, no more than it has.
    Spinning is off when there are more threads than cores (a spinner would take
    the core of the thread it waits for) and without the JIT (the loop would hold
    the GIL).
    """

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._limit = None
        self._workers: list = []
        self._pid = os.getpid()
        # one thread included: --threads 1 is one thread, not one plus BLAS's own
        lib = blas.load()
        if lib is None or lib.name != "mkl":  # MKL as streamlm loads it is sequential
            self._limit = blas.single_thread_limit()
            if self._limit is None and self.threads > 1:
                log.warning("cannot hold numpy's BLAS at one thread (threadpoolctl finds "
                            "no BLAS library it can control): streamlm runs on one thread")
                self.threads = 1
        self._busy = threading.Lock()  # one map at a time; others run serially
        self._local = threading.local()
        self._spin: int | None = None  # spins before sleeping (set when workers start)
        self._flags = np.zeros((_WORKER_ASLEEP + max(0, self.threads - 1)) * _FLAG_STRIDE,
                               dtype=np.int64)
        self._task: _Task | None = None
        self._gen = 0
        self._wake: list[threading.Semaphore] = []  # the workers'
        self._back = threading.Semaphore(0)  # the caller's

    def _set_spin(self) -> None:
        from numba import config

        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        us = float(os.environ.get("STREAMLM_SPIN_US", SPIN_US))
        if config.DISABLE_JIT or self.threads > cores or us <= 0:
            self._spin = 0
        else:
            self._spin = int(us * spins_per_us())

    def _grow(self, n: int) -> None:
        """Have at least n workers (never more than threads - 1)."""
        if self._pid != os.getpid():  # a forked child: the parent's workers are not here
            self._workers, self._wake, self._pid = [], [], os.getpid()
            self._flags[:] = 0
            self._gen = 0
            self._back = threading.Semaphore(0)
        if self._spin is None:
            self._set_spin()
        while len(self._workers) < min(n, self.threads - 1):
            w = len(self._workers)
            self._wake.append(threading.Semaphore(0))
            t = threading.Thread(target=self._work, args=(w, self._gen), daemon=True,
                                 name=f"streamlm-{w + 1}")
            self._workers.append(t)
            t.start()

    @staticmethod
    def _idx(k: int) -> int:
        return k * _FLAG_STRIDE

    def _wait(self, k: int, value: int, asleep: int, sem: threading.Semaphore) -> None:
        """Wait until flag k reaches value: spin, then announce the sleep (flag asleep)
        and sleep on sem unless the flag got there meanwhile with nobody to wake us."""
        f = self._flags
        if K.pool_wait(f, self._idx(k), value, self._spin):
            return
        if K.pool_announce_sleep(f, self._idx(asleep), self._idx(k), value) != 1:
            sem.acquire()

    def _work(self, w: int, seen: int) -> None:
        self._local.worker = True
        f = self._flags
        while True:
            self._wait(_GEN, seen + 1, _WORKER_ASLEEP + w, self._wake[w])
            task = self._task
            if task is None:  # close()
                return
            seen = max(seen + 1, task.gen)
            if task.run():  # the last range of the map: tell the caller
                if K.pool_signal(f, self._idx(_DONE), task.gen, self._idx(_CALLER_ASLEEP)):
                    self._back.release()

    def _post(self, task: _Task, helpers: int) -> None:
        """Publish ``task`` (flag _GEN = its generation) and wake the first ``helpers``
        workers if they sleep; the others go on sleeping, or join if they spin."""
        self._task = task
        f, gen = self._flags, self._idx(_GEN)
        for w in range(helpers):  # (the same store each time; each takes one sleep flag)
            if K.pool_signal(f, gen, task.gen, self._idx(_WORKER_ASLEEP + w)):
                self._wake[w].release()

    def map(self, fn, ranges) -> None:
        """fn(*r) for every r in ranges, concurrently; re-raises the first error.

        The calling thread runs ranges[0] first, then every thread takes the next
        range not yet taken. A map from inside a task, or while another thread's
        map runs, runs serially on its caller."""
        ranges = list(ranges)
        if len(ranges) <= 1 or self.threads == 1 or getattr(self._local, "worker", False) \
                or not self._busy.acquire(blocking=False):
            for r in ranges:
                fn(*r)
            return
        try:
            helpers = min(self.threads - 1, len(ranges) - 1)
            self._grow(helpers)
            self._gen += 1
            task = _Task(fn, ranges, self._gen)
            self._post(task, helpers)
            if not task.run(0):
                self._wait(_DONE, task.gen, _CALLER_ASLEEP, self._back)
        finally:
            self._busy.release()
        if task.error is not None:
            raise task.error

    def close(self) -> None:
        """Stop the workers and give the BLAS libraries their thread counts back."""
        if self._workers and self._pid == os.getpid():
            with self._busy:
                self._task = None
                self._gen += 1
                f = self._flags
                for w in range(len(self._workers)):
                    if K.pool_signal(f, self._idx(_GEN), self._gen,
                                     self._idx(_WORKER_ASLEEP + w)):
                        self._wake[w].release()
                for t in self._workers:
                    t.join()
                self._workers, self._wake = [], []
        if self._limit is not None:
            self._limit.restore_original_limits()
            self._limit = None


_POOL: Pool | None = None


def set_num_threads(n: int | None = None) -> None:
    """Threads streamlm computes on (default: streamlm.compute.cpus.threads(): --threads,
    STREAMLM_THREADS, else the CPUs this process may use)."""
    global _POOL
    if n is None:
        n = cpus.threads()
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


# Ranges per thread a map is cut into, where work divides freely: threads take them as
# they come free (Pool.map), so a thread that another process took off its core
# delays at most one range, and the others do the rest.
RANGES_PER_THREAD = 4


def parts(n: int, threads: int, min_size: int = 1) -> list[tuple[int, int]]:
    """[0, n) in near-equal ranges for ``threads`` threads to share: up to
    RANGES_PER_THREAD per thread, none smaller than ``min_size`` (so a map of
    little work wakes fewer threads: no more than help)."""
    if n <= 0:
        return []
    k = min(RANGES_PER_THREAD * max(1, threads), max(1, n // max(1, min_size)))
    return split(n, k)


def stream_parts(N: int, threads: int) -> list[tuple[int, int]]:
    """N streams' recurrence in ranges for ``threads`` threads: whole groups of 4
    streams (the kernels step 4 streams at a time), up to RANGES_PER_THREAD ranges
    per thread; fewer streams than 4 a thread are split as they come."""
    if threads <= 1 or N <= 0:
        return [(0, N)] if N > 0 else []
    if N < 4 * threads:
        return split(N, threads)
    groups = -(-N // 4)
    k = min(RANGES_PER_THREAD * threads, groups)
    return [(4 * a, min(N, 4 * b)) for a, b in split(groups, k)]


def slices(i: int, j: int, rows: int) -> list[tuple[int, int]]:
    """[i, j) in near-equal contiguous slices of at most ``rows`` (1025 rows in
    slices of 1024 -> 513 + 512, not 1024 + 1)."""
    n = j - i
    if n <= 0:
        return []
    return [(i + a, i + b) for a, b in split(n, -(-n // max(1, rows)))]


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
