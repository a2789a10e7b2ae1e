"""Documents as rows: JSONL and Parquet corpora in, row-aligned scores out, buckets.

The reference for a document's score is the same text scored as a plain file
with documents at blank lines (``--reset doc --level doc``): a JSONL record, a
Parquet row and a text document must give the very same numbers.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line, cli

from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError
from streamlm.jobs.report import assign, bucket_labels, load_cutoffs
from streamlm.jobs.score import score
from streamlm.nn.params import ModelConfig, Params, save_model
from streamlm.options import ScoreOptions

WORDS = "the cat sat on a mat and dog ran to big red house".split()


def _docs(n: int, seed: int = 0) -> list[str]:
    """n documents of 1-4 lines of 2-9 words (some with OOVs, one empty)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lines = []
        for _ in range(int(rng.integers(1, 5))):
            words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(2, 10)))]
            if rng.random() < 0.2:
                words[0] = "zebra"  # an OOV
            lines.append(" ".join(words))
        out.append("\n".join(lines))
    out[3] = ""  # an empty document: a record with 0 tokens
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    vocab = Vocab.build(Counter(WORDS))
    save_model(d / "m.npz", Params.init(ModelConfig(len(vocab), 6, 7), seed=3), vocab.words)
    docs = _docs(40)
    ids = [f"doc-{k:03d}" for k in range(len(docs))]
    urls = [f"https://example.org/{k}" for k in range(len(docs))]
    with open(d / "c.jsonl", "w", encoding="utf-8") as f:
        for i, u, t in zip(ids, urls, docs):
            f.write(json.dumps({"id": i, "url": u, "meta": {"lang": "en"}, "text": t}) + "\n")
    pq.write_table(pa.table({"id": ids, "url": urls, "text": docs}), d / "c.parquet",
                   row_group_size=7)
    # the same documents as text: blank lines between them (the empty one disappears)
    (d / "c.txt").write_text("\n\n".join(t for t in docs if t) + "\n")
    return {"dir": d, "model": d / "m.npz", "docs": docs, "ids": ids, "vocab": vocab}


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ inputs --
@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_jsonl_parquet_and_text_documents_score_the_same(corpus, tmp_path, engine):
    d = corpus["dir"]
    got = {}
    for name in ("c.jsonl", "c.parquet"):
        out = tmp_path / f"{name}.parquet"
        r = score(corpus["model"], [d / name], output=out, engine=engine).summary
        assert r["reset"] == "doc" and r["level"] == "doc"  # auto: documents reset
        got[name] = _rows(out)
        assert r["rows"] == 40 and r["skipped_rows"] == 0
    a, b = got["c.jsonl"], got["c.parquet"]
    assert [x["row"] for x in a] == list(range(40)) == [x["row"] for x in b]
    for x, y in zip(a, b):  # identical, not close
        assert (x["tokens"], x["oov"], x["logprob"]) == (y["tokens"], y["oov"], y["logprob"])
    assert a[3]["tokens"] == 0 and a[3]["perplexity"] is None  # the empty document
    out = tmp_path / "t.parquet"
    score(corpus["model"], [d / "c.txt"], output=out, reset="doc", engine=engine)
    text = [x for x in _rows(out)]
    nonempty = [x for x in a if x["tokens"]]
    assert len(text) == len(nonempty)
    for x, y in zip(nonempty, text):
        assert x["tokens"] == y["tokens"] and x["logprob"] == pytest.approx(y["logprob"],
                                                                             rel=1e-12)
    # a document's tokens: its words plus one <eos> per line
    docs = corpus["docs"]
    assert [x["tokens"] for x in a] == [len(t.split()) + t.count("\n") + 1 if t else 0
                                        for t in docs]


def test_token_id_lists_are_one_document_per_row(corpus, tmp_path):
    v = corpus["vocab"]
    docs = [t for t in corpus["docs"] if t]
    rows = [[v.index.get(w, v.unk_id) for line in t.split("\n") for w in [*line.split(),
                                                                           "<eos>"]]
            for t in docs]
    p = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(rows, pa.list_(pa.int32()))}), p)
    a = score(corpus["model"], [p], output=tmp_path / "a.jsonl", engine="numba")
    b = score(corpus["model"], [corpus["dir"] / "c.txt"], output=tmp_path / "b.jsonl",
              reset="doc", engine="numba")
    assert a.summary["tokens"] == b.summary["tokens"] == sum(map(len, rows))
    ra, rb = _rows(tmp_path / "a.jsonl"), _rows(tmp_path / "b.jsonl")
    assert [x["tokens"] for x in ra] == [len(r) for r in rows]
    assert [x["logprob"] for x in ra] == pytest.approx([x["logprob"] for x in rb], rel=1e-12)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2], [3, len(v)]],
                                                   pa.list_(pa.int32()))}), bad)
    with pytest.raises(InputError, match=r"row 1.*outside"):
        score(corpus["model"], [bad])


