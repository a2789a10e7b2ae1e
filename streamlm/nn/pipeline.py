"""One stream's blocks scored across blocks: the recurrence of block k+1 runs on the
calling thread while helper threads score block k's output layer.

With fewer streams than threads, the recurrence is sequential and only one
thread can run it. ``RNNLM.nll`` pipelines a block within itself (the other
threads score the segments the recurrence has finished), but each block still
starts with the helpers idle until its first segment is done, and ends with the
caller idle or scoring while the helpers finish. At V=100k, H=256 (an output
layer twice the recurrence's work) one stream instead ran its recurrence on two
threads, then the output layer on both: R/2 + sync, then S/2, where this gives
(R + S) / 2. The scorer uses it where streamlm.compute.plan.stream_pipeline says (class
models), with the helpers it says.

Here a block's segments go into a queue as the recurrence finishes them. The
helpers take segments from the oldest block first. The caller, once its block's
recurrence is done, scores what is left of *older* blocks (so at most two blocks
are in flight, and their memory is bounded), and returns the block's final
state at once: the next block's recurrence can start while this one's output
layer is still being scored. A block's per-token NLL comes out of
:meth:`StreamPipeline.completed` (in the order the blocks went in) once all its
segments are done.

Each segment is scored alone, on one thread, so the numbers do not depend on
which thread scored it or when: they are the same as ``RNNLM.nll``'s for the
same segments (``plan.segment_rows``).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from streamlm.compute import plan
from streamlm.compute.memory import aligned_empty
from streamlm.nn.model import RNNLM


class _Job:
    """A submitted block: its states hs (N*T, H) time-major in the flat buffer
    ``flat``, its targets, its NLL, and how many of its segments are not done."""

    __slots__ = ("key", "flat", "hs", "labels", "out", "todo", "N", "T", "hT")

    def __init__(self, key, flat, hs, labels, N, T, todo):
        self.key, self.flat, self.hs, self.labels = key, flat, hs, labels
        self.out = np.empty(N * T)
        self.N, self.T, self.todo = N, T, todo
        self.hT = None


class StreamPipeline:
    """``submit`` blocks of N streams in order; take their NLL from ``completed``
    (then ``finish`` for the rest). ``helpers`` threads score beside the caller.
    Use as a context manager: leaving it stops the helpers."""

    def __init__(self, rnn: RNNLM, helpers: int):
        self.rnn = rnn
        self.rows = plan.segment_rows(rnn.sizes)
        self.helpers = max(1, int(helpers))
        self._work = rnn.head.scratch(self.helpers + 1, self.rows)
        self._cv = threading.Condition()
        self._queue: deque = deque()  # (job, a, b): rows a:b of job
        self._jobs: deque = deque()  # in submission order
        self._free: list[np.ndarray] = []  # flat buffers of finished jobs
        self._error: BaseException | None = None
        self._stop = False
        self._threads = [threading.Thread(target=self._help, args=(k + 1,), daemon=True,
                                          name=f"streamlm-pipe-{k + 1}")
                         for k in range(self.helpers)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------ helpers --
    def _score(self, k: int, job: _Job, a: int, b: int) -> None:
        self.rnn.head.score_rows(self._work[k], job.hs[a:b], job.labels[a:b], job.out[a:b])

    def _help(self, k: int) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job, a, b = self._queue.popleft()
            try:
                self._score(k, job, a, b)
            except BaseException as e:  # noqa: BLE001 (raised again on the caller)
                with self._cv:
                    self._error = self._error or e
                    self._stop = True
                    self._cv.notify_all()
                return
            with self._cv:
                job.todo -= 1
                if job.todo == 0:
                    self._cv.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------- caller --
    def _buffer(self, n: int) -> np.ndarray:
        """A flat buffer of at least n floats: a finished job's, or a new one."""
        for i, f in enumerate(self._free):
            if f.size >= n:
                return self._free.pop(i)
        return aligned_empty(n, self.rnn.params.dtype)

    def submit(self, xs, ts, h0, reset=None, lengths=None, key=None) -> np.ndarray:
        """Run the recurrence of an (N, T) block (as ``RNNLM.nll`` takes it) on this
        thread, queue its output layer, and return its final states (N, S)."""
        self._raise()
        rnn = self.rnn
        xs, labels = rnn._block(xs, ts)
        N, T = xs.shape
        M, H = N * T, rnn.config.H
        flat = self._buffer((T + 1) * N * H)
        blocks = rnn.scoring_front(  # the whole recurrence on this thread; the top layer's
            xs, h0, reset, 1, top=flat[:(T + 1) * N * H].reshape(T + 1, N, H))  # states own
        seg_t = max(1, self.rows // N)
        segs = [(t, min(T, t + seg_t)) for t in range(0, T, seg_t)]
        job = _Job(key, flat, blocks[-1].hs.reshape(M, H), np.array(labels, dtype=np.int32),
                   N, T, len(segs))  # (labels copied: kept until the job is done)
        with self._cv:
            self._jobs.append(job)
        for t0, t1 in segs:
            rnn.advance(blocks, t0, t1)
            with self._cv:
                self._queue.append((job, t0 * N, t1 * N))
                self._cv.notify()
        job.hT = hT = rnn.final_states(blocks, lengths)
        self._steal(older_than=job)
        return hT

    def _steal(self, older_than: _Job | None) -> None:
        """Score queued segments of jobs before ``older_than`` (None: of every job)
        on this thread."""
        while True:
            self._raise()
            with self._cv:
                if not self._queue or self._queue[0][0] is older_than:
                    return
                job, a, b = self._queue.popleft()
            self._score(0, job, a, b)
            with self._cv:
                job.todo -= 1

    def completed(self) -> list:
        """(key, final states (N, H), nll (N, T) float64) of the finished blocks at
        the front, in the order they were submitted."""
        self._raise()
        done = []
        with self._cv:
            while self._jobs and self._jobs[0].todo == 0:
                done.append(self._jobs.popleft())
        out = []
        for job in done:
            out.append((job.key, job.hT, job.out.reshape(job.T, job.N).T.copy()))
            self._free.append(job.flat)
            job.flat = job.hs = job.labels = job.out = None
        return out

    def finish(self) -> list:
        """Score everything still queued (this thread helping), wait, and return the
        rest of ``completed``."""
        self._steal(None)
        with self._cv:
            while self._error is None and any(j.todo for j in self._jobs):
                self._cv.wait()
        return self.completed()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()

    def __enter__(self) -> StreamPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

