"""The scheduler: which tokens go into which row of which model call.

* ``reset="none"``: each input is one stream. Up to ``batch`` inputs run as
  parallel rows of one model call, each row with its own carried state; a
  row that finishes takes the next input. Each row advances ``chunk_tokens``
  tokens per call (with fewer inputs than ``batch``, ``batch // inputs`` times
  that: the same memory); only the recurrence is sequential.
* ``reset="line"|"doc"``: lines / documents are independent. Consecutive
  segments are packed into up to ``batch`` rows of at most ``chunk_tokens``
  steps (each row a run of whole segments, the state zeroed at each segment
  start). A segment longer than ``chunk_tokens`` is streamed alone in chunks
  with its state carried.

At the start of a stream or segment the state is zero and the previous token
is ``<eos>``. Chunks are aligned to multiples of ``chunk_tokens`` from the
start of each stream or segment, so a resumed run makes exactly the same model
calls as an uninterrupted one (for one row). Memory is bounded by ``batch *
chunk_tokens`` tokens of activations, whatever the input size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from streamlm.data.inputs import Source
from streamlm.data.tokenizer import Block
from streamlm.jobs.records import Accumulator


def skip(blocks: Iterator[Block], start: int) -> Iterator[Block]:
    """Drop the first ``start`` tokens (read again but not scored: a resume)."""
    for b in blocks:
        end = b.pos + len(b)
        if end <= start:
            continue
        if b.pos < start:
            b = b.cut(start - b.pos, len(b))
        yield b


def rechunk(blocks: Iterator[Block], size: int) -> Iterator[Block]:
    """Chunks of exactly ``size`` tokens (the last may be shorter), in order."""
    buf: list[Block] = []
    have = 0
    for b in blocks:
        buf.append(b)
        have += len(b)
        while have >= size:
            whole = Block.join(buf)
            yield whole.cut(0, size)
            rest = whole.cut(size, len(whole))
            buf = [rest] if len(rest) else []
            have = len(rest)
    if have:
        yield Block.join(buf)


def read_ahead(blocks: Iterator[Block], depth: int) -> Iterator[Block]:
    """``blocks``, read and tokenised by a thread of their own up to ``depth`` blocks
    ahead of their use: while the model scores a block, the next one is being
    read. An error of the reader is raised here, where its block would have come;
    closing this generator stops the reader (after the block it is reading)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in blocks:
                if not put((b, None)):
                    return
            put((None, None))
        except BaseException as e:  # noqa: BLE001 (raised again in the consumer)
            put((None, e))
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=produce, name="streamlm-reader", daemon=True)
    reader.start()
    try:
        while True:
            b, err = q.get()
            if err is not None:
                raise err
            if b is None:
                return
            yield b
    finally:
        stop.set()
        reader.join()


READ_AHEAD_BLOCKS = 2  # blocks (tokenizer.BLOCK_TOKENS each) read ahead of the model


class Carried(NamedTuple):
    """What an input's next model call needs, carried from its last one (and what a
    score checkpoint saves: ``streamlm.jobs.checkpoint.ScoreCheckpoint``)."""

    h: np.ndarray  # (S,) the state after its last token (every layer's)
    prev: int  # its last token: the input of the next step
    seg_offset: int = 0  # tokens done of the long segment it is inside (0: none)
    key: int = -1  # that segment's line or document


@dataclass
class _Lane:
    """A row of ``reset="none"`` calls: one input streamed through it."""

    i: int  # the input
    it: Iterator[Block]  # its chunks still to score
    h: np.ndarray  # (S,) its carried state
    prev: int  # its last token scored


class _Segments(NamedTuple):
    """An item of Scheduler._items: a run of consecutive whole segments of at most
    ``chunk_tokens`` tokens each."""

    blk: Block


class _Chunk(NamedTuple):
    """An item of Scheduler._items: a ``chunk_tokens``-aligned chunk of a longer
    segment (``first``: the segment's first), streamed with its state carried."""

    blk: Block
    first: bool


class _End(NamedTuple):
    """An item of Scheduler._items: input ``i`` has no more tokens."""

    i: int


