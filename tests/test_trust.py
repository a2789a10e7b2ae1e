"""No silent wrong result (issue 24): what streamlm cannot check, or did not score, it
says, through the installed CLI in a subprocess.

* token ids of another vocabulary than the model's: a prepared directory, one of its
  shard files, a quoted glob of them, several files, the Dask path and ``train``:
  all refused (exit 2, one line naming the file and the model); ids with nothing
  beside them to check: one warning line;
* ``--keep`` a field that no JSONL record has: an error, as on Parquet, before any
  output;
* rows skipped as bad (``--errors skip``): a warning line with the count and the
  first (where and why), and a line of the text summary;
* an input with no tokens: exit 0, and a warning line naming it.

Expected lines are spelled out here; the sha256 prefixes in them are computed here
from the words, with hashlib.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line, cli

from streamlm.data.vocab import Vocab
from streamlm.jobs.prepare import prepare
from streamlm.nn.params import ModelConfig, Params, save_model

WORDS = "the cat sat on a mat and dog ran to big red house".split()


def sha12(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()[:12]


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A model, its vocabulary's shards ("same"), the same text prepared with the same
    words in another order ("other", the issue's shuffled vocabulary), and shard files
    with nothing beside them ("raw")."""
    d = tmp_path_factory.mktemp("trust")
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(2, 9)))
                     for _ in range(300)) + "\n"
    (d / "a.txt").write_text(text)
    vocab = Vocab.build(Counter(text.split()))
    vocab.save(d / "v.txt")
    save_model(d / "m.npz", Params.init(ModelConfig(len(vocab), 6, 7), seed=3), vocab.words)
    shuffled = vocab.words[2:]
    random.Random(1).shuffle(shuffled)
    other = ["<unk>", "<eos>", *shuffled]
    assert other != vocab.words
    Vocab(other).save(d / "shuffled.txt")
    prepare([str(d / "a.txt")], d / "same", vocab_path=str(d / "v.txt"), shard_tokens=500)
    prepare([str(d / "a.txt")], d / "other", vocab_path=str(d / "shuffled.txt"),
            shard_tokens=500)
    (d / "raw").mkdir()
    for k in range(2):
        shutil.copy(d / "other" / f"shard-0000{k}.parquet", d / "raw")
    return {"dir": d, "model": str(d / "m.npz"), "words": vocab.words, "other": other}


def mismatch(s: dict, path: str, where: str, owner: str | None = None) -> str:
    owner = owner or f"the model {s['model']}"
    n = len(s["words"])
    return (f"streamlm: error: {path}: {owner}'s vocabulary ({n} words, sha256 "
            f"{sha12(s['words'])}…) differs from the dataset's ({where}: {n} words, "
            f"{sha12(s['other'])}…)")


def unchecked(first: str, owner: str, more: int = 0,
              why: str = "no manifest.json beside it") -> str:
    also = f" (and {more} more file{'s' if more > 1 else ''})" if more else ""
    return (f"warning: {first}{also}: cannot check the vocabulary of its token ids: {why}; "
            f"the ids are taken as {owner}'s")


# --------------------------------------------------------- vocabularies --
@pytest.mark.parametrize("form", ["directory", "file", "glob", "files"])
def test_shards_of_another_vocabulary_are_refused_however_named(shards, form):
    o = shards["dir"] / "other"
    args, named = {
        "directory": ([str(o)], str(o)),
        "file": ([str(o / "shard-00000.parquet")], str(o / "shard-00000.parquet")),
        "glob": ([str(o / "shard-0000*")], str(o / "shard-00000.parquet")),  # quoted
        "files": ([str(o / "shard-00001.parquet"), str(o / "shard-00000.parquet")],
                  str(o / "shard-00001.parquet")),
    }[form]
    rc, out, err = cli("score", shards["model"], *args, "--json")
    assert rc == 2 and out == ""
    assert_one_error_line(rc, err)
    assert err.strip() == mismatch(shards, named, str(o / "manifest.json"))


def test_shards_of_the_models_vocabulary_score_without_a_word(shards):
    s = shards["dir"] / "same"
    rc, out, err = cli("score", shards["model"], s / "shard-00000.parquet",
                       str(s / "shard-0000[12].parquet"), "--json")
    assert rc == 0, err
    assert warnings(err) == []
    assert json.loads(out)["tokens"] == 1500


