"""The KenLM-like Python API: streamlm.LanguageModel / load / Stream."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import reference as ref

import streamlm
from streamlm.classes import WordClasses
from streamlm.params import ModelConfig, Params, load_model, save_model
from streamlm.score import score
from streamlm.vocab import Vocab

TRAIN = "the cat sat on the mat\nthe dog sat on the log\n"


@pytest.fixture(scope="module", params=["full", "class"])
def path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    vocab = Vocab.build(Counter(TRAIN.split()))
    classes, cfg = None, ModelConfig(len(vocab), 3, 4)
    if request.param == "class":
        classes = WordClasses(np.arange(len(vocab), dtype=np.int32) % 3)
        cfg = ModelConfig(len(vocab), 3, 4, softmax="class", C=3)
    p = Params.init(cfg, seed=7, classes=classes)
    a = p.file_arrays()
    a["affine_b"] = np.linspace(-1, 1, len(vocab))
    p.set_file_arrays(a)
    save_model(d / "m.npz", p, vocab.words)
    return d / "m.npz"


def ref_log10(path, ids, eos):
    m = load_model(path, dtype=np.float64)
    wc = None if m.params.classes is None else m.params.classes.word_class
    xs = np.concatenate([[eos], ids[:-1]])[None, :]
    _, _, nll = ref.model_loss(m.params.file_arrays(), xs, np.asarray(ids)[None, :],
                               np.zeros((1, m.config.H)), wc)
    return -nll[0] / math.log(10)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_score_full_scores_perplexity(path, engine):
    lm = streamlm.LanguageModel(path, engine=engine)
    v = lm.vocab
    sent = "the cat sat on a mat"  # 'a' is an OOV
    ids = np.array([v.index.get(w, v.unk_id) for w in sent.split()] + [v.eos_id])
    want = ref_log10(path, ids, v.eos_id)
    assert lm.score(sent) == pytest.approx(want.sum(), rel=1e-5)
    fs = list(lm.full_scores(sent))
    assert [o for _, o in fs] == [False] * 4 + [True, False, False]
    np.testing.assert_allclose([p for p, _ in fs], want, rtol=1e-5)
    assert lm.perplexity(sent) == pytest.approx(10 ** (-want.sum() / len(ids)), rel=1e-5)
    # eos=False drops the final <eos>
    assert lm.score(sent, eos=False) == pytest.approx(want[:-1].sum(), rel=1e-5)
    with pytest.raises(ValueError):
        lm.score(sent, bos=False)
    assert "cat" in lm and "zebra" not in lm


def test_load_alias_and_lazy_exports(path):
    lm = streamlm.load(path, engine="numpy")
    assert isinstance(lm, streamlm.LanguageModel)
    assert streamlm.Stream is type(lm.stream())
    with pytest.raises(AttributeError):
        streamlm.nothing_here  # noqa: B018


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_stream_feeds_equal_one_pass(path, engine, tmp_path):
    lm = streamlm.LanguageModel(path, engine=engine)
    text = "the cat sat\non the mat\nthe zebra\n"
    f = tmp_path / "t.txt"
    f.write_text(text)
    whole = score(path, [f], engine=engine)
    s = lm.stream()
    parts = []
    for line in text.splitlines():
        parts.append(s.feed(line, eos=True))
    lp = np.concatenate(parts)
    assert s.tokens == whole.summary["tokens"] == len(lp)
    assert s.oov == whole.summary["oov"] == 1
    assert s.logprob == pytest.approx(whole.summary["logprob"], rel=1e-6)
    assert lp.sum() == pytest.approx(whole.summary["log10prob"], rel=1e-6)
    assert s.perplexity == pytest.approx(whole.summary["perplexity"], rel=1e-6)
    assert s.perplexity_excl_oov == pytest.approx(whole.summary["perplexity_excl_oov"], rel=1e-6)
    np.testing.assert_allclose(s.state, whole.final_states[0], atol=1e-5)
    # ids, words and strings are the same tokens; odd chunks give the same totals
    ids = lm.encode(text.replace("\n", " <eos> "))
    s2 = lm.stream()
    for a in range(0, len(ids), 3):
        s2.feed(ids[a:a + 3])
    assert s2.logprob == pytest.approx(s.logprob, rel=1e-6)
    s2.reset()
    assert s2.tokens == 0 and s2.perplexity is None
    with pytest.raises(ValueError):
        s2.feed([len(lm.vocab)])
