import gzip
import json
import subprocess
import sys
from collections import Counter

import helpers
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line, cli
from line_reference import per_line_pieces

from streamlm.data.shards import open_dataset
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError
from streamlm.jobs import prepare as prepare_module
from streamlm.jobs.prepare import prepare


def all_ids(out):
    return np.concatenate([c.ids for c in open_dataset(out).iter_chunks(1 << 20)])


# -------------------------------------------------------------------- PTB --
def test_ptb_counts(shared_data, tmp_path):
    PTB = shared_data / "ptb"
    m = prepare([str(PTB / "ptb.train.txt.gz")], tmp_path / "train")
    assert m["num_tokens"] == 929_589 and m["vocab"]["size"] == 10_000
    assert m["unk_tokens"] == 45_020
    vocab = tmp_path / "train" / "vocab.txt"
    for name, tokens, unk in [("valid", 73_760, 3_485), ("test", 82_430, 4_794)]:
        m = prepare([str(PTB / f"ptb.{name}.txt")], tmp_path / name, vocab_path=vocab)
        assert (m["num_tokens"], m["unk_tokens"]) == (tokens, unk)
        assert open_dataset(tmp_path / name).num_tokens == tokens
        # the train vocabulary covers valid/test: only literal <unk> maps to <unk>
        text = (PTB / f"ptb.{name}.txt").read_text()
        assert text.split().count("<unk>") == unk


def test_ptb_valid_decodes_exactly(shared_data, tmp_path):
    PTB = shared_data / "ptb"
    m = prepare([str(PTB / "ptb.valid.txt")], tmp_path / "v", shard_tokens=20_000,
                row_group_tokens=4096)
    assert len(m["shards"]) == 4
    ds = open_dataset(tmp_path / "v", verify=True)
    words = ds.vocab.decode(np.concatenate([c.ids for c in ds.iter_chunks(5000)]))
    want = []
    for line in (PTB / "ptb.valid.txt").read_text().split("\n")[:-1]:
        want += line.split() + ["<eos>"]
    assert words == want
    for s in m["shards"]:
        md = pq.ParquetFile(tmp_path / "v" / s["file"]).metadata
        assert md.schema.to_arrow_schema().field("token_id").type == pa.int32()
        assert all(md.row_group(i).num_rows <= 4096 for i in range(md.num_row_groups))


# ------------------------------------------------------------------ prepare --
def test_multiple_inputs_docs_and_compression(tmp_path):
    a = tmp_path / "a.txt.gz"
    a.write_bytes(gzip.compress(b"x y\n\nz\n"))
    b = tmp_path / "b.txt"
    b.write_text("y y\n")
    m = prepare([str(a), str(b)], tmp_path / "o", docs="blank-line")
    ds = open_dataset(tmp_path / "o")
    chunks = list(ds.iter_chunks(100))
    assert ds.vocab.decode(chunks[0].ids) == ["x", "y", "<eos>", "z", "<eos>", "y", "y", "<eos>"]
    # each input file starts a document
    assert np.flatnonzero(chunks[0].doc_start).tolist() == [0, 3, 5]
    assert [s["tokens"] for s in m["sources"]] == [5, 3]
    assert [s["lines"] for s in m["sources"]] == [3, 1]
    assert ds.vocab.words == ["<unk>", "<eos>", "y", "x", "z"]


def test_lines_and_vocabulary_with_a_line_longer_than_a_block(tmp_path):
    """A line longer than a block comes in pieces; prepare still counts it as one
    line and its words once (as the line-by-line reader does)."""
    long_line = " ".join(f"w{i % 5000}" for i in range(300_000))  # ~2 MiB
    t = tmp_path / "t.txt"
    t.write_text("a b\n\n" + long_line + "\n\u00e9 a\nlast")
    m = prepare([str(t)], tmp_path / "o")
    assert [s["lines"] for s in m["sources"]] == [5]
    counts = Counter(w for piece in per_line_pieces(t) for w in piece.words)
    assert open_dataset(tmp_path / "o").vocab.words == Vocab.build(counts).words
    assert m["num_tokens"] == sum(counts.values()) + 5


def test_rerun_replaces_old_shards(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("a b c d e f\n" * 10)
    out = tmp_path / "o"
    prepare([str(t)], out, shard_tokens=10)
    assert len(list(out.glob("shard-*.parquet"))) == 7
    t.write_text("a b\n")
    prepare([str(t)], out, shard_tokens=10)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.parquet",
                                                     "vocab.txt"]
    assert open_dataset(out).num_tokens == 3


