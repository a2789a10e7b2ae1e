"""Scores as they accumulate (streamlm.jobs.records): the running sums of each input (Totals,
what a score checkpoint keeps), the per-unit records, and their spool on disk."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

import numpy as np
import pytest

from streamlm.data.tokenizer import Block
from streamlm.data.vocab import Vocab
from streamlm.errors import UsageError
from streamlm.jobs.checkpoint import ScoreCheckpoint
from streamlm.jobs.records import UNIT_DTYPE, WORD_DTYPE, Accumulator, Spool, Totals
from streamlm.jobs.score import score
from streamlm.nn.params import ModelConfig, Params, save_model

UNK = 0


def blocks_of(ids, line, cuts, i=0):
    """The tokens ``ids`` (their ``line`` each) of input i as blocks cut at ``cuts``."""
    rng = np.random.default_rng(len(ids))
    words = rng.integers(0, 3, len(ids)).astype(np.int32)
    nbytes = rng.integers(0, 9, len(ids)).astype(np.int32)
    bounds = [0, *cuts, len(ids)]
    return [Block(i, a, ids[a:b], line[a:b], None, words[a:b], nbytes[a:b])
            for a, b in zip(bounds[:-1], bounds[1:])], words, nbytes


# ------------------------------------------------------------- the sums --
@pytest.mark.parametrize("cuts", [[], [1], [3, 4, 9], list(range(1, 12))])
def test_the_sums_and_the_line_records_are_those_of_the_whole(tmp_path, cuts):
    """However the input comes in blocks (a line across several, a block of one
    token): the input's sums are the float64 sums of its tokens, and its line records
    each line's, the last one written when the input finishes."""
    ids = np.array([4, 0, 5, 1, 0, 6, 7, 1, 1, 8, 0, 1], dtype=np.int32)
    line = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3])
    nll = np.linspace(0.5, 3.0, len(ids))
    blks, words, nbytes = blocks_of(ids, line, cuts)
    acc = Accumulator(1, UNK, "line", Spool(tmp_path / "s", UNIT_DTYPE))
    for b in blks:
        acc.add(b, nll[b.pos:b.pos + len(b)])
    acc.finish(0)
    t = acc.t[0]
    oov = ids == UNK
    assert (t.scored, t.oov, t.words, t.nbytes) == (12, 3, words.sum(), nbytes.sum())
    assert math.isclose(t.logprob, -nll.sum(), rel_tol=1e-15)
    assert math.isclose(t.logprob_oov, -nll[oov].sum(), rel_tol=1e-15)
    recs = np.concatenate(list(acc.spool.read(0)))
    assert recs["index"].tolist() == [0, 1, 2, 3] and t.records == 4
    for r in recs:
        k = line == r["index"]
        assert r["tokens"] == k.sum() and r["oov"] == (k & oov).sum()
        assert math.isclose(r["logprob"], -nll[k].sum(), rel_tol=1e-15)
        assert r["words"] == words[k].sum() and r["bytes"] == nbytes[k].sum()
    assert acc.running() == (12, t.logprob)


def test_word_records_and_scored_in_order_only(tmp_path):
    ids = np.array([3, 0, 1], dtype=np.int32)
    (b,), _, _ = blocks_of(ids, np.zeros(3, np.int64), [])
    acc = Accumulator(1, UNK, "word", Spool(tmp_path / "s", WORD_DTYPE))
    acc.add(b, np.array([1.0, 2.0, 0.5]))
    acc.finish(0)
    r = np.concatenate(list(acc.spool.read(0)))
    assert r["position"].tolist() == [0, 1, 2] and r["id"].tolist() == [3, 0, 1]
    assert r["logprob"].tolist() == [-1.0, -2.0, -0.5]