def test_text_field_paths_compression_and_skipped_rows(corpus, tmp_path):
    d = corpus["dir"]
    base = score(corpus["model"], [d / "c.jsonl"]).summary
    nested = tmp_path / "n.jsonl.gz"
    with gzip.open(nested, "wt") as f:
        for line in (d / "c.jsonl").read_text().splitlines():
            o = json.loads(line)
            f.write(json.dumps({"doc": {"body": o["text"]}}) + "\n")
    r = score(corpus["model"], [nested], text_field="doc.body").summary
    assert r["logprob"] == base["logprob"] and r["tokens"] == base["tokens"]
    pytest.importorskip("pyarrow").Codec.is_available("zstd") or pytest.skip("no zstd")
    zst = tmp_path / "c.jsonl.zst"
    with pa.CompressedOutputStream(str(zst), "zstd") as f:
        f.write((d / "c.jsonl").read_bytes())
    assert score(corpus["model"], [zst]).summary["logprob"] == base["logprob"]
    # bad rows: strict fails naming the line; skip drops and counts them
    lines = (d / "c.jsonl").read_text().splitlines()
    lines[5] = "{not json"
    lines[9] = json.dumps({"id": "x"})
    messy = tmp_path / "messy.jsonl"
    messy.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="line 6.*invalid JSON"):
        score(corpus["model"], [messy])
    out = tmp_path / "s.jsonl"
    r = score(corpus["model"], [messy], errors="skip", output=out, keep="id").summary
    assert r["skipped_rows"] == 2 and r["rows"] == 40
    recs = _rows(out)
    assert [x["row"] for x in recs] == [k for k in range(40) if k not in (5, 9)]
    assert [x["id"] for x in recs] == [corpus["ids"][k] for k in range(40) if k not in (5, 9)]


