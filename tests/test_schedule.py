"""The scheduler (streamlm.jobs.schedule): which tokens go into which row of which model call.

The model here is a toy anyone can compute by hand, with one float of state: at each
step ``h = 0.5 h + x + 1`` (``h = 0`` first where the row's reset flag is set), and the
"NLL" of the target ``y`` is ``h + y / 1000``. Its reference scores a segment alone,
from a zero state and ``<eos>`` as the token before it: what the scheduler must give
however it packs the segments into rows, chunks a long one, or resumes.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streamlm.data.tokenizer import Block
from streamlm.errors import InputError
from streamlm.jobs.records import WORD_DTYPE, Accumulator, Spool, Totals
from streamlm.jobs.schedule import Carried, Scheduler, read_ahead

EOS = 1
UNK = 0


class Toy:
    """The toy model; it keeps every call's arrays."""

    def __init__(self):
        self.calls: list[dict] = []

    def nll(self, xs, ts, h0, reset, lengths):
        N, T = xs.shape
        out = np.zeros((N, T))
        hN = np.empty((N, 1))
        for n in range(N):
            h = float(h0[n, 0])
            for t in range(int(lengths[n])):
                if reset[n, t]:
                    h = 0.0
                h = 0.5 * h + float(xs[n, t]) + 1.0
                out[n, t] = h + ts[n, t] / 1000
            hN[n, 0] = h
        self.calls.append({"xs": xs.copy(), "ts": ts.copy(), "reset": reset.copy(),
                           "lengths": np.array(lengths), "h0": np.array(h0, copy=True),
                           "hN": hN.copy()})
        return out, hN


def toy_reference(ids, starts) -> np.ndarray:
    """The toy's NLL of each token of one input, every segment alone (``starts``: the
    positions where one begins)."""
    out = np.empty(len(ids))
    h, prev = 0.0, EOS
    for i, y in enumerate(ids):
        if i in starts:
            h, prev = 0.0, EOS
        h = 0.5 * h + prev + 1.0
        out[i] = h + y / 1000
        prev = int(y)
    return out


class Lines:
    """An input of lines of token ids (each ends with <eos>), handed out in blocks of
    ``block`` tokens: what a Source gives the scheduler."""

    def __init__(self, index: int, lines: list[list[int]], block: int):
        self.index = index
        self.ids = np.array([t for ln in lines for t in [*ln, EOS]], dtype=np.int32)
        self.line = np.repeat(np.arange(len(lines)), [len(ln) + 1 for ln in lines])
        self.starts = set(np.flatnonzero(np.diff(self.line, prepend=-1)).tolist())
        self.block = block

    def metered_blocks(self, counts=None):
        for a in range(0, len(self.ids), self.block):
            b = min(len(self.ids), a + self.block)
            yield Block(self.index, a, self.ids[a:b], self.line[a:b], None)


def run(sources, reset, batch, T, tmp_path, totals=None, state=None, stop_after=None):
    """Score ``sources`` with the toy: (its calls, the accumulator, per input its word
    records' NLL by position). ``stop_after``: interrupt after that many calls and
    return what a checkpoint keeps then (Totals as JSON, the state) instead."""
    toy = Toy()
    spool = Spool(tmp_path / f"spool{len(list(tmp_path.iterdir()))}", WORD_DTYPE)
    acc = Accumulator(len(sources), UNK, "word", spool)
    if totals is not None:
        acc.t = [Totals.from_json(d) for d in totals]  # (records: a new spool each run)
    saved = {}

    def after_call(n_tokens):
        if stop_after is not None and len(toy.calls) == stop_after:
            saved["totals"] = [t.to_json() for t in acc.t]
            saved["state"] = dict(sched.state)
            raise KeyboardInterrupt

    sched = Scheduler(sources, toy, eos=EOS, state_size=1, dtype=np.float64, reset=reset,
                      batch=batch, chunk_tokens=T, acc=acc, after_call=after_call)
    sched.state.update(state or {})
    if stop_after is not None:
        with pytest.raises(KeyboardInterrupt):
            sched.run()
        spool.close_all()
        return toy.calls, saved
    sched.run()
    spool.close_all()
    nll = {}
    for s in sources:
        recs = np.concatenate(list(spool.read(s.index)) or [np.zeros(0, WORD_DTYPE)])
        got = np.full(len(s.ids), np.nan)
        got[recs["position"]] = -recs["logprob"]
        nll[s.index] = got
    return toy.calls, acc, nll


# ------------------------------------------------------------------ packing --
def test_short_segments_are_packed_next_fit_into_rows_of_whole_segments(tmp_path):
    """reset line, batch 3, chunk 6: lines of 2, 3, 1, 4, 2 and 2 tokens (with <eos>) go
    into rows of at most 6 steps, in order, each row a run of whole lines: [2, 3, 1],
    [4, 2], [2], all in one call; every line starts from a zero state and <eos>."""
    src = Lines(0, [[5], [6, 7], [], [8, 9, 10], [11], [12]], block=4)
    calls, acc, nll = run([src], "line", 3, 6, tmp_path)
    assert len(calls) == 1
    c = calls[0]
    assert c["lengths"].tolist() == [6, 6, 2]
    assert [np.flatnonzero(r).tolist() for r in c["reset"]] == [[0, 2, 5], [0, 4], [0]]
    assert (c["xs"][c["reset"] == 1] == EOS).all()
    np.testing.assert_allclose(nll[0], toy_reference(src.ids, src.starts), rtol=1e-15)
    assert acc.t[0].done and acc.t[0].scored == len(src.ids)


