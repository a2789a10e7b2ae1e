"""Scoring on a Dask LocalCluster of 2 workers equals the local scorer."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("distributed")

from helpers import run  # noqa: E402

from streamlm.data.vocab import Vocab  # noqa: E402
from streamlm.jobs.distributed import output_name, score_dask  # noqa: E402
from streamlm.jobs.prepare import prepare  # noqa: E402
from streamlm.jobs.score import score  # noqa: E402
from streamlm.nn.params import ModelConfig, Params, save_model  # noqa: E402

WORDS = "the cat sat on a mat and dog ran to big red house".split()


def _text(rng, lines):
    out = []
    for _ in range(lines):
        n = int(rng.integers(0, 9))
        out.append(" ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)))
    out[len(out) // 2] += " zebra"  # an OOV
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    rng = np.random.default_rng(0)
    vocab = Vocab(["<unk>", "<eos>"] + WORDS)
    model = d / "m.npz"
    p = Params.init(ModelConfig(V=len(vocab), D=6, H=8), seed=1)
    p["affine_b"][...] = rng.standard_normal(len(vocab)).astype(np.float32)
    save_model(model, p, vocab.words)
    inputs = []
    for k in range(3):
        f = d / f"part-{k}.txt"
        f.write_text(_text(rng, 40 + 10 * k))
        inputs.append(str(f))
    vocab.save(d / "vocab.txt")
    shard_src = d / "shard-src.txt"
    shard_src.write_text(_text(rng, 30))
    prepare([str(shard_src)], d / "prepared", vocab_path=str(d / "vocab.txt"))
    inputs.append(str(d / "prepared"))
    return d, str(model), inputs


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(c)
    yield c.scheduler_address
    client.close()
    c.close()


def test_dask_totals_and_outputs_equal_local(setup, cluster, tmp_path):
    d, model, inputs = setup
    out = tmp_path / "out"
    res = score_dask(model, inputs, cluster, output_dir=str(out), level="line")
    assert not res.failed and res.skipped == 0
    local = score(model, inputs, engine="numba").summary
    s = res.summary
    assert s["tokens"] == local["tokens"] > 0
    assert s["oov"] == local["oov"] > 0
    assert math.isclose(s["logprob"], local["logprob"], rel_tol=1e-9)
    assert math.isclose(s["perplexity"], local["perplexity"], rel_tol=1e-9)
    assert math.isclose(s["perplexity_excl_oov"], local["perplexity_excl_oov"], rel_tol=1e-9)
    # per-shard outputs equal the local per-input outputs
    for p in inputs:
        want = tmp_path / f"local-{output_name(p)}.parquet"
        score(model, [p], level="line", output=str(want), engine="numba")
        got = pq.read_table(out / f"{output_name(p)}.parquet")
        exp = pq.read_table(want)
        assert got.column_names == exp.column_names
        for col in got.column_names:
            a, b = got[col].to_pylist(), exp[col].to_pylist()
            if col in ("logprob", "perplexity", "log10prob"):
                np.testing.assert_allclose(a, b, rtol=1e-9)
            else:
                assert a == b, col
        done = json.loads((out / f"{output_name(p)}.done.json").read_text())
        assert done["sums"]["tokens"] == got.num_rows or done["sums"]["tokens"] > 0


def test_a_class_softmax_model_on_dask_equals_local(setup, cluster, tmp_path):
    from streamlm.nn.classes import WordClasses

    d, _, inputs = setup
    vocab = Vocab(["<unk>", "<eos>"] + WORDS)
    cl = WordClasses((np.arange(len(vocab)) % 4).astype(np.int32))
    p = Params.init(ModelConfig(V=len(vocab), D=6, H=8, softmax="class", C=4), seed=2,
                    classes=cl)
    model = str(tmp_path / "c.npz")
    save_model(model, p, vocab.words)
    res = score_dask(model, inputs, cluster, output_dir=str(tmp_path / "out"), reset="line")
    assert not res.failed
    local = score(model, inputs, engine="numba", reset="line").summary
    assert res.summary["tokens"] == local["tokens"] > 0
    assert math.isclose(res.summary["logprob"], local["logprob"], rel_tol=1e-9)


def test_dask_rerun_skips_verified_outputs_and_redoes_damaged(setup, cluster, tmp_path):
    d, model, inputs = setup
    out = tmp_path / "out"
    first = score_dask(model, inputs, cluster, output_dir=str(out))
    again = score_dask(model, inputs, cluster, output_dir=str(out))
    assert again.skipped == len(inputs)
    assert again.summary["logprob"] == first.summary["logprob"]
    # damage one output: it is scored again, the others are skipped
    victim = out / f"{output_name(inputs[1])}.parquet"
    victim.write_bytes(victim.read_bytes()[:-10])
    third = score_dask(model, inputs, cluster, output_dir=str(out))
    assert third.skipped == len(inputs) - 1
    assert math.isclose(third.summary["logprob"], first.summary["logprob"], rel_tol=1e-12)
    pq.read_table(victim)  # whole again


def test_dask_failed_shard_is_reported_and_others_finish(setup, cluster, tmp_path):
    d, model, inputs = setup
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the cat\n\xff\xfe sat\n")
    out = tmp_path / "out"
    res = score_dask(model, [inputs[0], str(bad), inputs[2]], cluster, output_dir=str(out))
    assert len(res.failed) == 1
    assert str(bad) in res.failed[0]["error"] and "UTF-8" in res.failed[0]["error"]
    assert len(res.summary["inputs"]) == 2
    assert not (out / f"{output_name(str(bad))}.parquet").exists()
    assert (out / f"{output_name(inputs[2])}.parquet").exists()


def test_cli_dask_local_cluster(setup, tmp_path):
    d, model, inputs = setup
    r = run("score", model, *inputs[:2], "--dask", "local:2", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    local = score(model, inputs[:2], engine="numba").summary
    assert got["tokens"] == local["tokens"]
    assert math.isclose(got["logprob"], local["logprob"], rel_tol=1e-9)


def test_documents_on_dask_equal_local(setup, cluster, tmp_path):
    """JSONL and Parquet documents, one task each: per-document records equal the
    local scorer's, the kept column included."""
    import pyarrow as pa

    d, model, _ = setup
    rng = np.random.default_rng(7)
    docs = [_text(rng, int(rng.integers(1, 4))).strip() for _ in range(25)]
    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in enumerate(docs)))
    pqf = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(25)), "text": docs}), pqf, row_group_size=6)
    inputs = [str(jl), str(pqf)]
    out = tmp_path / "out"
    res = score_dask(model, inputs, cluster, output_dir=str(out), keep=("id",))
    assert not res.failed
    for p in inputs:
        got = pq.read_table(out / f"{output_name(p)}.parquet").to_pylist()
        want = tmp_path / "want.parquet"
        score(model, [p], output=want, engine="numba", keep="id")
        exp = pq.read_table(want).to_pylist()
        assert [r["row"] for r in got] == list(range(25)) == [r["id"] for r in got]
        assert [r["logprob"] for r in got] == pytest.approx([r["logprob"] for r in exp],
                                                            rel=1e-9)


