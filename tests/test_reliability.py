"""Hostile inputs through the real CLI, table-driven.

Every case runs ``python -m streamlm ...`` in a subprocess and must give:
a non-zero exit that is not a signal, exactly one error line on stderr that
names the file (and a position where one applies), no traceback, and no
output file left behind. A few "accept" cases (no trailing newline, a 100 MB
line) must instead succeed with the right counts.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from helpers import run

from streamlm.nn.params import ModelConfig, Params, save_model

WORDS = "the cat sat on a mat and dog ran to big red house".split()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny prepared corpus, a matching model, and the raw pieces to break."""
    d = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    lines = [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 6)) for _ in range(200)]
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    r = run("prepare", d / "train.txt", "--out", d / "prep")
    assert r.returncode == 0, r.stderr
    vocab = (d / "prep" / "vocab.txt").read_text().split("\n")
    vocab = [w for w in vocab if w]
    V = len(vocab)
    p = Params.init(ModelConfig(V=V, D=4, H=5), seed=0)
    save_model(d / "model.npz", p, vocab)
    other = list(vocab)
    other[-1], other[-2] = other[-2], other[-1]  # same size, different order
    save_model(d / "other_vocab.npz", p, other)
    ids = np.arange(40, dtype=np.int32) % V
    pq.write_table(pa.table({"token_id": ids}), d / "good.parquet")
    b = {"dir": d, "V": V, "vocab": vocab}
    try:
        _subword_base(b, p)
    except ImportError:  # no sentencepiece: its cases skip
        pass
    return b


def _subword_base(b, p):
    """A subword dataset, a second SentencePiece model with other pieces, and model files
    whose embedded tokenizer is garbage or does not fit their vocabulary."""
    import sentencepiece  # noqa: F401

    from streamlm.data.subword import train_model
    from streamlm.jobs.prepare import prepare

    d = b["dir"]
    prepare([str(d / "train.txt")], d / "prep_sp", tokenizer="sentencepiece", pieces=300)
    text = (d / "train.txt").read_text().split("\n")
    (d / "other.model").write_bytes(train_model(iter(text), 300, model_type="bpe"))
    save_model(d / "garbled_tokenizer.npz", p, b["vocab"], tokenizer=b"\x0a\x03abc" * 40)
    save_model(d / "misfit_tokenizer.npz", p, b["vocab"],
               tokenizer=(d / "prep_sp" / "tokenizer.model").read_bytes())


def _swapped_tokenizer(b, tmp):
    """The subword dataset with another SentencePiece model (its manifest sha256 updated:
    the only fault left is that the pieces are not the shards' vocabulary)."""
    import hashlib

    d = shutil.copytree(b["dir"] / "prep_sp", tmp / "swapped")
    other = (b["dir"] / "other.model").read_bytes()
    (d / "tokenizer.model").write_bytes(other)
    m = json.loads((d / "manifest.json").read_text())
    m["tokenizer"]["sha256"] = hashlib.sha256(other).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@dataclass
class Case:
    name: str
    make: object  # callable(base, tmp) -> argv list (strings/paths)
    names: str | None = None  # a substring the error line must contain (default: the input)
    position: str | None = None  # a substring naming the position
    outputs: list = field(default_factory=list)  # paths (relative to tmp) that must not exist
    needs: str | None = None  # an optional package the case needs (skipped without it)
    stdin: bytes | None = None  # fed to the command (then nothing may reach stdout)


