"""The recurrence's orchestration: the Numba kernel or BLAS per step, for a group of
streams, and one stream on two threads.

``streamlm.model`` calls these for its blocks; the kernels are
``streamlm.kernels.rnn_*``. Each function writes the states of the streams and
steps it is given and nothing else, so the model's threads can share a block.
"""

from __future__ import annotations

import logging

import numpy as np

from streamlm import blas
from streamlm import kernels as K
from streamlm.memory import aligned_empty

log = logging.getLogger("streamlm.recurrence")

# One stream's recurrence runs on two threads (rnn_recur_split) from this H on:
# below it a step is too short for the two threads' meeting per step to pay
# (python bench/bench_split.py; bench/RESULTS.md, "one stream's recurrence").
SPLIT_MIN_H = 256
# How long a thread of the split waits for the other's half of a step before it goes
# on alone, in microseconds. A step takes a few microseconds; a thread that waits
# longer has a partner that another process took off its core (CFS slices are
# milliseconds), and waiting for it would make every step as slow as the slowest
# thread (a 5 MB line beside one busy process took 7.6x its time alone).
SPLIT_WAIT_US = 30
# ... and how long in all, on average per step: two threads running side by side wait
# a fraction of a microsecond per step; two that take turns on one core (a busy
# machine) wait a context switch at every step and are slower than one thread.
SPLIT_STEP_WAIT_US = 1.0
SPLIT_SPIN_MAX: int | None = None  # SPLIT_WAIT_US in spins (measured at first use)
SPLIT_STEP_SPINS: int | None = None


class _Backoff:
    """After a split gave up, the next blocks run on one thread: 1, 2, 4 ... up to
    BACKOFF_MAX blocks (about a second of a loaded machine's blocks), then the
    split is tried again; a split that completes resets it. On an idle machine
    nothing gives up, and every block is split; on a loaded one at most one block in
    BACKOFF_MAX pays a wait of SPLIT_WAIT_US."""

    MAX = 256

    def __init__(self):
        self.skip = 0  # blocks still to run on one thread
        self.next = 1  # blocks to skip after the next give-up

    def allow(self) -> bool:
        if self.skip > 0:
            self.skip -= 1
            return False
        return True

    def gave_up(self) -> None:
        self.skip, self.next = self.next, min(self.MAX, 2 * self.next)

    def completed(self) -> None:
        self.next = 1


BACKOFF = _Backoff()


def _split_spins() -> tuple[int, int]:
    global SPLIT_SPIN_MAX, SPLIT_STEP_SPINS
    if SPLIT_SPIN_MAX is None or SPLIT_STEP_SPINS is None:
        from streamlm.threads import _spins_per_us

        rate = _spins_per_us()
        if SPLIT_SPIN_MAX is None:
            SPLIT_SPIN_MAX = max(1, int(SPLIT_WAIT_US * rate))
        if SPLIT_STEP_SPINS is None:
            SPLIT_STEP_SPINS = max(1, int(SPLIT_STEP_WAIT_US * rate))
    return SPLIT_SPIN_MAX, SPLIT_STEP_SPINS


