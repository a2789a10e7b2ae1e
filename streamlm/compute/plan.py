"""How a block is computed, decided in one place: the engine, threads, the recurrence's
kernel or BLAS, the split of one stream over two threads, and the pipelines.

Every other room asks here, from the model's sizes, the number of streams and the
threads (``--threads``); none of them decides by itself. The figures behind each
threshold are in bench/HISTORY.md (the section named beside it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

# ------------------------------------------------------------------ engine --
# engine auto: inputs estimated below this many tokens score on numpy, with no numba
# start-up (about a second: "start-up")
NUMPY_MAX_TOKENS = 20_000


def engine_for(engine: str, tokens: int) -> str:
    """The engine that scores ``tokens`` tokens: numba or numpy (``engine`` "auto")."""
    if engine != "auto":
        return engine
    return "numpy" if tokens <= NUMPY_MAX_TOKENS else "numba"


def likely_numba(engine: str, inputs: list[str]) -> bool:
    """Whether a job will most likely score on the Numba kernels, guessed before the model
    is loaded (only what runs while it loads depends on it): ``numba``, or ``auto`` with
    regular files of more than about NUMPY_MAX_TOKENS tokens (at two bytes a token)."""
    if engine != "auto":
        return engine == "numba"
    size = 0
    for p in inputs:
        if p == "-" or not os.path.isfile(p):
            return os.path.isdir(p)  # token shards: many tokens; a stream: unknown
        size += os.path.getsize(p)
    return size * 0.5 > NUMPY_MAX_TOKENS


# ------------------------------------------------------------ recurrence --
# The H x G*H product of each step goes to BLAS (from Python) from this many multiply-adds
# per step for one thread's streams, and at least this many streams per thread; otherwise
# the whole block runs in one Numba kernel, the faster at every size measured ("recurrence
# threshold").
BLAS_RECUR_MIN_WORK = 16_000_000
BLAS_RECUR_MIN_STREAMS = 4
# A block of one step (generation) goes to BLAS from this H on: the kernel's panels, a
# copy of Wh made per call, then cost more than BLAS's overhead.
BLAS_ONE_STEP_MIN_H = 256
# One stream's recurrence runs on two threads (each half of Wh's panels) from this H on:
# below it a step is too short for the threads' meeting per step to pay ("one stream's
# recurrence", python -m bench.bench_split).
SPLIT_MIN_H = 256


def recurrence_blas(N: int, T: int, H: int, G: int, threads: int, forced: str = "auto") -> bool:
    """BLAS per step (True) or the Numba kernel for a block of N streams and T steps of a
    cell of H units and G gates, on ``threads`` threads; ``forced`` "kernel" / "blas"
    overrides (tests, benchmarks)."""
    if forced != "auto":
        return forced == "blas"
    if T == 1 and H >= BLAS_ONE_STEP_MIN_H:
        return True
    n = -(-N // max(1, threads))
    return n >= BLAS_RECUR_MIN_STREAMS and n * H * H * G >= BLAS_RECUR_MIN_WORK


def can_split(N: int, H: int, threads: int, use_blas: bool, G: int = 1) -> bool:
    """Whether one stream's recurrence can run on two threads (whether a block does also
    depends on SPLIT_BACKOFF): a tanh RNN's (G = 1: the one cell with such a kernel)."""
    import numba

    return (N == 1 and G == 1 and threads >= 2 and not use_blas and H >= SPLIT_MIN_H
            and not numba.config.DISABLE_JIT)


class Backoff:
    """After the split gave up (a thread waited too long for the other: another process
    had its core), the next blocks run on one thread: 1, 2, 4 ... up to MAX blocks,
    then the split is tried again; a split that completes resets it. On an idle machine
    nothing gives up, and every block is split; on a loaded one at most one block in
    MAX pays a wait."""

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


SPLIT_BACKOFF = Backoff()


# ------------------------------------------------------------- pipelines --
# Rows per segment of the within-block pipeline (RNNLM.nll with fewer streams than
# threads). Full softmax: 1024 left the projecting thread idle for a quarter of a
# 4096-token chunk. Class softmax: its per-call work (the grouping by class) wants long
# segments: 1024 rows scored 1.4x faster than 256.
PIPE_ROWS = 256
CLASS_PIPE_ROWS = 1024
# Rows per segment of the across-block pipeline (streamlm.nn.pipeline): larger, since no
# thread waits for the first segment there; a class head's large classes want many tokens
# (V=100k, H=256: 2.83-2.97 s at 8192 rows, 2.87-3.10 at 4096, 3.19-3.92 at 2048).
CLASS_SEGMENT_ROWS = 8192
FULL_SEGMENT_ROWS = 256


@dataclass(frozen=True)
class Sizes:
    """What the plan needs of a model: vocabulary, classes (0: a full softmax), the top
    layer's units, the gates of its cell, and whether the weights are frozen."""

    V: int
    C: int
    H: int
    G: int = 1


def pipe_rows(sizes: Sizes) -> int:
    return CLASS_PIPE_ROWS if sizes.C else PIPE_ROWS


def segment_rows(sizes: Sizes) -> int:
    return CLASS_SEGMENT_ROWS if sizes.C else FULL_SEGMENT_ROWS


def within_block(N: int, threads: int) -> bool:
    """Whether RNNLM.nll pipelines a block within itself (fewer streams than threads:
    the recurrence on one thread, the output layer's segments on the others)."""
    return threads > 1 and N < threads


def stream_pipeline(sizes: Sizes, N: int, threads: int, use_blas: bool) -> int:
    """Helper threads of the across-block pipeline (streamlm.nn.pipeline) for N streams, or 0
    when RNNLM.nll scores faster: a class model with fewer streams than threads, unless
    one stream's recurrence runs on two threads and outweighs the output layer (per token
    G H^2 against H (C + V/C): class D=H=650 at V=10k took 1.85x the time through the
    pipeline). Not a full softmax: its output layer on two threads splits W by columns,
    where a pipeline segment is one thread's whole W (D=H=650 one stream: 1.05x the time).
    As many helpers as keep up with the recurrence, no more (a 64-core machine does not
    start 63 for a recurrence that one keeps busy)."""
    if N >= threads or threads < 2 or not sizes.C:
        return 0
    head = sizes.C + sizes.V / sizes.C
    if can_split(N, sizes.H, threads, use_blas, sizes.G) and head < sizes.G * sizes.H:
        return 0
    return max(1, min(threads - 1, math.ceil(head / (sizes.G * sizes.H)) + 1))