def test_interrupted_publish_leaves_no_dataset(tmp_path, monkeypatch):
    t = tmp_path / "t.txt"
    t.write_text("a b c\n" * 10)
    out = tmp_path / "o"
    prepare([str(t)], out)
    assert open_dataset(out).num_tokens == 40

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "atomic_open", boom)  # dies just before the manifest
    with pytest.raises(KeyboardInterrupt):
        prepare([str(t)], out)
    with pytest.raises(InputError, match="incomplete"):
        open_dataset(out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # staging removed


def test_failure_before_publish_keeps_old_dataset(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("a b c\n")
    out = tmp_path / "o"
    prepare([str(t)], out)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n" * 100 + b"\xff\n")
    with pytest.raises(InputError, match=r"bad\.txt: line 101, byte 300: invalid UTF-8"):
        prepare([str(t), str(bad)], out)
    assert open_dataset(out, verify=True).num_tokens == 4
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.parquet",
                                                     "vocab.txt"]


def test_usage_errors(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("a\n")
    with pytest.raises(UsageError):
        prepare([str(t)], tmp_path / "o", docs="paragraph")
    with pytest.raises(UsageError):
        prepare([str(t)], tmp_path / "o", vocab_path=t, vocab_size=5)
    with pytest.raises(UsageError):
        prepare(["-", "-"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- CLI --
def test_cli_prepare_json_and_stdin(tmp_path):
    rc, out, err = cli("prepare", "-", "--out", tmp_path / "o", "--json",
                       stdin=b"the cat\nthe dog\n")
    assert rc == 0, err
    m = json.loads(out)
    assert m["num_tokens"] == 6 and m["vocab"]["size"] == 5
    assert m["sources"][0]["path"] == "<stdin>"
    rc, out, err = cli("prepare", "-", "--out", tmp_path / "o2", "--vocab",
                       tmp_path / "o" / "vocab.txt", "--docs", "blank-line",
                       stdin=b"the bird\n\nthe cat\n")
    assert rc == 0, err
    assert out == "" and "6 tokens" in err
    ds = open_dataset(tmp_path / "o2")
    assert ds.vocab.decode(ds.read(0, 6)) == ["the", "<unk>", "<eos>", "the", "cat", "<eos>"]
    assert ds.read_doc_start(0, 6).tolist() == [True, False, False, True, False, False]


def test_cli_bad_text_inputs(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a b\n")
    blob = gzip.compress(b"".join(b"w%d x\n" % i for i in range(40000)))
    trunc = tmp_path / "trunc.txt.gz"
    trunc.write_bytes(blob[: len(blob) // 2])
    utf = tmp_path / "utf.txt"
    utf.write_bytes(b"fine\nbad \xc3( here\n")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n\n")
    badvocab = tmp_path / "v.txt"
    badvocab.write_text("<unk>\na\n")
    cases = [
        ([trunc], ["trunc.txt.gz", "corrupt or truncated"]),
        ([utf], ["utf.txt", "line 2, byte 9", "invalid UTF-8"]),
        ([tmp_path / "missing.txt"], ["missing.txt", "no such file"]),
        ([empty, "--docs", "blank-line"], ["empty.txt", "no tokens"]),
        ([good, "--vocab", badvocab], ["v.txt", "<eos>"]),
        ([tmp_path], ["is a directory"]),
    ]
    for k, (args, needles) in enumerate(cases):
        out = tmp_path / f"out{k}"
        rc, so, err = cli("-q", "prepare", *args, "--out", out)
        assert_one_error_line(rc, err, *needles)
        assert rc == 2
        assert so == ""
        assert not out.exists(), args  # no partial output
    # without -q, progress lines come first but the error is still exactly one line
    rc, so, err = cli("prepare", utf, "--out", tmp_path / "x")
    assert rc == 2 and [ln for ln in err.splitlines() if "error" in ln] == [
        f"streamlm: error: {utf}: line 2, byte 9: invalid UTF-8 (invalid continuation byte)"]


def test_bad_dataset_errors_are_one_line(tmp_path):
    """Reader errors through the CLI's error path (main() prints StreamlmError)."""
    pq.write_table(pa.table({"token_id": pa.array([1, None, 3], pa.int32())}),
                   tmp_path / "n.parquet")
    code = ("import sys; from streamlm.cli.app import main, app\n"
            "from streamlm.data.shards import open_dataset\n"
            "@app.command('peek')\n"
            "def peek(path: str, v: int = 10):\n"
            "    ds = open_dataset(path, vocab_size=v); list(ds.iter_chunks(100))\n"
            "main(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", code, "peek", str(tmp_path / "n.parquet")],
                       check=False, capture_output=True, timeout=120, text=True)
    assert_one_error_line(r.returncode, r.stderr, "n.parquet", "row group 0, row 1", "null")


def test_prepare_from_a_named_pipe_equals_the_file(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(helpers.markov_text(300, seed=3, words=["a", "b", "c", "d", "e"]))
    rc, _, err = cli("prepare", src, "--out", tmp_path / "f")
    assert rc == 0, err
    pipe = helpers.fifo(tmp_path / "pipe", src.read_bytes())
    rc, _, err = cli("prepare", pipe, "--out", tmp_path / "p")
    assert rc == 0, err
    assert (tmp_path / "f" / "vocab.txt").read_text() == (tmp_path / "p" / "vocab.txt").read_text()
    np.testing.assert_array_equal(all_ids(tmp_path / "f"), all_ids(tmp_path / "p"))