def _w(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def _parquet(tmp, name, table) -> Path:
    p = tmp / name
    pq.write_table(table, p)
    return p


def _score(b, path, *extra):
    return ["score", b["dir"] / "model.npz", path, "--output", "out.jsonl", "--level", "line",
            *extra]


def _train(b, path, *extra):
    return ["train", path, "--vocab", b["dir"] / "prep" / "vocab.txt", "--out", "m.npz",
            "--embed", "4", "--hidden", "4", "--batch", "2", "--bptt", "3", "--epochs", "1",
            *extra]


def _model_variant(b, tmp, name, mutate):
    with np.load(b["dir"] / "model.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    mutate(arrays)
    p = tmp / name
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def _truncated_model(b, tmp):
    data = (b["dir"] / "model.npz").read_bytes()
    return _w(tmp, "trunc.npz", data[: len(data) // 2])


def _flipped_model(b, tmp):
    data = bytearray((b["dir"] / "model.npz").read_bytes())
    with np.load(b["dir"] / "model.npz", allow_pickle=False) as z:
        needle = z["rnn_Wh"].tobytes()[:8]
    i = bytes(data).find(needle)
    data[i + 2] ^= 0x10
    return _w(tmp, "flip.npz", bytes(data))


def _text(tmp, name, data: bytes):
    return _w(tmp, name, data)


CASES = [
    # ---- text inputs (prepare and score) ----
    Case("prepare-zero-byte-gz",
         lambda b, t: ["prepare", _w(t, "z.txt.gz", b""), "--out", "prep"], outputs=["prep"]),
    Case("prepare-truncated-gz",
         lambda b, t: ["prepare", _w(t, "t.txt.gz", _half_gz(_random_text(3000))),
                       "--out", "prep"], position="line", outputs=["prep"]),
    Case("prepare-corrupt-gz",
         lambda b, t: ["prepare", _w(t, "c.txt.gz", gzip.compress(b"a b\n" * 100)[:20]
                                     + b"\x00garbage" * 10), "--out", "prep"], outputs=["prep"]),
    Case("prepare-invalid-utf8",
         lambda b, t: ["prepare", _w(t, "u.txt", b"the cat\nsat \xff\xfe on\n"), "--out", "prep"],
         position="byte 12", outputs=["prep"]),
    Case("prepare-nul-bytes",
         lambda b, t: ["prepare", _w(t, "n.txt", b"the cat\nsat\x00on\n"), "--out", "prep"],
         position="line 2", outputs=["prep"]),
    Case("prepare-empty", lambda b, t: ["prepare", _w(t, "e.txt", b""), "--out", "prep"],
         outputs=["prep"]),
    Case("prepare-directory-as-file",
         lambda b, t: ["prepare", b["dir"] / "prep", "--out", "prep2"], outputs=["prep2"]),
    Case("prepare-missing-file",
         lambda b, t: ["prepare", t / "nope.txt", "--out", "prep"], outputs=["prep"]),
    Case("prepare-unreadable-file",
         lambda b, t: ["prepare", "/proc/self/mem", "--out", "prep"], outputs=["prep"]),
    Case("score-invalid-utf8",
         lambda b, t: _score(b, _w(t, "u.txt", b"the cat\n\xc3\x28 sat\n")),
         position="byte 8", outputs=["out.jsonl"]),
    Case("score-truncated-gz",
         lambda b, t: _score(b, _w(t, "t.txt.gz", _half_gz(_random_text(3000)))),
         outputs=["out.jsonl"]),
    Case("score-missing-input",
         lambda b, t: _score(b, t / "missing.txt"), outputs=["out.jsonl"]),
    Case("score-directory-as-text",
         lambda b, t: _score(b, t), names=None, outputs=["out.jsonl"]),
    # ---- documents: JSONL and Parquet rows ----
    Case("score-jsonl-invalid-json",
         lambda b, t: _score(b, _w(t, "bad.jsonl", b'{"text": "the cat"}\n{"text": "a\n')),
         position="line 2", outputs=["out.jsonl"]),
    Case("score-jsonl-missing-field",
         lambda b, t: _score(b, _w(t, "nofield.jsonl", b'{"body": "the cat"}\n')),
         position="line 1", outputs=["out.jsonl"]),
    Case("score-jsonl-text-not-a-string",
         lambda b, t: _score(b, _w(t, "num.jsonl", b'{"text": "a"}\n{"text": 5}\n')),
         position="line 2", outputs=["out.jsonl"]),
    Case("prepare-jsonl-invalid-json",
         lambda b, t: ["prepare", _w(t, "p.jsonl", b'{"text": "the cat"}\nnot json\n'),
                       "--out", "prep"], position="line 2", outputs=["prep"]),
    Case("score-parquet-text-wrong-type",
         lambda b, t: _score(b, _parquet(t, "int.parquet", pa.table({"text": [1, 2, 3]}))),
         position="int64", outputs=["out.jsonl"]),
    Case("score-parquet-text-nulls",
         lambda b, t: _score(b, _parquet(t, "nulls.parquet", pa.table(
             {"text": pa.array(["the cat", "a dog", None, "sat"], pa.string())}))),
         position="row 2", outputs=["out.jsonl"]),
    Case("score-parquet-ids-out-of-range",
         lambda b, t: _score(b, _parquet(t, "ids.parquet", pa.table(
             {"input_ids": pa.array([[1, 2], [3, b["V"] + 1]], pa.list_(pa.int32()))}))),
         position="row 1", outputs=["out.jsonl"]),
    Case("score-keep-missing-column",
         lambda b, t: _score(b, _parquet(t, "k.parquet", pa.table({"text": ["the cat"]})),
                             "--level", "doc", "--keep", "url"),
         position="url", outputs=["out.jsonl"]),
    # ---- outputs ----
    Case("score-output-is-input",
         lambda b, t: ["score", b["dir"] / "model.npz", _w(t, "in.jsonl", b'{"text": "a"}\n'),
                       "--output", t / "in.jsonl"], names="in.jsonl"),
    Case("score-output-is-directory",
         lambda b, t: ["score", b["dir"] / "model.npz", b["dir"] / "train.txt", "--output",
                       b["dir"]], names="is a directory"),
    Case("score-output-unknown-suffix",
         lambda b, t: ["score", b["dir"] / "model.npz", b["dir"] / "train.txt", "--output",
                       "out.tsv"], names="out.tsv", outputs=["out.tsv"]),
    Case("score-cutoffs-not-json",
         lambda b, t: ["score", b["dir"] / "model.npz", b["dir"] / "train.txt", "--cutoffs",
                       _w(t, "cut.json", b"30,60\n")], names="cut.json"),
    Case("report-not-a-score-file",
         lambda b, t: ["report", _parquet(t, "notscores.parquet", pa.table({"x": [1]}))],
         position="tokens"),
    # ---- shards (train and score) ----
    Case("train-zero-byte-parquet",
         lambda b, t: _train(b, _w(t, "z.parquet", b"")), outputs=["m.npz"]),
    Case("train-truncated-parquet",
         lambda b, t: _train(b, _w(t, "t.parquet",
                                   (b["dir"] / "good.parquet").read_bytes()[:-30])),
         outputs=["m.npz"]),
    Case("score-corrupt-parquet",
         lambda b, t: _score(b, _w(t, "c.parquet", b"PAR1" + b"\x07" * 300 + b"PAR1")),
         outputs=["out.jsonl"]),
    Case("score-truncated-arrow",
         lambda b, t: _score(b, _w(t, "t.arrow", _feather_bytes(b)[:-40])),
         outputs=["out.jsonl"]),
    Case("train-wrong-column",
         lambda b, t: _train(b, _parquet(t, "w.parquet", pa.table({"ids": np.arange(30)}))),
         position="token_id", outputs=["m.npz"]),
    Case("score-wrong-dtype",
         lambda b, t: _score(b, _parquet(t, "f.parquet",
                                         pa.table({"token_id": np.arange(30.0)}))),
         position="token_id", outputs=["out.jsonl"]),
    Case("train-nulls",
         lambda b, t: _train(b, _parquet(t, "n.parquet", pa.table(
             {"token_id": pa.array([1, 2, None, 3] * 10, pa.int32())}))),
         position="row", outputs=["m.npz"]),
    Case("score-negative-id",
         lambda b, t: _score(b, _parquet(t, "neg.parquet", pa.table(
             {"token_id": pa.array([1, 2, -1, 3] * 10, pa.int32())}))),
         position="row", outputs=["out.jsonl"]),
    Case("score-id-equal-V",
         lambda b, t: _score(b, _parquet(t, "eqv.parquet", pa.table(
             {"token_id": pa.array([1, 2, b["V"], 3] * 10, pa.int32())}))),
         position="row", outputs=["out.jsonl"]),
    Case("train-id-above-V",
         lambda b, t: _train(b, _parquet(t, "gtv.parquet", pa.table(
             {"token_id": pa.array([1, 2, 3] * 10 + [b["V"] + 7], pa.int32())}))),
         position="row", outputs=["m.npz"]),
    Case("train-empty-dataset",
         lambda b, t: _train(b, _parquet(t, "empty.parquet", pa.table(
             {"token_id": pa.array([], pa.int32())}))), outputs=["m.npz"]),
    # ---- model files ----
    Case("score-model-truncated",
         lambda b, t: ["score", _truncated_model(b, t), b["dir"] / "train.txt",
                       "--output", "out.jsonl", "--level", "line"],
         names="trunc.npz", outputs=["out.jsonl"]),
    Case("score-model-flipped-byte",
         lambda b, t: ["score", _flipped_model(b, t), b["dir"] / "train.txt",
                       "--output", "out.jsonl", "--level", "line"],
         names="flip.npz", outputs=["out.jsonl"]),
    Case("score-model-wrong-shape",
         lambda b, t: ["score", _model_variant(b, t, "shape.npz", lambda a: a.__setitem__(
             "rnn_Wh", np.zeros((3, 3), np.float32))), b["dir"] / "train.txt"],
         names="shape.npz", position="rnn_Wh"),
    Case("score-model-pickled-object",
         lambda b, t: ["score", _model_variant(b, t, "pickle.npz", lambda a: a.__setitem__(
             "meta", np.array([{"x": 1}], dtype=object))), b["dir"] / "train.txt"],
         names="pickle.npz", position="pickle"),
    Case("score-model-extra-array",
         lambda b, t: ["score", _model_variant(b, t, "extra.npz", lambda a: a.__setitem__(
             "evil", np.zeros(2))), b["dir"] / "train.txt"], names="extra.npz",
         position="evil"),
    Case("score-model-missing-array",
         lambda b, t: ["score", _model_variant(b, t, "missing.npz", lambda a: a.pop("rnn_b")),
                       b["dir"] / "train.txt"], names="missing.npz", position="rnn_b"),
    Case("score-model-is-directory",
         lambda b, t: ["score", t, b["dir"] / "train.txt"], names=None),
    Case("score-vocab-mismatch",
         lambda b, t: ["score", b["dir"] / "other_vocab.npz", b["dir"] / "prep",
                       "--output", "out.jsonl", "--level", "line"],
         names="prep", outputs=["out.jsonl"]),
    # ---- subword tokenizers (SentencePiece) ----
    Case("prepare-tokenizer-missing",
         lambda b, t: ["prepare", b["dir"] / "train.txt", "--tokenizer", t / "nope.model",
                       "--out", "prep"], names="nope.model", outputs=["prep"],
         needs="sentencepiece"),
    Case("prepare-tokenizer-corrupt",
         lambda b, t: ["prepare", b["dir"] / "train.txt", "--tokenizer",
                       _w(t, "bad.model", b"\x0a\x05hello" + b"\xff" * 64), "--out", "prep"],
         names="bad.model", position="not a SentencePiece model", outputs=["prep"],
         needs="sentencepiece"),
    Case("prepare-tokenizer-empty",
         lambda b, t: ["prepare", b["dir"] / "train.txt", "--tokenizer",
                       _w(t, "empty.model", b""), "--out", "prep"], names="empty.model",
         outputs=["prep"], needs="sentencepiece"),
    Case("train-tokenizer-pieces-mismatch",
         lambda b, t: ["train", _swapped_tokenizer(b, t), "--out", "m.npz", "--embed", "4",
                       "--hidden", "4", "--batch", "2", "--bptt", "3", "--epochs", "1"],
         names="tokenizer.model", position="do not match", outputs=["m.npz"],
         needs="sentencepiece"),
    Case("score-tokenizer-pieces-mismatch",
         lambda b, t: ["score", b["dir"] / "model.npz", _swapped_tokenizer(b, t),
                       "--output", "out.jsonl"], names="tokenizer.model",
         position="do not match", outputs=["out.jsonl"], needs="sentencepiece"),
    Case("score-model-tokenizer-garbled",
         lambda b, t: ["score", b["dir"] / "garbled_tokenizer.npz", b["dir"] / "train.txt",
                       "--output", "out.jsonl"], names="garbled_tokenizer.npz",
         position="not a SentencePiece model", outputs=["out.jsonl"], needs="sentencepiece"),
    Case("score-model-tokenizer-misfit",
         lambda b, t: ["score", b["dir"] / "misfit_tokenizer.npz", b["dir"] / "train.txt",
                       "--output", "out.jsonl"], names="misfit_tokenizer.npz",
         position="do not match", outputs=["out.jsonl"], needs="sentencepiece"),
    # ---- options ----
    Case("train-bptt-zero", lambda b, t: _train(b, b["dir"] / "prep", "--bptt", "0"),
         names="bptt", outputs=["m.npz"]),
    Case("train-batch-zero", lambda b, t: _train(b, b["dir"] / "prep", "--batch", "0"),
         names="batch", outputs=["m.npz"]),
    Case("score-chunk-tokens-zero",
         lambda b, t: _score(b, b["dir"] / "train.txt", "--chunk-tokens", "0"),
         names="chunk-tokens", outputs=["out.jsonl"]),
    Case("unknown-option", lambda b, t: ["score", b["dir"] / "model.npz", "--bogus"],
         names="--bogus"),
    Case("bad-integer-option",
         lambda b, t: _train(b, b["dir"] / "prep", "--batch", "many"), names="--batch",
         outputs=["m.npz"]),
    Case("train-negative-lr", lambda b, t: _train(b, b["dir"] / "prep", "--lr", "-1"),
         names="lr", outputs=["m.npz"]),
    # ---- query (stdin) ----
    Case("query-invalid-utf8", lambda b, t: ["query", b["dir"] / "model.npz"],
         names="<stdin>", position="line 2", stdin=b"the cat\nsat \xff on\n"),
    Case("query-model-truncated", lambda b, t: ["query", _truncated_model(b, t)],
         names="trunc.npz", stdin=b"the cat\n"),
]


def _feather_bytes(b):
    import io

    buf = io.BytesIO()
    feather.write_feather(pa.table({"token_id": np.arange(100, dtype=np.int32) % b["V"]}), buf)
    return buf.getvalue()


def test_the_manual_counts_the_cases_that_run():
    """docs/guarantees.md's figure is the number of distinct cases here (it fails when a
    case is added, removed or renamed twice without the manual following)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "guarantees.md").read_text()
    m = re.search(r"`tests/test_reliability.py` tries (\d+) such", page)
    assert m, "docs/guarantees.md no longer says how many cases test_reliability.py tries"
    assert len({c.name for c in CASES}) == len(CASES) == int(m.group(1))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case, base, tmp_path):
    if case.needs:
        pytest.importorskip(case.needs)
    argv = case.make(base, tmp_path)
    r = run(*argv, cwd=tmp_path, stdin=case.stdin)
    err_lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, f"accepted: {r.stdout}\n{r.stderr}"
    assert 0 < r.returncode < 128, r.returncode  # an exit, not a signal
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in err_lines if "error" in ln.lower()]
    assert len(errors) == 1, r.stderr
    line = errors[0]
    # the line names the offending file (or option)
    target = case.names if case.names is not None else _first_input(argv)
    if target is not None:
        assert str(target) in line, (target, line)
    if case.position:
        assert case.position in line, (case.position, line)
    for out in case.outputs:
        assert not (tmp_path / out).exists(), f"partial output left: {out}"
    if case.stdin is not None:
        assert r.stdout == "", r.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def _first_input(argv):
    """The file the error must name: the first path that is not the (good) model."""
    for a in argv[1:]:
        if isinstance(a, Path) and a.name not in ("model.npz", "other_vocab.npz"):
            return a.name
    return None


def _half_gz(text: bytes) -> bytes:
    data = gzip.compress(text)
    return data[: len(data) // 2]


def _random_text(n_lines: int) -> bytes:
    rng = np.random.default_rng(5)
    return "".join(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 8)) + "\n"
                   for _ in range(n_lines)).encode()


# ---------------------------------------------------------- accepted inputs --
def test_no_trailing_newline_and_blank_lines_are_counted(base, tmp_path):
    f = _w(tmp_path, "x.txt", b"the cat\n\nsat on")
    r = run("score", base["dir"] / "model.npz", f, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["tokens"] == 4 + 3  # 4 words + one <eos> per line (3 lines)
    blank = _w(tmp_path, "b.txt", b"\n\n\n")
    r = run("score", base["dir"] / "model.npz", blank, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["tokens"] == 3
    r = run("prepare", blank, "--out", tmp_path / "p", "--docs", "blank-line")
    assert r.returncode != 0 and "Traceback" not in r.stderr  # no token at all: empty dataset


def test_hundred_megabyte_line_without_newline(base, tmp_path):
    big = tmp_path / "big.txt"
    word = b"cat "
    with open(big, "wb") as f:
        block = word * (1 << 18)  # 1 MiB
        for _ in range(100):
            f.write(block)
    r = run("prepare", big, "--out", tmp_path / "p", "--vocab",
                base["dir"] / "prep" / "vocab.txt", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["num_tokens"] == 100 * (1 << 18) + 1
    shutil.rmtree(tmp_path / "p")


def test_dev_stdout_and_a_fifo_are_written_not_replaced(base, tmp_path):
    """Outputs that are not regular files are opened and written, never renamed over
    (as root, an atomic rename would replace /dev/stdout itself)."""
    import os
    import threading

    was_link = os.path.islink("/dev/stdout")
    r = run("score", base["dir"] / "model.npz", base["dir"] / "train.txt", "--output",
            "/dev/stdout", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 200 + 1  # the line records, then the summary
    assert all("perplexity" in json.loads(ln) for ln in lines)
    assert os.path.islink("/dev/stdout") == was_link
    assert not os.path.isfile("/dev/stdout") or was_link
    fifo = tmp_path / "scores.fifo"
    os.mkfifo(fifo)
    got = {}
    th = threading.Thread(target=lambda: got.setdefault("data", fifo.read_bytes()))
    th.start()
    r = run("score", base["dir"] / "model.npz", base["dir"] / "train.txt", "--output", fifo,
            cwd=tmp_path)
    th.join(60)
    assert r.returncode == 0, r.stderr
    assert len(got["data"].splitlines()) == 200 and fifo.is_fifo()
