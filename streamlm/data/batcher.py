"""Truncated-BPTT mini-batches over a token dataset, exactly as the book's ch. 5."""

from __future__ import annotations

import numpy as np

from streamlm.data.shards import TokenDataset
from streamlm.errors import InputError, UsageError


class Batcher:
    """Truncated-BPTT mini-batches, exactly as deep-learning-from-scratch-2 ch05.

    With ``L`` tokens, ``L' = L - 1`` and ``jump = L' // N``, row ``i`` reads
    ``xs[i, t] = corpus[(i*jump + time_idx) % L']`` and
    ``ts[i, t] = corpus[(i*jump + time_idx) % L' + 1]``, ``time_idx`` growing by one
    per ``t`` and never reset between epochs. ``iters_per_epoch = L' // (N*T)``.
    Each row has its own :class:`Cursor`, so memory is N blocks, whatever the
    dataset size. ``doc_start`` (read-only, aligned with ``xs``) is set by each
    :meth:`next_batch` when the dataset has documents.
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, bptt: int):
        if batch_size < 1 or bptt < 1:
            raise UsageError(f"batch size and bptt must be >= 1, got {batch_size}, {bptt}")
        self.dataset = dataset
        self.N, self.T = int(batch_size), int(bptt)
        self.L = dataset.num_tokens
        self.data_size = self.L - 1
        self.iters_per_epoch = self.data_size // (self.N * self.T)
        if self.iters_per_epoch < 1:
            raise InputError(f"dataset has {self.L:,} tokens; batch size {self.N} x bptt "
                             f"{self.T} needs at least {self.N * self.T + 1:,}")
        self.jump = self.data_size // self.N
        self.offsets = [i * self.jump for i in range(self.N)]
        self.time_idx = 0
        self._cursors = [dataset.cursor() for _ in range(self.N)]
        self.doc_start: np.ndarray | None = None

    @property
    def batches_done(self) -> int:
        return self.time_idx // self.T

    @property
    def epoch(self) -> float:
        return self.batches_done / self.iters_per_epoch

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """``(xs, ts)``: int32 ``(N, T)`` C-contiguous; advances ``time_idx`` by T."""
        N, T, Lp = self.N, self.T, self.data_size
        docs = self.dataset.has_docs
        xs = np.empty((N, T), dtype=np.int32)
        ts = np.empty((N, T), dtype=np.int32)
        dsb = np.empty((N, T), dtype=np.bool_) if docs else None
        buf = np.empty(T + 1, dtype=np.int32)
        for i, cur in enumerate(self._cursors):
            p = (self.offsets[i] + self.time_idx) % Lp
            t = 0
            while t < T:  # at most two runs: up to the wrap at L', then from 0
                n = min(T - t, Lp - p)
                cur.read(p, n + 1, out=buf[:n + 1])
                xs[i, t:t + n] = buf[:n]
                ts[i, t:t + n] = buf[1:n + 1]
                if docs:
                    cur.read(p, n, out=dsb[i, t:t + n], docs=True)
                t += n
                p = 0
        self.time_idx += T
        if docs:
            dsb.flags.writeable = False
        self.doc_start = dsb
        return xs, ts

    def __iter__(self):
        """One epoch: ``iters_per_epoch`` batches from the current position."""
        for _ in range(self.iters_per_epoch):
            yield self.next_batch()

    def state(self) -> dict:
        return {"time_idx": self.time_idx, "batch_size": self.N, "bptt": self.T,
                "num_tokens": self.L, "fingerprint": self.dataset.fingerprint}

    def restore(self, state: dict) -> None:
        want = {"batch_size": self.N, "bptt": self.T, "num_tokens": self.L,
                "fingerprint": self.dataset.fingerprint}
        for k, v in want.items():
            if state.get(k) != v:
                raise UsageError(f"cannot resume: saved batcher {k} {state.get(k)!r} differs "
                                 f"from the current {v!r}")
        t = state.get("time_idx")
        if not isinstance(t, int) or t < 0:
            raise UsageError(f"cannot resume: bad time_idx {t!r}")
        self.time_idx = t
