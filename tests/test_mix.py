"""``score --mix``: interpolation with a KenLM n-gram model, checked against the
``kenlm`` module's own numbers.

The n-gram model is PTB's KN5 (``../shared/anchors/kenlm``), turned once into a
KenLM binary in a temporary directory (it loads in a fraction of the ARPA's
time). The RNN is a small random model with PTB's vocabulary whose output bias
is the log unigram distribution of PTB train, so that it is a real (if weak)
model and the tuned L is not trivially 0. Every expected number comes from the
``kenlm`` module (``full_scores``) and from streamlm scoring without a mix.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import REPO
from helpers import assert_one_error_line, run

from streamlm.data.vocab import Vocab
from streamlm.jobs.score import score
from streamlm.nn.params import ModelConfig, Params, save_model

kenlm = pytest.importorskip("kenlm")


@pytest.fixture(scope="module")
def kn5(kenlm_anchor, tmp_path_factory):
    """(path of a KenLM binary of the PTB KN5 model, that model loaded)."""
    d = tmp_path_factory.mktemp("kn5")
    with gzip.open(kenlm_anchor / "ptb.kn5.arpa.gz", "rb") as f:
        (d / "kn5.arpa").write_bytes(f.read())
    subprocess.run([str(kenlm_anchor / "bin" / "build_binary"), str(d / "kn5.arpa"),
                    str(d / "kn5.bin")], check=True, capture_output=True, timeout=120)
    (d / "kn5.arpa").unlink()
    return d / "kn5.bin", kenlm.Model(str(d / "kn5.bin"))


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    """A model with PTB's vocabulary (a unigram bias), a text and a held-out text."""
    d = tmp_path_factory.mktemp("mix")
    with gzip.open(shared_data / "ptb" / "ptb.train.txt.gz", "rt") as f:
        counts = Counter(f.read().split())
    vocab = Vocab.build(counts)
    p = Params.init(ModelConfig(len(vocab), 4, 6), seed=3)
    freq = np.array([counts.get(w, 0) + 1.0 for w in vocab.words])
    freq[vocab.eos_id] = 42068  # PTB train's lines
    p["affine_b"][:] = np.log(freq / freq.sum())
    p["affine_W"][:] *= 0.1
    save_model(d / "m.npz", p, vocab.words)
    lines = (shared_data / "ptb" / "ptb.valid.txt").read_text().split("\n")
    text = lines[:40] + ["", "zzzz qqqq the", "<unk> <unk> market", "a"]
    (d / "t.txt").write_text("\n".join(text) + "\n")
    (d / "tune.txt").write_text("\n".join(lines[100:250]) + "\n")
    return d


def kenlm_log10(model, path) -> tuple[np.ndarray, np.ndarray]:
    """KenLM's own log10 p and OOV flags of every token of ``path``, line by line."""
    lp, oov = [], []
    for line in path.read_text().splitlines():
        for prob, _, is_oov in model.full_scores(line, bos=True, eos=True):
            lp.append(prob)
            oov.append(is_oov)
    return np.array(lp), np.array(oov)