def test_ids_with_nothing_beside_them_are_scored_with_one_warning(shards):
    d, model = shards["dir"], shards["model"]
    one, two = str(d / "raw" / "shard-00000.parquet"), str(d / "raw" / "shard-00001.parquet")
    rc, out, err = cli("score", model, one, "--json")
    assert rc == 0, err
    assert warnings(err) == [unchecked(one, f"the model {model}")]
    assert json.loads(out)["tokens"] == 500
    rc, out, err = cli("score", model, one, two, "--json")  # one line for the job
    assert rc == 0, err
    assert warnings(err) == [unchecked(one, f"the model {model}", more=1)]
    rc, out, err = cli("score", model, d / "raw", "--json")  # a directory of them
    assert rc == 0, err
    assert warnings(err) == [unchecked(one, f"the model {model}", more=1)]


def test_a_vocab_txt_beside_the_ids_is_checked(shards, tmp_path):
    """No manifest, a vocab.txt: it decides; a file the manifest does not list: a
    warning, not its vocabulary."""
    d, model = shards["dir"], shards["model"]
    f = tmp_path / "ids.parquet"
    shutil.copy(d / "raw" / "shard-00000.parquet", f)
    shutil.copy(d / "shuffled.txt", tmp_path / "vocab.txt")
    rc, out, err = cli("score", model, f)
    assert rc == 2 and out == ""
    assert err.strip() == mismatch(shards, str(f), str(tmp_path / "vocab.txt"))
    shutil.copy(d / "v.txt", tmp_path / "vocab.txt")
    rc, out, err = cli("score", model, f, "--json")
    assert rc == 0, err
    assert warnings(err) == []
    g = tmp_path / "p" / "extra.parquet"
    shutil.copytree(d / "same", tmp_path / "p")
    shutil.copy(d / "raw" / "shard-00000.parquet", g)
    rc, out, err = cli("score", model, g, "--json")
    assert rc == 0, err
    assert warnings(err) == [unchecked(str(g), f"the model {model}",
                                       why="the manifest.json beside it does not list it")]


def test_token_id_lists_beside_a_manifest_are_checked(shards, tmp_path):
    """A list<int> column of ids (one document a row): checked as shards are."""
    d = tmp_path / "lists"
    shutil.copytree(shards["dir"] / "other", d)
    ids = pq.read_table(d / "shard-00000.parquet").column("token_id").to_pylist()
    f = d / "docs.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([ids[:40], ids[40:90]],
                                                   pa.list_(pa.int32()))}), f)
    m = json.loads((d / "manifest.json").read_text())
    m["shards"].append(dict(m["shards"][0], file="docs.parquet"))
    (d / "manifest.json").write_text(json.dumps(m))
    rc, out, err = cli("score", shards["model"], f, "--json")
    assert rc == 2 and out == ""
    assert err.strip() == mismatch(shards, str(f), str(d / "manifest.json"))


def test_train_checks_raw_shard_files_against_its_vocab(shards, tmp_path):
    d = shards["dir"]
    v = str(d / "v.txt")
    small = ["--batch", "2", "--bptt", "4", "--epochs", "1", "--embed", "4", "--hidden", "4"]
    f = str(d / "other" / "shard-00000.parquet")
    out = tmp_path / "m.npz"
    rc, so, err = cli("train", f, "--vocab", v, "--out", out, *small)
    assert rc == 2 and so == ""
    assert err.strip() == mismatch(shards, f, str(d / "other" / "manifest.json"),
                                   owner=f"--vocab {v}")
    assert not out.exists()
    raw = str(d / "raw" / "shard-00000.parquet")
    rc, so, err = cli("train", raw, "--vocab", v, "--out", out, *small)
    assert rc == 0, err
    assert warnings(err) == [unchecked(raw, f"--vocab {v}")]
    # valid shards: the training data's vocabulary
    rc, so, err = cli("train", d / "same", "--valid", f, "--out", tmp_path / "m2.npz", *small)
    assert rc == 2
    assert err.strip() == mismatch(shards, f, str(d / "other" / "manifest.json"),
                                   owner=f"the training data {d / 'same'}")


def test_the_dask_path_checks_on_the_client(shards):
    pytest.importorskip("distributed")
    o = shards["dir"] / "other"
    rc, out, err = cli("score", shards["model"], str(o / "shard-0000*"), "--dask", "local:1",
                       "--json")
    assert rc == 2 and out == ""  # before any cluster starts: no Dask log lines either
    assert err.strip() == mismatch(shards, str(o / "shard-00000.parquet"),
                                   str(o / "manifest.json"))
    raw = str(shards["dir"] / "raw" / "shard-00000.parquet")
    rc, out, err = cli("score", shards["model"], raw, "--dask", "local:1", "--json")
    assert rc == 0, err
    assert json.loads(out)["tokens"] == 500
    # said once, by the client (the worker, whose stderr is the same here, does not)
    assert warnings(err) == [unchecked(raw, f"the model {shards['model']}")]