def test_rows_never_pass_the_batch_or_the_chunk(tmp_path):
    rng = np.random.default_rng(0)
    lines = [list(rng.integers(2, 30, int(rng.integers(0, 6)))) for _ in range(40)]
    src = Lines(0, lines, block=7)
    calls, _, nll = run([src], "line", 4, 6, tmp_path)
    assert all(c["xs"].shape[0] <= 4 and c["xs"].shape[1] <= 6 for c in calls)
    assert all((c["reset"][:, 0] == 1).all() for c in calls)  # a row starts a segment
    np.testing.assert_allclose(nll[0], toy_reference(src.ids, src.starts), rtol=1e-15)


# ----------------------------------------------------------- long segments --
def test_a_long_segment_is_chunked_alone_with_its_state_carried(tmp_path):
    """A line of 20 tokens with chunk 6, between two short ones: alone in its calls, in
    chunks of 6, 6, 6 and 2 from its start, each from the state the one before left;
    the same numbers as the line scored whole."""
    long = list(range(40, 59))  # 19 words + <eos>
    src = Lines(0, [[3], long, [4, 5]], block=9)
    calls, _, nll = run([src], "line", 3, 6, tmp_path)
    chunks = [c for c in calls if np.isin(c["ts"], long).any()]
    assert all(c["xs"].shape[0] == 1 for c in chunks)
    assert [int(c["lengths"][0]) for c in chunks] == [6, 6, 6, 2]
    assert len(calls) == 6  # the short line before (flushed first), the chunks, the one after
    assert chunks[0]["reset"][0, 0] == 1 and not any(c["reset"].any() for c in chunks[1:])
    for a, b in zip(chunks, chunks[1:]):
        np.testing.assert_array_equal(b["h0"], a["hN"])
        assert b["xs"][0, 0] == a["ts"][0, int(a["lengths"][0]) - 1]  # the token before
    np.testing.assert_allclose(nll[0], toy_reference(src.ids, src.starts), rtol=1e-15)


@pytest.mark.parametrize("reset", ["none", "line"])
def test_many_inputs_give_what_each_gives_alone(tmp_path, reset):
    rng = np.random.default_rng(1)
    srcs = [Lines(i, [list(rng.integers(2, 30, int(rng.integers(0, 15))))
                      for _ in range(int(rng.integers(1, 12)))], block=5) for i in range(5)]
    _, acc, nll = run(srcs, reset, 3, 4, tmp_path)
    for s in srcs:
        starts = s.starts if reset == "line" else {0}
        np.testing.assert_allclose(nll[s.index], toy_reference(s.ids, starts), rtol=1e-15)
        assert acc.t[s.index].done


# ------------------------------------------------------------------ resume --
@pytest.mark.parametrize("reset, stop", [("none", 1), ("none", 3), ("line", 2), ("line", 4)])
def test_a_resumed_run_makes_the_same_calls(tmp_path, reset, stop):
    """One row: a run stopped after ``stop`` calls and resumed from what a checkpoint
    keeps (the Totals, the carried states) makes the very calls the uninterrupted run
    made after them (chunks aligned from each stream's or segment's start), inside a
    long line too."""
    lines = [[2, 3], list(range(4, 18)), [5, 6, 7], list(range(8, 30))]
    whole, _, want = run([Lines(0, lines, block=5)], reset, 1, 4, tmp_path)
    first, saved = run([Lines(0, lines, block=5)], reset, 1, 4, tmp_path, stop_after=stop)
    assert all(isinstance(c, Carried) for c in saved["state"].values())
    rest, acc, _ = run([Lines(0, lines, block=5)], reset, 1, 4, tmp_path,
                       totals=saved["totals"], state=saved["state"])
    assert len(first) + len(rest) == len(whole)
    for got, c in zip(first + rest, whole):
        for k in ("xs", "ts", "reset", "lengths", "h0"):
            np.testing.assert_array_equal(got[k], c[k])
    assert acc.t[0].done and acc.t[0].scored == len(want[0])


# -------------------------------------------------------------- read ahead --
def test_read_ahead_keeps_order_raises_where_the_error_was_and_stops_when_closed():
    """The reader thread (schedule.read_ahead): the same blocks in the same order; an
    input error comes out after the blocks before it, not earlier; closing the
    consumer stops the reader and closes the source."""

    def gen(n, fail_at=None, closed=None):
        try:
            for i in range(n):
                if i == fail_at:
                    raise InputError("bad line", path="f.txt", position="line 5")
                yield i
        finally:
            if closed is not None:
                closed.append(True)

    assert list(read_ahead(gen(50), 2)) == list(range(50))
    got = []
    with pytest.raises(InputError, match="bad line"):
        for b in read_ahead(gen(10, fail_at=4), 2):
            got.append(b)
    assert got == [0, 1, 2, 3]
    closed = []
    it = read_ahead(gen(10_000, closed=closed), 2)
    assert next(it) == 0
    it.close()
    assert closed == [True]
    assert not [t for t in threading.enumerate() if t.name == "streamlm-reader"]