def test_a_subword_model_on_dask_equals_local(setup, cluster, tmp_path):
    pytest.importorskip("sentencepiece")
    d, _, inputs = setup
    texts = inputs[:3]
    prepare(texts, tmp_path / "sp", tokenizer="sentencepiece", pieces=300)
    proto = (tmp_path / "sp" / "tokenizer.model").read_bytes()
    pieces = (tmp_path / "sp" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    p = Params.init(ModelConfig(V=len(pieces), D=6, H=8), seed=3)
    model = str(tmp_path / "sp.npz")
    save_model(model, p, pieces, tokenizer=proto)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n"
                            for t in open(texts[0]).read().split("\n\n")[:10]))
    ins = [*texts, str(docs)]
    # reset "none": "auto" would reset at documents on Dask (docs.jsonl alone), not here
    res = score_dask(model, ins, cluster, output_dir=str(tmp_path / "out"), reset="none")
    assert not res.failed
    local = score(model, ins, engine="numba", reset="none").summary
    s = res.summary
    assert s["oov"] == local["oov"] == 0
    for k in ("tokens", "words", "bytes"):
        assert s[k] == local[k] > 0, k
    assert s["tokens"] > s["words"]
    for k in ("logprob", "word_perplexity", "bits_per_byte"):
        assert math.isclose(s[k], local[k], rel_tol=1e-9), k