# ---------------------------------------------------------------- --keep --
@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("keep")
    vocab = Vocab.build(Counter(WORDS))
    save_model(d / "m.npz", Params.init(ModelConfig(len(vocab), 4, 5), seed=1), vocab.words)
    recs = [{"id": k, "text": " ".join(WORDS[k:k + 4])} for k in range(8)]
    recs[5]["meta"] = {"title": "five"}  # in one record only
    (d / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    pq.write_table(pa.table({"id": [r["id"] for r in recs], "text": [r["text"] for r in recs]}),
                   d / "d.parquet")
    return d


@pytest.mark.parametrize("output", ["out.parquet", "out.jsonl", "-"])
def test_keep_a_field_no_record_has_is_an_error(docs, tmp_path, output, monkeypatch):
    tmp = tmp_path.parent / f"{tmp_path.name}-tmp"  # the spool's place for stdout
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    out = output if output == "-" else tmp_path / output
    rc, so, err = cli("score", docs / "m.npz", docs / "d.jsonl", "-o", out, "--keep", "id,title")
    assert rc == 2 and so == ""
    assert err.strip() == (f"streamlm: error: {docs / 'd.jsonl'}: no record has a field "
                           "'title' to keep (fields of the first record: id, text)")
    assert sorted(os.listdir(tmp_path)) == [] and os.listdir(tmp) == []  # no output, no spool
    # the same typo on Parquet: an error too, naming the column
    rc, so, err = cli("score", docs / "m.npz", docs / "d.parquet", "-o", out, "--keep",
                      "id,title")
    assert rc == 2 and so == ""
    assert_one_error_line(rc, err, str(docs / "d.parquet"), "'title'")
    assert sorted(os.listdir(tmp_path)) == [] and os.listdir(tmp) == []


def test_keep_a_field_some_records_have_is_null_in_the_others(docs, tmp_path):
    out = tmp_path / "o.jsonl"
    rc, so, err = cli("score", docs / "m.npz", docs / "d.jsonl", "-o", out, "--keep",
                      "id,meta.title")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(8))
    assert [r["meta.title"] for r in rows] == [None] * 5 + ["five"] + [None] * 2


# ---------------------------------------------------------- skipped rows --
def test_skipped_rows_are_said_on_stderr_and_in_the_summary(docs, tmp_path):
    good = [json.dumps({"text": " ".join(WORDS[k:k + 3])}) for k in range(6)]
    bad_json = '{"text": "the cat", oops}'
    try:
        json.loads(bad_json)
    except ValueError as e:
        why = f"invalid JSON ({e.msg})"
    # a blank line first: line numbers are not row numbers
    lines = ["", good[0], good[1], good[2], good[3], "", bad_json, good[4],
             json.dumps({"body": "x"}), good[5]]
    f = tmp_path / "messy.jsonl"
    f.write_text("\n".join(lines) + "\n")
    assert lines[6] == bad_json  # line 7
    rc, out, err = cli("score", docs / "m.npz", f, "--errors", "skip")
    assert rc == 0, err
    assert warnings(err) == [f"warning: {f}: skipped 2 bad rows (first: line 7: {why})"]
    assert "  bad rows skipped          2 (--errors skip)" in out.splitlines()
    rc, out, err = cli("score", docs / "m.npz", f, "--errors", "skip", "--json")
    assert json.loads(out)["skipped_rows"] == 2
    # none skipped: no warning, no summary line
    rc, out, err = cli("score", docs / "m.npz", docs / "d.jsonl", "--errors", "skip")
    assert rc == 0 and warnings(err) == [] and "skipped" not in out
    # Parquet: the row, and why
    p = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["the cat", "a dog", None, "the mat", None]}), p)
    rc, out, err = cli("score", docs / "m.npz", p, "--errors", "skip")
    assert rc == 0, err
    assert warnings(err) == [f"warning: {p}: skipped 2 bad rows (first: row 2: null in "
                             "text column 'text')"]


# ------------------------------------------------------------ no tokens --
def test_an_empty_input_scores_with_a_warning(docs, tmp_path):
    e = tmp_path / "empty.txt"
    e.write_text("")
    rc, out, err = cli("score", docs / "m.npz", e, "--json")
    assert rc == 0, err
    assert json.loads(out)["tokens"] == 0
    assert err.strip() == f"warning: {e}: no tokens to score"
    f = tmp_path / "some.txt"
    f.write_text("the cat\n")
    rc, out, err = cli("score", docs / "m.npz", f, e)
    assert rc == 0, err
    assert warnings(err) == [f"warning: {e}: no tokens to score"]
    rc, out, err = cli("score", docs / "m.npz", f)
    assert rc == 0 and warnings(err) == []
