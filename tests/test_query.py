"""``streamlm query``: KenLM query's output formats, checked against KenLM's own binary.

The format test feeds one file to ``../shared/anchors/kenlm/bin/query`` (the PTB
KN5 model) and to ``streamlm query`` (a model with PTB's vocabulary, so that both
have the same OOVs), parses both with the one parser below, and compares them
line for line and field for field. The numbers differ; their spelling may not:
every number KenLM prints must come back unchanged through ``query.number``.
"""

from __future__ import annotations

import gzip
import math
import re
import subprocess
from collections import Counter

import numpy as np
import pytest
from helpers import run

import streamlm
from streamlm.cli.query import number
from streamlm.data.vocab import Vocab
from streamlm.jobs.score import score
from streamlm.nn.params import ModelConfig, Params, save_model

# One parser for both programs: the output as a sequence of records.
RECORD = re.compile(
    r"(?P<word>(?P<surface>\S+)=(?P<id>\d+) (?P<length>\d+) (?P<logp>\S+))\t"
    r"|(?P<total>Total: (?P<sum>\S+) OOV: (?P<oov>\d+))\n"
    r"|(?P<summary>(?P<name>Perplexity including OOVs|Perplexity excluding OOVs|OOVs|Tokens)"
    r":\t(?P<value>\S+))\n")


def parse(text: str) -> list[tuple]:
    """Records ("word", surface, id, length, logp), ("total", sum, oov) and
    ("summary", name, value), with the numbers as the strings printed; fails on
    anything else, so a stray character anywhere is a failure."""
    out, pos = [], 0
    while pos < len(text):
        m = RECORD.match(text, pos)
        assert m, f"not KenLM's format at {pos}: {text[pos:pos + 60]!r}"
        if m["word"]:
            out.append(("word", m["surface"], m["id"], m["length"], m["logp"]))
        elif m["total"]:
            out.append(("total", m["sum"], m["oov"]))
        else:
            out.append(("summary", m["name"], m["value"]))
        pos = m.end()
    return out


def kenlm_query(anchor, args, data: bytes) -> str:
    r = subprocess.run([str(anchor / "bin" / "query"), *args, str(anchor / "ptb.kn5.arpa.gz")],
                       input=data, capture_output=True, check=True, timeout=120)
    return r.stdout.decode()


@pytest.fixture(scope="module")
def ptb_model(shared_data, tmp_path_factory):
    """A small random model with the vocabulary of PTB train (KN5's, <unk> included)."""
    with gzip.open(shared_data / "ptb" / "ptb.train.txt.gz", "rt") as f:
        vocab = Vocab.build(Counter(f.read().split()))
    p = Params.init(ModelConfig(len(vocab), 4, 6), seed=2)
    path = tmp_path_factory.mktemp("qm") / "ptb_vocab.npz"
    save_model(path, p, vocab.words)
    return path


@pytest.fixture(scope="module")
def sample(shared_data) -> bytes:
    lines = (shared_data / "ptb" / "ptb.valid.txt").read_text().split("\n")[:30]
    extra = ["", "zzzz qqqq the", "the\tcat  sat ", "<unk> <unk>", "   ", "a"]
    return ("\n".join(lines + extra) + "\n").encode()


FLAGS = [[], ["-v", "sentence"], ["-v", "summary"], ["-v", "word"], ["-n"],
         ["-n", "-v", "word", "-v", "sentence"], ["-v", "word", "-v", "summary"]]


@pytest.mark.parametrize("flags", FLAGS, ids=[" ".join(f) or "default" for f in FLAGS])
def test_formats_match_kenlm_query(kenlm_anchor, ptb_model, sample, flags):
    theirs = parse(kenlm_query(kenlm_anchor, flags, sample))
    r = run("query", *flags, ptb_model, stdin=sample)
    assert r.returncode == 0, r.stderr
    ours = parse(r.stdout)
    assert [t[0] for t in ours] == [t[0] for t in theirs]  # record by record
    assert theirs, "KenLM printed nothing"
    for a, b in zip(ours, theirs):
        if a[0] == "word":
            assert a[1] == b[1]  # the same surface word, </s> included
            assert (a[2] == "0") == (b[2] == "0")  # the same OOVs (id 0)
            assert int(a[3]) >= 1 and int(b[3]) >= 1
            assert float(a[4]) <= 0 and float(b[4]) <= 0
        elif a[0] == "total":
            assert a[2] == b[2]  # OOVs of the line
        else:
            assert a[1] == b[1]
            if a[1] in ("OOVs", "Tokens"):
                assert a[2] == b[2]
    # every number as KenLM spells it: floats and totals as float32, perplexities as double
    for recs in (theirs, ours):
        for t in recs:
            if t[0] == "word":
                assert number(float(t[4]), single=True) == t[4]
            elif t[0] == "total":
                assert number(float(t[1]), single=True) == t[1]
            elif t[1].startswith("Perplexity"):
                assert number(float(t[2])) == t[2]


