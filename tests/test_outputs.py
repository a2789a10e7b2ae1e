"""Per-unit records from the spool to the output (streamlm.jobs.outputs): the format by the
suffix, a regular file replaced whole or not at all, special files written in place,
and the outputs refused before any work."""

from __future__ import annotations

import json
import math
import os
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import cli
from pyarrow import csv

from streamlm.data.vocab import Vocab
from streamlm.errors import UsageError
from streamlm.jobs.outputs import (
    FORMATS,
    check_output,
    is_special,
    open_output,
    output_format,
    write_records,
)
from streamlm.jobs.records import UNIT_DTYPE, Spool, Totals
from streamlm.jobs.score import score
from streamlm.nn.params import ModelConfig, Params, save_model

WORDS = "the cat sat on a mat and dog ran to big red house".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A model and 40 JSONL documents (one empty)."""
    d = tmp_path_factory.mktemp("outputs")
    vocab = Vocab.build(Counter(WORDS))
    save_model(d / "m.npz", Params.init(ModelConfig(len(vocab), 6, 7), seed=3), vocab.words)
    rng = np.random.default_rng(0)
    with open(d / "c.jsonl", "w", encoding="utf-8") as f:
        for k in range(40):
            words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(0, 9)))]
            f.write(json.dumps({"id": k, "text": " ".join(words) if k != 3 else ""}) + "\n")
    return {"dir": d, "model": d / "m.npz"}


# ------------------------------------------------------------------ format --
def _read(path: Path) -> list[dict]:
    fmt = output_format(str(path))
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "csv":
        return csv.read_csv(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_suffix_writes_the_same_records(tmp_path):
    """Line records in each format its suffix names: the same values read back, a
    unit with no tokens a null perplexity."""
    spool = Spool(tmp_path / "spool", UNIT_DTYPE)
    r = np.zeros(3, UNIT_DTYPE)
    r["index"], r["tokens"], r["oov"] = [0, 1, 2], [3, 0, 5], [1, 0, 0]
    r["logprob"], r["logprob_oov"] = [-4.5, 0.0, -7.25], [-1.5, 0.0, 0.0]
    r["words"], r["bytes"] = [2, 0, 4], [9, 0, 20]
    spool.write(0, r)
    spool.close_all()
    src = SimpleNamespace(index=0, name="in.txt")
    assert set(FORMATS) == {".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".csv"}
    for ext in FORMATS:
        out = tmp_path / f"lines{ext}"
        n = write_records(str(out), "line", spool, [src], [Totals()], None, False)
        got = _read(out)
        assert n == 3 and len(got) == 3, ext
        assert [g["index"] for g in got] == [0, 1, 2] and got[0]["path"] == "in.txt"
        assert [g["tokens"] for g in got] == [3, 0, 5]
        assert math.isclose(got[0]["perplexity"], math.exp(4.5 / 3), rel_tol=1e-12)
        assert math.isclose(got[0]["perplexity_excl_oov"], math.exp(3.0 / 2), rel_tol=1e-12)
        assert math.isclose(got[2]["bits_per_byte"], 7.25 / 20 / math.log(2), rel_tol=1e-12)
        assert got[1]["perplexity"] is None, ext
    with pytest.raises(UsageError, match=r"\.parquet, \.jsonl"):
        output_format(str(tmp_path / "x.tsv"))
    assert output_format("-") == "jsonl" and output_format("/dev/null") == "jsonl"


# ------------------------------------------------------------------ atomic --
def test_a_regular_file_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), open_output(str(out)) as f:
        f.write(b"new, half")
        assert out.read_text() == "old\n"  # not replaced while it is written
        raise RuntimeError("the job failed")
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]  # no temp file left
    with open_output(str(out)) as f:
        f.write(b"new\n")
    assert out.read_text() == "new\n"
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("x\n")
    link.symlink_to(real)
    with open_output(str(link)) as f:  # a symlink: its file is replaced, the link stays
        f.write(b"y\n")
    assert link.is_symlink() and real.read_text() == "y\n"


# ---------------------------------------------------------- special files --
def test_output_dash_is_jsonl_on_stdout_and_the_summary_on_stderr(corpus):
    rc, out, err = cli("score", corpus["model"], corpus["dir"] / "c.jsonl", "--output", "-")
    assert rc == 0, err
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 40 and "perplexity incl. OOVs" in err
    rc, out, err = cli("score", corpus["model"], corpus["dir"] / "c.jsonl", "-o", "-",
                       "--json")
    assert rc == 0 and len(out.splitlines()) == 40  # records only: no summary object
    assert not Path("-").exists()


def test_special_outputs_are_written_not_replaced(corpus, tmp_path):
    link = tmp_path / "null-link"
    link.symlink_to("/dev/null")
    score(corpus["model"], [corpus["dir"] / "c.jsonl"], output=link)
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = {}

    def reader():
        with open(fifo, "rb") as f:
            got["data"] = f.read()

    th = threading.Thread(target=reader)
    th.start()
    score(corpus["model"], [corpus["dir"] / "c.jsonl"], output=fifo)
    th.join(30)
    assert len(got["data"].decode().splitlines()) == 40
    assert fifo.is_fifo()
    assert not [p for p in tmp_path.iterdir() if ".spool" in p.name or ".tmp" in p.name]


# ------------------------------------------------------------ check_output --
def test_outputs_refused_before_the_work(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("{}\n")
    check_output("-", [str(inp)])
    check_output(str(tmp_path / "new.parquet"), [str(inp)])  # need not exist yet
    with pytest.raises(UsageError, match="is a directory"):
        check_output(str(tmp_path), [str(inp)])
    with pytest.raises(UsageError, match="also an input"):
        check_output(str(inp), [str(inp)])
    same = tmp_path / "same.jsonl"
    same.symlink_to(inp)
    with pytest.raises(UsageError, match="also an input"):
        check_output(str(same), [str(inp)])
    with pytest.raises(UsageError, match=r"must end in \.parquet"):
        check_output(str(tmp_path / "out.txt"), [str(inp)])
    assert is_special("/dev/null") and not is_special(str(inp))
    assert not is_special(str(tmp_path)) and not is_special(str(tmp_path / "nothing"))