# ------------------------------------------------------------- the spool --
def test_the_spool_appends_truncates_and_reads_back_in_order(tmp_path):
    sp = Spool(tmp_path / "spool", UNIT_DTYPE)
    recs = np.zeros(10, UNIT_DTYPE)
    recs["index"] = np.arange(10)
    sp.write(1, recs[:4])
    sp.write(1, recs[4:])
    sp.sync()
    sp.close_all()
    assert sp.path(1).stat().st_size == 10 * UNIT_DTYPE.itemsize
    assert np.concatenate(list(sp.read(1, block=3)))["index"].tolist() == list(range(10))
    sp.truncate(1, 6)  # what a checkpoint counted
    assert np.concatenate(list(sp.read(1)))["index"].tolist() == list(range(6))
    assert list(sp.read(2)) == []  # an input with no records yet
    sp.truncate(2, 0)
    with pytest.raises(UsageError, match="spool .* is missing"):
        sp.truncate(3, 5)


# ----------------------------------------------------------- the totals --
def test_totals_survive_a_checkpoint_and_older_ones_load():
    t = Totals(scored=9, oov=3, logprob=-4.25, done=True, rows=7, skipped=[2, 5],
               why="line 3: invalid JSON (Expecting value)", unk_literal=1)
    back = Totals.from_json(json.loads(json.dumps(t.to_json())))
    assert back == t
    old = t.to_json()
    del old["why"]  # a checkpoint of an older streamlm
    assert Totals.from_json(old).why is None
    assert Totals.from_json(old).skipped == [2, 5]


def test_a_checkpoint_keeps_the_literal_count():
    t = Totals(scored=9, oov=3, done=True, unk_literal=2)
    assert Totals.from_json(json.loads(json.dumps(t.to_json()))).unk_literal == 2
    old = t.to_json()
    del old["unk_literal"]  # a checkpoint of an older streamlm
    assert Totals.from_json(old).unk_literal is None


class Stop(Exception):
    pass


def test_a_resumed_document_job_keeps_the_row_counts(tmp_path, caplog):
    """The totals own a document input's rows: one finished before the job stopped is
    not read again, and the resumed job still gives its rows, its skipped rows and
    why the first was skipped (its warning line), and a record for every row, as the
    uninterrupted job does."""
    words = "the cat sat on a mat and dog ran".split()
    vocab = Vocab.build(Counter(words))
    save_model(tmp_path / "m.npz", Params.init(ModelConfig(len(vocab), 4, 5), seed=1),
               vocab.words)
    a = tmp_path / "a.jsonl"
    rows = [json.dumps({"text": " ".join(words[k:k + 4])}) for k in range(6)]
    rows[2] = '{"text": "the cat", oops}'
    try:
        json.loads(rows[2])
    except ValueError as e:
        why = f"line 3: invalid JSON ({e.msg})"
    rows[4] = json.dumps({"body": "no text"})
    a.write_text("\n".join(rows) + "\n")
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"text": " ".join(words[k % 5:k % 5 + 3])}) + "\n"
                         for k in range(60)))
    kw = dict(reset="doc", level="doc", chunk_tokens=4, batch=1, engine="numpy",
              errors="skip")

    def said():
        return [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="streamlm"):
        full = score(tmp_path / "m.npz", [a, b], output=tmp_path / "full.jsonl", **kw)
        want = said()
        caplog.clear()
        a_tokens = full.summary["inputs"][0]["tokens"]

        def stop_in_b(info):
            if info["tokens"] > a_tokens + 20:
                raise Stop

        ck = tmp_path / "ck.npz"
        with pytest.raises(Stop):
            score(tmp_path / "m.npz", [a, b], output=tmp_path / "r.jsonl", checkpoint=ck,
                  checkpoint_every=1, progress=stop_in_b, **kw)
        saved = ScoreCheckpoint(str(ck), "1", {}).load()["inputs"]
        assert saved[0]["done"] and not saved[1]["done"]  # (a is not read again)
        caplog.clear()
        r = score(tmp_path / "m.npz", [a, b], output=tmp_path / "r.jsonl", checkpoint=ck, **kw)
        got = said()
    assert want == [f"warning: {a}: skipped 2 bad rows (first: {why})"]
    assert got == want
    for k in ("rows", "skipped_rows"):
        assert r.summary[k] == full.summary[k]
        assert [d[k] for d in r.summary["inputs"]] == [d[k] for d in full.summary["inputs"]]
    assert (tmp_path / "r.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()