def test_number_spellings():
    """KenLM's (double-conversion's ECMAScript) spellings, from its outputs above."""
    assert number(-0.7727534770965576, single=True) == "-0.7727535"
    assert number(457.6821193048494) == "457.6821193048494"
    assert number(float("nan")) == "NaN" and number(0.0) == "0" and number(-0.0) == "0"
    assert number(math.inf) == "Infinity"
    assert number(1e-7) == "1e-7" and number(2.5e-6) == "0.0000025"
    assert number(1e21) == "1e+21" and number(123456.0) == "123456"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    vocab = Vocab.build(Counter("the cat sat on the mat a dog".split()))
    save_model(d / "m.npz", Params.init(ModelConfig(len(vocab), 4, 5), seed=4), vocab.words)
    text = "the cat sat\n\nzebra on the <unk> mat\na dog\n"
    (d / "t.txt").write_text(text)
    return d


def _words(recs):
    return [t for t in recs if t[0] == "word"]


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_query_numbers_are_the_scorers(toy, engine):
    text = (toy / "t.txt").read_bytes()
    lm = streamlm.Model(toy / "m.npz", engine=engine)
    lines = text.decode().splitlines()
    for flags, reset in (([], "line"), (["--carry"], "none")):
        r = run("query", *flags, "--engine", engine, toy / "m.npz", stdin=text)
        assert r.returncode == 0, r.stderr
        recs = parse(r.stdout)
        summ = {t[1]: t[2] for t in recs if t[0] == "summary"}
        want = score(toy / "m.npz", [toy / "t.txt"], reset=reset, engine=engine).summary
        assert int(summ["Tokens"]) == want["tokens"] == len(_words(recs))
        assert int(summ["OOVs"]) == want["oov"] == 2
        assert float(summ["Perplexity including OOVs"]) == pytest.approx(
            want["perplexity"], rel=1e-5)
        assert float(summ["Perplexity excluding OOVs"]) == pytest.approx(
            want["perplexity_excl_oov"], rel=1e-5)
        lengths = [int(t[3]) for t in _words(recs)]
        if reset == "line":  # every line from <s>: lengths 2, 3, ... per line
            totals = [float(t[1]) for t in recs if t[0] == "total"]
            assert totals == pytest.approx([lm.score(s) for s in lines], rel=1e-5)
            assert lengths[:4] == [2, 3, 4, 5] and lengths[4] == 2
        else:  # one stream: the context grows across the lines
            assert lengths == list(range(2, 2 + len(lengths)))
    # -n: each line from a null context, no </s>
    r = run("query", "-n", "-v", "sentence", "--engine", engine, toy / "m.npz", stdin=text)
    totals = [float(t[1]) for t in parse(r.stdout)]
    assert totals == pytest.approx([lm.score(s, bos=False, eos=False) for s in lines],
                                   rel=1e-5, abs=1e-12)


def test_query_batches_give_the_same_output(toy, monkeypatch):
    """Lines are scored a batch at a time; the batch size changes nothing printed."""
    from streamlm.cli import query as Q

    text = (toy / "t.txt").read_text() * 7
    src = toy / "many.txt"
    src.write_text(text)
    lm = streamlm.Model(toy / "m.npz", engine="numpy")
    for carry in (False, True):
        whole = "".join(Q.query(lm, str(src), carry=carry))
        monkeypatch.setattr(Q, "LINES_PER_CALL", 3)
        small = "".join(Q.query(lm, str(src), carry=carry))
        monkeypatch.undo()
        a, b = parse(whole), parse(small)
        assert [t[:4] for t in a] == [t[:4] for t in b]
        np.testing.assert_allclose([float(t[-1]) for t in a], [float(t[-1]) for t in b],
                                   rtol=1e-5)


def test_query_empty_input_and_last_line_without_newline(toy):
    r = run("query", toy / "m.npz", stdin=b"")
    assert r.returncode == 0 and parse(r.stdout) == [
        ("summary", "Perplexity including OOVs", "NaN"),
        ("summary", "Perplexity excluding OOVs", "NaN"),
        ("summary", "OOVs", "0"), ("summary", "Tokens", "0")]
    r = run("query", "-v", "sentence", toy / "m.npz", stdin=b"the cat\nsat")
    assert r.returncode == 0 and len(parse(r.stdout)) == 2  # the last line is a line