def test_directories_and_globs_of_documents_in_sorted_order(corpus, tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    lines = (corpus["dir"] / "c.jsonl").read_text().splitlines()
    for k, name in enumerate(["b.jsonl", "a.jsonl", "c.jsonl"]):
        (d / name).write_text("\n".join(lines[10 * k:10 * k + 10]) + "\n")
    r = score(corpus["model"], [d]).summary
    assert [Path(x["path"]).name for x in r["inputs"]] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    g = score(corpus["model"], [str(d / "*.jsonl")]).summary
    assert g["logprob"] == r["logprob"] and len(g["inputs"]) == 3
    with pytest.raises(UsageError, match="no file matches"):
        score(corpus["model"], [str(d / "*.parquet")])


def test_prepare_reads_documents(corpus, tmp_path):
    from streamlm.data.shards import open_dataset

    d = corpus["dir"]
    vocab = tmp_path / "vocab.txt"
    corpus["vocab"].save(vocab)
    got = {}
    for name, extra in (("c.jsonl", []), ("c.parquet", []), ("c.txt", ["--docs", "blank-line"])):
        out = tmp_path / name.replace(".", "_")
        rc, _, err = cli("prepare", d / name, "--out", out, "--vocab", vocab, "-q", *extra)
        assert rc == 0, err
        ds = open_dataset(out)
        got[name] = (ds.read(0, ds.num_tokens), ds.read_doc_start(0, ds.num_tokens))
    for name in ("c.jsonl", "c.parquet"):
        assert np.array_equal(got[name][0], got["c.txt"][0])
        assert np.array_equal(got[name][1], got["c.txt"][1])
    m = json.loads((tmp_path / "c_jsonl" / "manifest.json").read_text())
    assert m["docs"] == "rows" and m["sources"][0]["rows"] == 40


# ----------------------------------------------------------------- outputs --
def test_keep_and_a_duckdb_join_back_to_the_corpus(corpus, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    d = corpus["dir"]
    out = tmp_path / "scores.parquet"
    rc, _, err = cli("score", corpus["model"], d / "c.parquet", "--output", out, "--keep",
                     "id,url", "-q")
    assert rc == 0, err
    con = duckdb.connect()
    n, ids = con.execute(
        f"SELECT count(*), list(c.id ORDER BY s.row) FROM '{d / 'c.parquet'}' c "
        f"JOIN '{out}' s USING (id)").fetchone()
    assert n == 40 and ids == corpus["ids"]
    (bad,) = con.execute(f"SELECT count(*) FROM '{out}' s JOIN '{d / 'c.parquet'}' c "
                         "ON s.id = c.id WHERE s.url <> c.url").fetchone()
    assert bad == 0
    with pytest.raises(InputError, match="no column 'nope'"):
        score(corpus["model"], [d / "c.parquet"], output=tmp_path / "x.parquet", keep="nope")


def test_level_follows_reset_and_suffix_sets_format(corpus, tmp_path):
    d = corpus["dir"]
    score(corpus["model"], [d / "c.txt"], output=tmp_path / "l.jsonl")
    assert "index" in _rows(tmp_path / "l.jsonl")[0]  # text: line records by default
    n_lines = (d / "c.txt").read_text().count("\n")
    assert len(_rows(tmp_path / "l.jsonl")) == n_lines
    score(corpus["model"], [d / "c.jsonl"], output=tmp_path / "d.csv")
    from pyarrow import csv

    t = csv.read_csv(tmp_path / "d.csv")
    assert t.num_rows == 40 and "perplexity_excl_oov" in t.column_names
    with pytest.raises(UsageError, match=r"\.parquet, \.jsonl"):
        score(corpus["model"], [d / "c.jsonl"], output=tmp_path / "x.tsv")
    with pytest.raises(UsageError, match="also an input"):
        score(corpus["model"], [d / "c.jsonl"], output=d / "c.jsonl")


def test_word_records_keep_the_surface_word_and_positions(corpus, tmp_path):
    t = tmp_path / "w.txt"
    t.write_text("the zebra sat\nnew cat\n")
    score(corpus["model"], [t], output=tmp_path / "w.jsonl", level="word")
    recs = _rows(tmp_path / "w.jsonl")
    assert [r["word"] for r in recs] == ["the", "zebra", "sat", "<eos>", "new", "cat", "<eos>"]
    assert [r["token"] for r in recs] == ["the", "<unk>", "sat", "<eos>", "<unk>", "cat",
                                          "<eos>"]
    assert [r["position_in_line"] for r in recs] == [0, 1, 2, 3, 0, 1, 2]
    assert [r["position"] for r in recs] == list(range(7))


# (standard output and special files: tests/test_outputs.py)


# ------------------------------------------------------- buckets and report --
def test_buckets_follow_ccnet():
    assert bucket_labels(2) == ["head", "middle", "tail"]
    v = np.array([1.0, 10.0, 10.5, 20.0, 30.0, np.nan])
    assert assign(v, [10.0, 20.0]).tolist() == [0, 1, 1, 2, 2, 2]  # equal: the bucket above


def test_report_cutoffs_and_split_buckets(corpus, tmp_path):
    d = corpus["dir"]
    scores = tmp_path / "s.parquet"
    score(corpus["model"], [d / "c.jsonl"], output=scores, keep="id")
    cut = tmp_path / "cut.json"
    rc, out, err = cli("report", scores, "--cutoffs", cut, "--json", "--percentiles", "95")
    assert rc == 0, err
    rep = json.loads(out)
    recs = _rows(scores)
    ppl = np.array([r["perplexity"] for r in recs if r["perplexity"] is not None])
    assert rep["documents"] == 40 and rep["empty_documents"] == 1
    assert rep["percentiles"]["p50"] == pytest.approx(float(np.median(ppl)))
    assert rep["percentiles"]["p95"] == pytest.approx(float(np.percentile(ppl, 95)))
    lp = sum(r["logprob"] for r in recs)
    tok = sum(r["tokens"] for r in recs)
    assert rep["perplexity"] == pytest.approx(np.exp(-lp / tok))
    assert rep["oov_rate"] == pytest.approx(sum(r["oov"] for r in recs) / tok)
    c = load_cutoffs(cut)
    assert list(c.values) == pytest.approx(list(np.percentile(ppl, [30, 60])))
    assert sum(rep["buckets"].values()) == 40

    for src in ("c.jsonl", "c.parquet"):
        split = tmp_path / f"split-{src}"
        out = tmp_path / f"b-{src}.jsonl"
        score(corpus["model"], [d / src], output=out, cutoffs=c.values, split_buckets=split)
        recs = _rows(out)
        counts = Counter(r["bucket"] for r in recs)
        assert dict(counts) == {k: v for k, v in rep["buckets"].items() if v}
        ext = ".jsonl" if src.endswith("jsonl") else ".parquet"
        originals = (d / "c.jsonl").read_text().splitlines()
        for lab in ("head", "middle", "tail"):
            f = split / (lab + ext)
            want = [k for k, r in enumerate(recs) if r["bucket"] == lab]
            if ext == ".jsonl":  # the lines themselves, unchanged, in input order
                assert f.read_text().splitlines() == [originals[k] for k in want]
            else:  # every column, unchanged, in input order
                t = pq.read_table(f)
                assert t.column_names == ["id", "url", "text"]
                assert t.column("id").to_pylist() == [corpus["ids"][k] for k in want]
                assert t.column("text").to_pylist() == [corpus["docs"][k] for k in want]
    with pytest.raises(UsageError, match="needs --cutoffs"):
        score(corpus["model"], [d / "c.jsonl"], split_buckets=tmp_path / "x")
    with pytest.raises(UsageError, match="not documents"):
        score(corpus["model"], [d / "c.txt"], cutoffs=c.values, split_buckets=tmp_path / "x")


def test_report_plot_and_bad_score_files(corpus, tmp_path):
    pytest.importorskip("matplotlib")
    scores = tmp_path / "s.jsonl"
    score(corpus["model"], [corpus["dir"] / "c.jsonl"], output=scores)
    png = tmp_path / "h.png"
    rc, out, err = cli("report", scores, "--plot", png)
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "head" in out
    words = tmp_path / "w.parquet"
    score(corpus["model"], [corpus["dir"] / "c.jsonl"], output=words, level="word")
    rc, _, err = cli("report", words)
    assert_one_error_line(rc, err, "w.parquet", "per-word")


# ------------------------------------------------ what users see while it runs --
def test_oov_warning_names_the_input_and_its_rate(corpus, tmp_path):
    foreign = tmp_path / "ko.txt"
    foreign.write_text("고양이 가 매트 위에 앉았다\n개 가 달렸다 the cat\n")
    rc, out, err = cli("score", corpus["model"], foreign, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["oov_rate"] == pytest.approx(8 / 12) == s["inputs"][0]["oov_rate"]
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "ko.txt" in warn[0] and "66.7%" in warn[0]
    assert "excluding OOVs" in warn[0] and "rewards" in warn[0]
    rc, out, err = cli("score", corpus["model"], foreign, "--json", "--max-oov-rate", "1")
    assert rc == 0 and "warning" not in err


def test_progress_lines_give_percent_and_eta(corpus, tmp_path, caplog):
    import logging

    from streamlm.cli.progress import ScoreProgress

    big = tmp_path / "big.txt"
    big.write_text("the cat sat on a mat\n" * 50_000)
    with caplog.at_level(logging.INFO, logger="streamlm"), \
            ScoreProgress(True, tty=False, every_s=0.0) as cb:
        score(corpus["model"], [big], progress=cb, engine="numpy", chunk_tokens=512, batch=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("score:")]
    assert lines and all("tok/s" in ln for ln in lines)
    pct = [float(ln.split("%")[0].split()[-1]) for ln in lines if "ETA" in ln]
    assert pct and pct == sorted(pct) and pct[-1] <= 100.0


def test_checkpoints_by_time(corpus, tmp_path, monkeypatch):
    from streamlm.jobs.checkpoint import ScoreCheckpoint

    now = [0.0]
    ck = ScoreCheckpoint(str(tmp_path / "c.npz"), "5m", {}, clock=lambda: now[0])
    assert not ck.due(10**9)  # tokens do not matter
    now[0] = 299.0
    assert not ck.due(1)
    now[0] = 300.0
    assert ck.due(1)
    assert ScoreCheckpoint(str(tmp_path / "c.npz"), "1000", {}).every_tokens == 1000
    for bad in ("0s", "-5m", "soon", "1.5"):
        with pytest.raises(UsageError, match="checkpoint-every"):
            ScoreOptions(checkpoint_every=bad)


def test_small_stdin_starts_on_numpy(corpus):
    rc, out, err = cli("score", corpus["model"], "-", "--json", stdin=b"the cat sat\n")
    assert rc == 0, err
    assert json.loads(out)["engine"] == "numpy"
    big = ("the cat sat on a mat\n" * 20_000).encode()  # 420 kB: past the read-ahead
    rc, out, err = cli("score", corpus["model"], "-", "--json", stdin=big)
    assert rc == 0, err
    s = json.loads(out)
    assert s["engine"] == "numba" and s["tokens"] == 7 * 20_000