class Runner:
    """Calls the model on (N, T) blocks built from rows of different lengths."""

    def __init__(self, rnn, eos: int):
        self.rnn = rnn
        self.eos = eos

    def run(self, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
            h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows: per row (inputs xs, targets ts, reset flags) of its own length.

        h0: (N, H) carried states. Returns (nll (N, T) float64, final states (N, H)).
        """
        xs, ts, rs, lengths = self.arrays(rows)
        return self.rnn.nll(xs, ts, h0, reset=rs, lengths=lengths)

    def arrays(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The (N, T) inputs, targets (-1 past a row's end), reset flags, and the
        rows' lengths, of ``rows`` as :meth:`run` takes them."""
        N = len(rows)
        T = max(len(r[1]) for r in rows)
        xs = np.full((N, T), self.eos, dtype=np.int32)
        ts = np.full((N, T), -1, dtype=np.int32)
        rs = np.zeros((N, T), dtype=np.uint8)
        lengths = np.empty(N, dtype=np.int64)
        for n, (x, t, r) in enumerate(rows):
            k = len(t)
            xs[n, :k], ts[n, :k], rs[n, :k] = x, t, r
            lengths[n] = k
        return xs, ts, rs, lengths


def _row(ids: np.ndarray, prev: int, starts: np.ndarray, eos: int):
    """Inputs of a row: previous token (``eos`` at reset positions) and reset flags."""
    x = np.empty_like(ids)
    x[0] = prev
    x[1:] = ids[:-1]
    r = np.zeros(len(ids), dtype=np.uint8)
    if len(starts):
        x[starts] = eos
        r[starts] = 1
    return x, ids, r


class Scheduler:
    """Scores ``sources`` with ``rnn`` (an RNNLM or a NumpyRNN) into ``acc``.

    ``state`` maps an input to what its next call needs (:class:`Carried`); a
    checkpoint saves it with the accumulator. After each model call,
    ``after_call(tokens)`` is called (checkpoints and progress).
    """

    def __init__(self, sources: list[Source], rnn, *, eos: int, state_size: int, dtype,
                 reset: str, batch: int, chunk_tokens: int, acc: Accumulator,
                 after_call: Callable[[int], None] | None = None, threads: int = 1):
        self.sources = sources
        self.threads = threads  # from 2: inputs are read ahead by a thread (read_ahead)
        self.reset = reset
        self.batch = batch
        self.T = chunk_tokens
        self.acc = acc
        self.S = state_size  # floats of carried state per stream (every layer's)
        self.eos = eos
        self.runner = Runner(rnn, eos)
        self.dtype = dtype
        self.after_call = after_call
        self.state: dict[int, Carried] = {}  # input -> what its next call needs
        self.final_states: dict[int, np.ndarray] = {}

    def _after_call(self, n_tokens: int) -> None:
        if self.after_call is not None:
            self.after_call(n_tokens)

    def run(self) -> None:
        if self.reset == "none":
            self._run_streams()
        else:
            self._run_segments()

    # ------------------------------------------------- reset none: streams --
    def _run_streams(self) -> None:
        eos = self.eos
        # fewer inputs than rows: each stream gets the unused rows' share of the
        # memory (batch x chunk_tokens tokens), as longer chunks. By the number of
        # inputs, not of those left, so that a resumed run cuts the same chunks.
        T = self.T * max(1, self.batch // max(1, len(self.sources)))
        todo = [s for s in self.sources if not self.acc.t[s.index].done]
        # inputs resumed mid-way first (they hold state), then the rest in order
        todo.sort(key=lambda s: (s.index not in self.state, s.index))
        lanes: list[_Lane] = []
        pending = iter(todo)
        ahead = min(self.batch, len(todo)) < self.threads  # (then the model is pipelined)

        def open_lane() -> _Lane | None:
            for s in pending:
                i = s.index
                c = self.state.get(i) or Carried(np.zeros(self.S, self.dtype), eos)
                it = rechunk(skip(self._blocks(s, ahead), self.acc.t[i].scored), T)
                return _Lane(i, it, c.h, c.prev)
            return None

        pipe = self._pipeline(min(self.batch, len(todo)))
        try:
            self._stream_calls(lanes, open_lane, pipe)
        finally:
            if pipe is not None:
                pipe.close()

    def _pipeline(self, n: int):
        """A StreamPipeline for n streams at a time, when the plan says it pays."""
        rnn = self.runner.rnn
        sizes = getattr(rnn, "sizes", None)  # (the numpy engine has no pipeline)
        if sizes is None or self.threads < 2:
            return None
        from streamlm.compute import plan

        use_blas = plan.recurrence_blas(n, 2, sizes.H, sizes.G, self.threads, rnn.recur)
        helpers = plan.stream_pipeline(sizes, n, self.threads, use_blas)
        if not helpers:
            return None
        from streamlm.nn.pipeline import StreamPipeline

        return StreamPipeline(rnn, helpers)

    def _stream_calls(self, lanes: list[_Lane], open_lane, pipe) -> None:
        eos = self.eos
        while True:
            rows, blks, hs = [], [], []
            keep = []
            for lane in lanes + [None] * (self.batch - len(lanes)):
                while True:
                    if lane is None:
                        lane = open_lane()
                        if lane is None:
                            break
                    blk = next(lane.it, None)
                    if blk is not None:
                        break
                    if pipe is not None:  # the stream's last blocks are booked first
                        for key, hN, nll in pipe.finish():
                            self._book(*key, hN, nll)
                    self._close_stream(lane)
                    lane = None
                if lane is None:
                    continue
                keep.append(lane)
                starts = np.array([0] if blk.pos == 0 else [], dtype=np.int64)
                rows.append(_row(blk.ids, lane.prev, starts, eos))
                blks.append(blk)
                hs.append(lane.h)
            lanes[:] = keep
            if not lanes:
                break
            inputs = [lane.i for lane in lanes]
            if pipe is None:
                nll, hN = self.runner.run(rows, np.stack(hs))
            else:  # this block's output layer is scored while the next one's recurrence runs
                xs, ts, rs, lengths = self.runner.arrays(rows)
                hN = pipe.submit(xs, ts, np.stack(hs), reset=rs, lengths=lengths,
                                 key=(inputs, blks))
            for n, (lane, blk) in enumerate(zip(lanes, blks)):
                lane.h = hN[n]
                lane.prev = int(blk.ids[-1])
            if pipe is None:
                self._book(inputs, blks, hN, nll)
            else:
                for key, done_hN, done in pipe.completed():
                    self._book(*key, done_hN, done)

    def _book(self, inputs: list[int], blks: list[Block], hN: np.ndarray,
              nll: np.ndarray) -> None:
        """A model call's NLL into the accumulator, and the states after it (hN) as
        what a checkpoint resumes from; then after_call."""
        n_tok = 0
        for n, (i, blk) in enumerate(zip(inputs, blks)):
            self.acc.add(blk, nll[n, :len(blk)])
            self.state[i] = Carried(hN[n], int(blk.ids[-1]))
            n_tok += len(blk)
        self._after_call(n_tok)

    def _blocks(self, s: Source, ahead: bool) -> Iterator[Block]:
        """The blocks of ``s``, read into its Totals (a document input's rows)."""
        blocks = s.metered_blocks(self.acc.t[s.index])
        if ahead and self.threads > 1:
            return read_ahead(blocks, READ_AHEAD_BLOCKS)
        return blocks

    def _close_stream(self, lane: _Lane) -> None:
        i = lane.i
        self.acc.finish(i)
        self.final_states[i] = np.array(lane.h, copy=True)
        self.state.pop(i, None)

    # ----------------------------------------- reset line/doc: segments --
    def _items(self) -> Iterator[_Segments | _Chunk | _End]:
        """_Segments for runs of consecutive whole segments of <= T tokens each; _Chunk
        for T-aligned chunks of longer segments; _End after each input. A segment is a
        line or a document: a run of one key."""
        T = self.T
        keyname = "line" if self.reset == "line" else "doc"
        for s in self.sources:
            i = s.index
            if self.acc.t[i].done:
                continue
            start = self.acc.t[i].scored
            carried = self.state.get(i)
            seg_off, key0 = (0, -1) if carried is None else (carried.seg_offset, carried.key)
            cur: list[Block] = []  # the segment still open at the end of the last block
            have = 0
            # resumed inside a long segment: it continues if the next token has its key
            long_seg = seg_off > 0
            cur_key = key0 if long_seg else None

            def grow(piece):  # the open segment grows; stream it in T-aligned chunks
                nonlocal cur, have, long_seg
                cur.append(piece)
                have += len(piece)
                while have > T or (long_seg and have >= T):
                    whole = Block.join(cur)
                    yield _Chunk(whole.cut(0, T), not long_seg)
                    long_seg = True
                    rest = whole.cut(T, len(whole))
                    cur = [rest] if len(rest) else []
                    have = len(rest)

            def close():  # the open segment ends
                nonlocal cur, have, long_seg
                if cur:
                    blk = Block.join(cur)
                    yield _Chunk(blk, not long_seg) if long_seg else _Segments(blk)
                cur, have, long_seg = [], 0, False

            for b in skip(self._blocks(s, True), start):
                key = getattr(b, keyname)
                cuts = np.flatnonzero(key[1:] != key[:-1]) + 1  # segment starts in b
                if cur_key is not None and key[0] != cur_key:
                    cuts = np.concatenate([[0], cuts])
                cur_key = key[-1]
                if not len(cuts):  # all of b continues the open segment
                    yield from grow(b)
                    continue
                if cuts[0] > 0:
                    yield from grow(b.cut(0, int(cuts[0])))
                yield from close()
                # the whole segments inside b: runs of short ones at once, long ones alone
                lens = np.diff(cuts)
                a = int(cuts[0])
                for j in np.flatnonzero(lens > T).tolist():
                    c = int(cuts[j])
                    if c > a:
                        yield _Segments(b.cut(a, c))
                    yield from grow(b.cut(c, int(cuts[j + 1])))
                    yield from close()
                    a = int(cuts[j + 1])
                if int(cuts[-1]) > a:
                    yield _Segments(b.cut(a, int(cuts[-1])))
                yield from grow(b.cut(int(cuts[-1]), len(b)))  # the last one stays open
            yield from close()
            yield _End(i)

    def _run_segments(self) -> None:
        eos, T, N = self.eos, self.T, self.batch
        keyname = "line" if self.reset == "line" else "doc"
        window: list[list[Block]] = []  # rows, each pieces of runs of whole segments
        row_len = 0
        ends: list[int] = []  # inputs that ended; finished once their tokens are scored

        def finish_ends() -> None:
            for i in ends:
                self.state.pop(i, None)
                self.acc.finish(i)
            ends.clear()

        def flush_window() -> None:
            nonlocal row_len
            if window:
                rows = []
                for pieces in window:
                    starts, off = [], 0
                    for pc in pieces:  # a segment starts at each piece and each key change
                        key = getattr(pc, keyname)
                        starts.append(off)
                        starts.extend((np.flatnonzero(key[1:] != key[:-1]) + 1 + off).tolist())
                        off += len(pc)
                    ids = pieces[0].ids if len(pieces) == 1 else np.concatenate(
                        [pc.ids for pc in pieces])
                    rows.append(_row(ids, eos, np.array(starts, dtype=np.int64), eos))
                nll, _ = self.runner.run(rows, np.zeros((len(rows), self.S), self.dtype))
                n_tok = 0
                for n, pieces in enumerate(window):
                    off = 0
                    for pc in pieces:
                        self.acc.add(pc, nll[n, off:off + len(pc)])
                        off += len(pc)
                    n_tok += off
                window.clear()
                row_len = 0
                finish_ends()
                self._after_call(n_tok)
            finish_ends()

        for item in self._items():
            if isinstance(item, _End):
                ends.append(item.i)
                if not window:
                    finish_ends()
                continue
            blk = item.blk
            if isinstance(item, _Segments):  # pack its segments into rows, in order, next-fit
                self.state.pop(blk.i, None)  # a long segment before it has ended
                key = getattr(blk, keyname)
                starts = np.flatnonzero(key[1:] != key[:-1]) + 1
                bounds = [0, *starts.tolist(), len(blk)]
                a = 0  # start of the piece of blk that goes into window[-1]
                for j in range(len(bounds) - 1):
                    L = bounds[j + 1] - bounds[j]
                    if window and row_len + L <= T:
                        row_len += L
                        continue
                    if bounds[j] > a:
                        window[-1].append(blk.cut(a, bounds[j]))
                    if len(window) == N:
                        flush_window()
                    window.append([])
                    row_len = L
                    a = bounds[j]
                window[-1].append(blk.cut(a, len(blk)))
                continue
            # a chunk of a long segment: alone in its call, its state carried
            flush_window()
            i = blk.i
            if item.first:
                h, prev, seg_off = np.zeros(self.S, self.dtype), eos, 0
                starts = np.array([0], dtype=np.int64)
            else:
                c = self.state[i]
                h, prev, seg_off = c.h, c.prev, c.seg_offset
                starts = np.zeros(0, dtype=np.int64)
            nll, hN = self.runner.run([_row(blk.ids, prev, starts, eos)], h[None, :])
            self.acc.add(blk, nll[0, :len(blk)])
            key = int(getattr(blk, keyname)[-1])
            if len(blk) == T:  # the segment may go on: keep its state
                self.state[i] = Carried(hN[0], int(blk.ids[-1]), seg_off + len(blk), key)
            else:
                self.state.pop(i, None)
            self._after_call(len(blk))
        flush_window()