def words(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def mixed(data, kn5, tmp_path, lam, **kw):
    out = tmp_path / f"w{lam}.jsonl"
    r = score(data / "m.npz", [data / "t.txt"], output=out, level="word", mix=kn5[0],
              mix_lambda=lam, **kw)
    return r.summary, words(out)


def test_lambda_one_is_the_rnn_alone(data, kn5, tmp_path):
    alone = score(data / "m.npz", [data / "t.txt"], output=tmp_path / "a.jsonl",
                  level="word").summary
    s, w = mixed(data, kn5, tmp_path, 1.0)
    assert s["tokens"] == alone["tokens"] and s["oov"] == alone["oov"]
    assert s["logprob"] == pytest.approx(alone["logprob"], rel=1e-12)
    assert s["mix"]["lambda"] == 1.0 and s["mix"]["ngram_model"] == os.fspath(kn5[0])
    a = words(tmp_path / "a.jsonl")
    assert [x["log10prob"] for x in w] == pytest.approx([x["log10prob"] for x in a], rel=1e-12)
    assert [x["rnn_log10prob"] for x in w] == [x["log10prob"] for x in w]


def test_lambda_zero_is_kenlm(data, kn5, tmp_path):
    ref, ref_oov = kenlm_log10(kn5[1], data / "t.txt")
    s, w = mixed(data, kn5, tmp_path, 0.0)
    assert s["tokens"] == len(ref)
    assert s["log10prob"] == pytest.approx(ref.sum(), rel=1e-9)
    got = np.array([x["log10prob"] for x in w])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([x["ngram_log10prob"] for x in w], ref, rtol=1e-9, atol=1e-12)
    # OOVs as KenLM counts them (the same vocabulary: either model's are the same here)
    assert [x["oov"] for x in w] == ref_oov.tolist() and s["oov"] == int(ref_oov.sum())
    assert sum(x["word"] == "</s>" or x["token"] == "<eos>" for x in w) == 44  # one a line
    # the n-gram alone in the summary is KenLM's figure on the same tokens
    assert s["mix"]["ngram"]["log10prob"] == pytest.approx(ref.sum(), rel=1e-9)
    ppl = 10 ** (-ref.sum() / len(ref))
    assert s["mix"]["ngram"]["perplexity"] == pytest.approx(ppl, rel=1e-9)
    assert s["perplexity"] == pytest.approx(ppl, rel=1e-9)


def test_intermediate_lambda_is_the_formula(data, kn5, tmp_path):
    lam = 0.3
    alone = score(data / "m.npz", [data / "t.txt"], output=tmp_path / "a.jsonl",
                  level="word").summary
    rnn = np.array([x["log10prob"] for x in words(tmp_path / "a.jsonl")])
    ng, _ = kenlm_log10(kn5[1], data / "t.txt")
    want = np.log10(lam * 10.0 ** rnn + (1 - lam) * 10.0 ** ng)
    s, w = mixed(data, kn5, tmp_path, lam)
    np.testing.assert_allclose([x["log10prob"] for x in w], want, rtol=1e-9)
    np.testing.assert_allclose([x["rnn_log10prob"] for x in w], rnn, rtol=1e-12)
    assert s["log10prob"] == pytest.approx(want.sum(), rel=1e-9)
    assert s["mix"]["rnn"]["logprob"] == pytest.approx(alone["logprob"], rel=1e-12)
    # log is concave: the mix is never below the same mix of the two log-probabilities
    m = s["mix"]
    assert s["logprob"] >= lam * m["rnn"]["logprob"] + (1 - lam) * m["ngram"]["logprob"]


@pytest.mark.parametrize("reset", ["none", "line"])
def test_chunk_invariance(data, kn5, tmp_path, reset):
    s1, w1 = mixed(data, kn5, tmp_path, 0.4, reset=reset)
    s2, w2 = mixed(data, kn5, tmp_path, 0.4, reset=reset, chunk_tokens=3, batch=2,
                   engine="numpy")
    assert s1["tokens"] == s2["tokens"] and s1["oov"] == s2["oov"]
    assert s2["logprob"] == pytest.approx(s1["logprob"], rel=1e-6)
    for k in ("log10prob", "rnn_log10prob", "ngram_log10prob"):
        np.testing.assert_allclose([x[k] for x in w2], [x[k] for x in w1], rtol=1e-5)


class Boom(Exception):
    pass


def test_checkpoint_resume_is_exact(data, kn5, tmp_path):
    kw = dict(level="word", mix=kn5[0], mix_lambda=0.6, chunk_tokens=7, batch=1,
              engine="numpy")
    full = score(data / "m.npz", [data / "t.txt"], output=tmp_path / "full.jsonl", **kw)
    ck = tmp_path / "ck.npz"
    for stop in (3, 11, 40):  # each run stops after a few model calls, mid-line too
        calls = {"n": 0}

        def progress(_info, stop=stop, calls=calls):
            calls["n"] += 1
            if calls["n"] == stop:
                raise Boom()
        with pytest.raises(Boom):
            score(data / "m.npz", [data / "t.txt"], output=tmp_path / "r.jsonl",
                  checkpoint=ck, checkpoint_every=1, progress=progress, **kw)
        assert ck.exists()
    r = score(data / "m.npz", [data / "t.txt"], output=tmp_path / "r.jsonl", checkpoint=ck,
              **kw)
    assert r.summary["logprob"] == pytest.approx(full.summary["logprob"], rel=1e-12)
    assert r.summary["mix"]["ngram"] == pytest.approx(full.summary["mix"]["ngram"])
    assert r.summary["mix"]["rnn"] == pytest.approx(full.summary["mix"]["rnn"])
    assert (tmp_path / "r.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()
    # another lambda is another result: a checkpoint of one is refused by the other
    with pytest.raises(Boom):
        score(data / "m.npz", [data / "t.txt"], output=tmp_path / "r.jsonl", checkpoint=ck,
              checkpoint_every=1, progress=lambda _info: (_ for _ in ()).throw(Boom()), **kw)
    with pytest.raises(Exception, match="lambda"):
        score(data / "m.npz", [data / "t.txt"], output=tmp_path / "r.jsonl", checkpoint=ck,
              **{**kw, "mix_lambda": 0.5})


def test_auto_lambda_beats_a_grid(data, kn5, tmp_path):
    s = score(data / "m.npz", [data / "t.txt"], mix=kn5[0], mix_lambda="auto",
              tune_on=data / "tune.txt").summary
    lam = s["mix"]["lambda"]
    assert s["mix"]["tuned_on"] == os.fspath(data / "tune.txt")
    # both models' per-token probabilities on the held-out text, gathered independently
    score(data / "m.npz", [data / "tune.txt"], output=tmp_path / "a.jsonl", level="word")
    rnn = np.array([x["log10prob"] for x in words(tmp_path / "a.jsonl")])
    ng, _ = kenlm_log10(kn5[1], data / "tune.txt")

    def ppl(L):
        return 10 ** -np.mean(np.log10(L * 10.0 ** rnn + (1 - L) * 10.0 ** ng))
    grid = np.linspace(0, 1, 41)
    assert ppl(lam) <= min(ppl(g) for g in grid) * (1 + 1e-9)
    assert 0 < lam < 1  # a weak RNN still helps KN5 a little: the best L is inside
    assert s["mix"]["tune_perplexity"] == pytest.approx(ppl(lam), rel=1e-9)
    # the run with the chosen L is the run with L given
    again = score(data / "m.npz", [data / "t.txt"], mix=kn5[0], mix_lambda=lam).summary
    assert again["logprob"] == pytest.approx(s["logprob"], rel=1e-12)


def test_cli_summary_and_json(data, kn5):
    r = run("score", data / "m.npz", data / "t.txt", "--mix", kn5[0], "--lambda", "auto",
            "--tune-on", data / "tune.txt", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    lam = d["mix"]["lambda"]
    assert f"--lambda auto: {lam:.4f}" in r.stderr
    assert d["mix"]["ngram_model"] == os.fspath(kn5[0])
    r = run("score", data / "m.npz", data / "t.txt", "--mix", kn5[0], "--lambda", "0.25")
    assert r.returncode == 0, r.stderr
    assert f"mixed with                {kn5[0]}, lambda 0.25" in r.stdout


def test_bad_inputs_are_one_line(data, kn5, tmp_path):
    m, t = data / "m.npz", data / "t.txt"
    bad = tmp_path / "bad.arpa"
    bad.write_text("not an arpa file\n")
    cases = [
        (["--mix", tmp_path / "none.arpa", "--lambda", "0.5"], ["none.arpa", "no such file"]),
        (["--mix", bad, "--lambda", "0.5"], ["bad.arpa", "not a KenLM model"]),
        (["--mix", tmp_path, "--lambda", "0.5"], ["directory"]),
        (["--mix", kn5[0], "--lambda", "1.5"], ["--lambda", "1.5"]),
        (["--mix", kn5[0], "--lambda", "x"], ["--lambda"]),
        (["--mix", kn5[0], "--lambda", "auto"], ["--tune-on"]),
        (["--mix", kn5[0]], ["--lambda"]),
        (["--lambda", "0.5"], ["--mix"]),
        (["--mix", kn5[0], "--lambda", "auto", "--tune-on", tmp_path / "no.txt"], ["no.txt"]),
    ]
    for args, needles in cases:
        r = run("score", m, t, *args)
        assert_one_error_line(r.returncode, r.stderr, *needles)
    r = run("score", m, "-", "--mix", kn5[0], "--lambda", "0.5", stdin="the cat\n")
    assert_one_error_line(r.returncode, r.stderr, "stdin")


def test_without_the_kenlm_module(data, kn5, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "kenlm.py").write_text("raise ImportError('no kenlm here')\n")
    env = dict(os.environ, PYTHONPATH=f"{fake}{os.pathsep}{REPO}", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "streamlm", "score", str(data / "m.npz"),
                        str(data / "t.txt"), "--mix", str(kn5[0]), "--lambda", "0.5"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert_one_error_line(r.returncode, r.stderr, "pip install", "kenlm")


def test_best_lambda_is_golden_section_exact():
    from streamlm.jobs.mix import best_lambda, mixed_logprobs

    rng = np.random.default_rng(0)
    a, b = np.log(rng.uniform(0.01, 1, 500)), np.log(rng.uniform(0.01, 1, 500))
    lam, ppl = best_lambda(a, b)
    grid = np.linspace(0, 1, 1001)
    costs = [-mixed_logprobs(g, a, b).mean() for g in grid]
    assert abs(lam - grid[int(np.argmin(costs))]) <= 2e-3
    assert ppl == pytest.approx(math.exp(-mixed_logprobs(lam, a, b).mean()))
    assert best_lambda(a, a - 5)[0] == 1.0 and best_lambda(a - 5, a)[0] == 0.0