def recur_panels(W: np.ndarray) -> np.ndarray:
    """W (K, J) in the kernels' column panels (ceil(J/64), K, 64) (see K.PANEL).

    Made once per call and shared by the threads: a copy of W (40 KB at H=100).
    On a cache line: a panel row (64 floats) is then whole cache lines, and no
    vector load of it is split across two (the single-stream recurrence was
    1.5x slower in the processes where numpy put P off a line: H=100, 0.59
    against 0.38 us per step)."""
    rows, cols = W.shape
    P = aligned_empty((-(-cols // K.PANEL), rows, K.PANEL), W.dtype)
    K.rnn_panels(P, W)
    return P


def rnn_recur_rows(hs_full, xw, Wh, reset, n0, n1, use_blas: bool, t0=0, t1=None, P=None,
                   xid=None):
    """The recurrence for streams [n0, n1) and steps [t0, t1) of a block.

    hs_full: (T+1, N, H), hs_full[t0] holds the state before step t0 on entry,
    hs_full[t0+1:t1+1] is written; xw: (T, N, H) = X @ Wx + b;
    reset: (T, N) uint8 (nonzero: the state before step t is zero);
    P: recur_panels(Wh) for the kernel path (made here if None).
    xid: (T, N) int, or None: given, xw is (R, H) and the input term of stream n
    at step t is its row xw[xid[t, n]] (a scoring model's input table and its
    tokens' ids; the kernel path only).
    """
    T = (xw.shape[0] if xid is None else xid.shape[0]) if t1 is None else t1
    if not use_blas:
        if P is None:
            P = recur_panels(Wh)
        hs = hs_full[t0 + 1:T + 1]
        if xid is None:
            K.rnn_forward_rows(hs, xw[t0:T], hs_full[t0], P, reset[t0:T], n0, n1)
        else:
            K.rnn_forward_rows_x(hs, xw, xid[t0:T], hs_full[t0], P, reset[t0:T], n0, n1)
        return
    if xid is not None:
        raise ValueError("the BLAS recurrence needs the input terms written out")
    rs = reset[t0:T, n0:n1]
    any_reset = bool(rs.any())
    for t in range(t0, T):
        hp = hs_full[t, n0:n1]
        if any_reset and reset[t, n0:n1].any():
            hp = hp * (reset[t, n0:n1] == 0)[:, None].astype(hp.dtype)
        out = hs_full[t + 1, n0:n1]
        blas.gemm(hp, Wh, out)
        K.tanh_add_(out, xw[t, n0:n1])


def rnn_backward_rows(dxw, dh0, dhs, hs, Wh, n0, n1, use_blas: bool, WhT=None, PT=None):
    """dxw, dh0 for streams [n0, n1) (see K.rnn_backward). WhT: a contiguous copy
    of Wh.T for the BLAS path, PT: recur_panels(Wh.T) for the kernel path (the
    callers' threads share one), made if None."""
    if not use_blas:
        if PT is None:
            PT = recur_panels(Wh.T)
        K.rnn_backward_rows(dxw, dh0, dhs, hs, PT, n0, n1)
        return
    T = hs.shape[0]
    dh = np.zeros((n1 - n0, hs.shape[2]), dtype=dxw.dtype)
    if WhT is None:  # per-step GEMMs: N x H @ H x H is 1.5x faster NN than NT
        WhT = np.ascontiguousarray(Wh.T)
    for t in range(T - 1, -1, -1):
        K.tanh_backward_(dxw[t, n0:n1], dhs[t, n0:n1], dh, hs[t, n0:n1])
        blas.gemm(dxw[t, n0:n1], WhT, dh)
    dh0[n0:n1] = dh


def split_recurrence(N: int, H: int, threads: int, use_blas: bool) -> bool:
    """Whether a block of N streams can run its recurrence on two threads (whether this
    block does also depends on BACKOFF: see _Backoff)."""
    import numba

    return (N == 1 and threads >= 2 and not use_blas and H >= SPLIT_MIN_H
            and not numba.config.DISABLE_JIT)


def rnn_recur_split(hs_full, xw, P, reset, pl, t0: int = 0, t1: int | None = None,
                    xid=None) -> None:
    """rnn_recur_rows for one stream (N == 1) on two of pl's threads: each computes
    half of Wh's panels P of every step (K.rnn_forward_split); bitwise the same
    states. A thread that waits more than SPLIT_WAIT_US for the other's half of a
    step gives up, and the calling thread computes the rest of the block alone
    from the first step not done by both (the other, when it runs again, writes at
    most its half of one more step: the same values), so a taken core costs one
    wait, not one per step. xw and xid as rnn_recur_rows's."""
    if xid is None:  # the input terms written out: row t of xw is step t's
        xid = np.arange(xw.shape[0], dtype=np.int64).reshape(-1, 1)
        xw = xw.reshape(xw.shape[0], -1)
    T = xid.shape[0] if t1 is None else t1
    nb = P.shape[0]
    half = (nb + 1) // 2
    flags = np.zeros(48, dtype=np.int64)
    hs = hs_full[t0 + 1:T + 1]
    args = (hs, xw, xid[t0:T], hs_full[t0], P, reset[t0:T])
    spins, step_spins = _split_spins()

    def part(me):
        b0, b1 = (0, half) if me == 0 else (half, nb)
        if K.rnn_forward_split(*args, b0, b1, flags, me, spins, step_spins) >= 0 or me != 0:
            return
        # the caller's thread goes on alone from the first step both did not finish
        # (flags[16 * k]: the steps thread k completed)
        t = int(min(flags[0], flags[16]))
        h0 = hs_full[t0] if t == 0 else hs[t - 1]
        K.rnn_forward_rows_x(hs[t:], xw, xid[t0 + t:T], h0.reshape(1, -1), P, reset[t0 + t:T],
                             0, 1)

    pl.map(part, [(0,), (1,)])
    if flags[K.SPLIT_GAVE_UP]:
        log.debug("the split recurrence gave up waiting: the rest of the block ran on one "
                  "thread")
        BACKOFF.gave_up()
    else:
        BACKOFF.completed()
