"""`streamlm score` as a user runs it: subprocesses, one-line errors. (The kill -9 and
resume test is in test_faults.py.)"""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line as one_error_line
from helpers import cli

from streamlm.data.vocab import Vocab
from streamlm.nn.params import ModelConfig, Params, save_model

TRAIN = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"




@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    vocab = Vocab.build(Counter(TRAIN.split()))
    save_model(d / "m.npz", Params.init(ModelConfig(len(vocab), 4, 5), seed=1), vocab.words)
    (d / "a.txt").write_text("the cat sat\nthe zebra\n\nthe dog\n")
    (d / "b.txt").write_text("a cat\n")
    return d


def test_json_is_one_object(env):
    rc, out, err = cli("score", env / "m.npz", env / "a.txt", env / "b.txt", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert out.count("\n") == 1
    for k in ("tokens", "oov", "logprob", "log10prob", "perplexity", "perplexity_excl_oov",
              "bits_per_token"):
        assert k in obj
        assert all(k in d for d in obj["inputs"])
    assert [d["path"] for d in obj["inputs"]] == [str(env / "a.txt"), str(env / "b.txt")]
    assert obj["tokens"] == (3 + 2 + 0 + 2 + 4) + 3 == sum(d["tokens"] for d in obj["inputs"])
    assert obj["oov"] == 1


def test_text_summary_and_stdin(env):
    rc, out, err = cli("score", env / "m.npz", "-", stdin=b"the cat\n")
    assert rc == 0, err
    assert "perplexity incl. OOVs" in out and "perplexity excl. OOVs" in out
    assert "tokens                    3" in out
    rc, out2, _ = cli("score", env / "m.npz", env / "a.txt", "--engine", "numba", "--json")
    rc, out3, _ = cli("score", env / "m.npz", env / "a.txt", "--engine", "numpy", "--json")
    a, b = json.loads(out2), json.loads(out3)
    assert a["logprob"] == pytest.approx(b["logprob"], rel=1e-6)


def test_empty_input_json(env, tmp_path):
    (tmp_path / "e.txt").write_text("")
    rc, out, err = cli("score", env / "m.npz", tmp_path / "e.txt", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["tokens"] == 0 and obj["perplexity"] is None


def test_empty_parquet_scores_zero_tokens_like_empty_text(env, tmp_path):
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"token_id": pa.array([], pa.int32())}), empty)
    rc, out, err = cli("score", env / "m.npz", empty, "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["tokens"] == 0 and obj["perplexity"] is None
    some = tmp_path / "s.parquet"
    pq.write_table(pa.table({"token_id": pa.array([2, 3, 1], pa.int32())}), some)
    rc, out2, err = cli("score", env / "m.npz", empty, some, "--json")
    assert rc == 0, err
    both = json.loads(out2)
    rc, out3, err = cli("score", env / "m.npz", some, "--json")
    assert both["tokens"] == 3 and both["logprob"] == json.loads(out3)["logprob"]
    assert [i["tokens"] for i in both["inputs"]] == [0, 3]


def test_named_pipe_input_scores_like_the_file(env, tmp_path):
    from helpers import fifo

    text = (env / "a.txt").read_bytes()
    rc, out, err = cli("score", env / "m.npz", env / "a.txt", "--json")
    assert rc == 0, err
    want = json.loads(out)
    for name, data in (("p1", text), ("p2", gzip.compress(text))):  # sniffed, not seeked
        rc, out, err = cli("score", env / "m.npz", fifo(tmp_path / name, data), "--json")
        assert rc == 0, err
        got = json.loads(out)
        assert got["tokens"] == want["tokens"] and got["oov"] == want["oov"]
        assert got["logprob"] == pytest.approx(want["logprob"], rel=1e-6)
    rc, out, err = cli("score", env / "m.npz", fifo(tmp_path / "p3", text), "--checkpoint",
                       tmp_path / "c.ckpt")
    one_error_line(rc, err, "--checkpoint", "pipe")


def test_output_parquet(env, tmp_path):
    out = tmp_path / "lines.parquet"
    rc, so, err = cli("score", env / "m.npz", env / "a.txt", "--output", out, "--level",
                      "line", "--reset", "line", "--json")
    assert rc == 0, err
    t = pq.read_table(out).to_pylist()
    assert [r["index"] for r in t] == [0, 1, 2, 3]
    assert sum(r["logprob"] for r in t) == pytest.approx(json.loads(so)["logprob"], rel=1e-9)


@pytest.mark.parametrize("case", ["missing", "utf8", "model", "vocab", "ids", "usage"])
def test_bad_input_one_line(env, tmp_path, case):
    out = tmp_path / "o.jsonl"
    model = env / "m.npz"
    if case == "missing":
        args, needles = [env / "a.txt", tmp_path / "nope.txt"], ["nope.txt", "no such file"]
    elif case == "utf8":
        p = tmp_path / "bad.txt"
        p.write_bytes(b"ok\n" * 3 + b"caf\xe9\n")
        args, needles = [p], ["bad.txt", "line 4", "byte 12", "UTF-8"]
    elif case == "model":
        model = tmp_path / "m.npz"
        model.write_bytes((env / "m.npz").read_bytes()[:-100])
        args, needles = [env / "a.txt"], ["m.npz", "corrupt"]
    elif case == "vocab":
        from streamlm.jobs.prepare import prepare

        prepare([env / "a.txt"], tmp_path / "sh")  # its own vocabulary, not the model's
        args, needles = [tmp_path / "sh"], ["sh", "vocabulary"]
    elif case == "ids":
        p = tmp_path / "ids.parquet"
        pq.write_table(pa.table({"token_id": pa.array([1, 2, 3, 50], pa.int32())}), p)
        args, needles = [p], ["ids.parquet", "50", "row 3"]
    else:
        args, needles = [env / "a.txt", "--reset", "word"], ["--reset"]
    rc, so, err = cli("score", model, *args, "--output", out, "--level", "line")
    one_error_line(rc, err, *needles)
    assert so == ""
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_errors_replace(env, tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"the caf\xe9\n")
    rc, out, err = cli("score", env / "m.npz", p, "--errors", "replace", "--json")
    assert rc == 0, err
    assert json.loads(out)["tokens"] == 3
