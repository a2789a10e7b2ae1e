"""The KenLM-like Python API: streamlm.Model / State / score_batch / Stream.

Expected values come from tests/reference.py (plain numpy, float64): a sentence
after ``<s>`` is the reference model from the zero state with ``<eos>`` as the
first input; after a null context its first word is the output layer on the
zero state, and the rest the reference model from the zero state with that word
as the first input.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections import Counter

import numpy as np
import pytest
import reference as ref

import streamlm
from streamlm import api
from streamlm.data.vocab import Vocab
from streamlm.jobs.score import score
from streamlm.nn.classes import WordClasses
from streamlm.nn.params import ModelConfig, Params, load_model, save_model, state_size

TRAIN = "the cat sat on the mat\nthe dog sat on the log\n"
ENGINES = ["numba", "numpy"]


@pytest.fixture(scope="module", params=["full", "class", "full-lstm2", "class-gru2"])
def path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    vocab = Vocab.build(Counter(TRAIN.split()))
    softmax, _, cell = request.param.partition("-")
    kind = dict(cell=cell[:-1], layers=int(cell[-1])) if cell else {}
    classes, cfg = None, ModelConfig(len(vocab), 3, 4, **kind)
    if softmax == "class":
        classes = WordClasses(np.arange(len(vocab), dtype=np.int32) % 3)
        cfg = ModelConfig(len(vocab), 3, 4, softmax="class", C=3, **kind)
    p = Params.init(cfg, seed=7, classes=classes)
    a = p.file_arrays()
    a["affine_b"] = np.linspace(-1, 1, len(vocab))
    if classes is not None:
        a["class_b"] = np.array([0.3, -0.2, 0.5])
    p.set_file_arrays(a)
    save_model(d / "m.npz", p, vocab.words)
    return d / "m.npz"


def ref_log10(path, ids, bos=True, eos_id=1):
    """log10 p of each id (float64 reference), after <s> or after a null context."""
    m = load_model(path, dtype=np.float64)
    wc = None if m.params.classes is None else m.params.classes.word_class
    arrays = m.params.file_arrays()
    H, S = m.config.H, state_size(m.config)
    ids = np.asarray(ids)
    if bos:
        xs = np.concatenate([[eos_id], ids[:-1]])[None, :]
        nll, _ = ref.model_nll(arrays, m.config, xs, ids[None, :], np.zeros((1, S)), wc)
        return -nll[0] / math.log(10)
    first, _, _, _ = ref.output_layer(arrays, np.zeros((1, 1, H)), ids[None, :1], wc)
    out = [-first[0, 0]]
    if len(ids) > 1:
        nll, _ = ref.model_nll(arrays, m.config, ids[None, :-1], ids[None, 1:],
                               np.zeros((1, S)), wc)
        out += list(-nll[0])
    return np.array(out) / math.log(10)


def ids_of(lm, sent, eos=True):
    v = lm.vocab
    return np.array([v.index.get(w, v.unk_id) for w in sent.split()] + [v.eos_id] * eos)


@pytest.mark.parametrize("engine", ENGINES)
def test_score_full_scores_perplexity(path, engine):
    lm = streamlm.Model(path, engine=engine)
    sent = "the cat sat on a mat"  # 'a' is an OOV
    for bos in (True, False):
        for eos in (True, False):
            ids = ids_of(lm, sent, eos)
            want = ref_log10(path, ids, bos)
            assert lm.score(sent, bos=bos, eos=eos) == pytest.approx(want.sum(), rel=1e-5)
            fs = list(lm.full_scores(sent, bos=bos, eos=eos))
            assert [o for _, _, o in fs] == [False] * 4 + [True, False] + [False] * eos
            # ngram_length: tokens of context since the reset (<s> is one) + 1
            assert [n for _, n, _ in fs] == list(range(1 + bos, 1 + bos + len(ids)))
            np.testing.assert_allclose([p for p, _, _ in fs], want, rtol=1e-5)
            assert lm.perplexity(sent, bos=bos, eos=eos) == pytest.approx(
                10 ** (-want.sum() / len(ids)), rel=1e-5)
    # KenLM's defaults and its perplexity (words + 1 tokens)
    assert lm.perplexity(sent) == pytest.approx(10 ** (-lm.score(sent) / 7), rel=1e-9)
    assert lm.score("", bos=False, eos=False) == 0.0 and lm.perplexity("", eos=False) is None
    # </s> is the end of sentence, as in KenLM
    assert lm.score("the cat </s>", eos=False) == pytest.approx(lm.score("the cat"), rel=1e-6)
    assert "cat" in lm and "zebra" not in lm and "<unk>" not in lm and "</s>" in lm
    assert lm.path == str(path.resolve())


def test_load_alias_and_lazy_exports(path):
    lm = streamlm.load(path, engine="numpy")
    assert streamlm.LanguageModel is streamlm.Model and isinstance(lm, streamlm.Model)
    assert streamlm.Stream is type(lm.stream())
    assert streamlm.State is api.State and streamlm.FullScoreReturn is api.FullScoreReturn
    back = pickle.loads(pickle.dumps(lm))  # by its path, as kenlm.Model
    assert back.path == lm.path and back.score("the cat") == lm.score("the cat")
    with pytest.raises(AttributeError):
        streamlm.nothing_here  # noqa: B018


def walk(lm, words, bos=True):
    """BaseFullScore word by word from <s> or a null context: (returns, states)."""
    s = streamlm.State()
    (lm.BeginSentenceWrite if bos else lm.NullContextWrite)(s)
    rets, states = [], [s]
    for w in words:
        out = streamlm.State()
        rets.append(lm.BaseFullScore(states[-1], w, out))
        states.append(out)
    return rets, states


@pytest.mark.parametrize("engine", ENGINES)
def test_base_score_walk_equals_full_scores(path, engine):
    lm = streamlm.Model(path, engine=engine)
    words = "the dog sat on zebra log".split()
    for bos in (True, False):
        rets, _ = walk(lm, words + ["</s>"], bos)
        want = list(lm.full_scores(" ".join(words), bos=bos))
        assert [r.ngram_length for r in rets] == [n for _, n, _ in want]
        assert [r.oov for r in rets] == [o for _, _, o in want]
        np.testing.assert_allclose([r.log_prob for r in rets], [p for p, _, _ in want],
                                   rtol=1e-5)
        s = streamlm.State()
        (lm.BeginSentenceWrite if bos else lm.NullContextWrite)(s)
        out = streamlm.State()
        assert lm.BaseScore(s, "the", out) == pytest.approx(rets[0].log_prob, rel=1e-9)
        assert out == walk(lm, ["the"], bos)[1][1]


def test_states_are_values(path):
    lm = streamlm.Model(path, engine="numpy")
    _, a = walk(lm, "the cat sat".split())
    _, b = walk(lm, "the cat sat".split())
    _, c = walk(lm, "the dog sat".split())
    assert a[3] == b[3] and hash(a[3]) == hash(b[3]) and a[3] != c[3]
    assert a[3] is not b[3] and len({a[3], b[3], c[3]}) == 2
    assert streamlm.State() == walk(lm, [], bos=False)[1][0]  # State() is the null context
    s0 = streamlm.State()
    lm.BeginSentenceWrite(s0)
    assert s0 != streamlm.State() and s0.length == 1 and a[3].length == 4
    # a copy is equal, shares the read-only hidden state, and scores the same
    cp, dcp = copy.copy(a[3]), copy.deepcopy(a[3])
    assert cp == a[3] == dcp and cp is not a[3] and cp._h is a[3]._h
    assert not a[3]._h.flags.writeable
    o1, o2 = streamlm.State(), streamlm.State()
    assert lm.BaseScore(cp, "on", o1) == lm.BaseScore(a[3], "on", o2) and o1 == o2
    # BaseScore writes out_state and leaves in_state as it was, even as its own out_state
    before = copy.copy(a[2])
    lm.BaseScore(a[2], "mat", streamlm.State())
    assert a[2] == before
    x = copy.copy(a[2])
    p = lm.BaseScore(x, "sat", x)
    assert x == a[3] and p == pytest.approx(lm.BaseScore(a[2], "sat", streamlm.State()))
    # ordered (a total order, as KenLM's rich comparisons) and usable as keys
    ss = sorted([c[3], a[3], s0, a[1]])
    assert ss == sorted(ss[::-1]) and ss[0] == s0
    beam = {a[3]: 1, b[3]: 2, c[3]: 3}
    assert len(beam) == 2 and beam[a[3]] == 2
    assert "length=4" in repr(a[3]) and "null context" in repr(streamlm.State())


@pytest.mark.parametrize("engine", ENGINES)
def test_score_batch_equals_score(path, engine, monkeypatch):
    lm = streamlm.Model(path, engine=engine)
    sents = ["the cat sat on the mat", "", "zebra", "the dog sat on the log the end",
             ["the", "mat"], "on on on on on on on on on on on on on"]
    for bos in (True, False):
        for eos in (True, False):
            got = lm.score_batch(sents, bos=bos, eos=eos, batch=2)
            want = [lm.score(s if isinstance(s, str) else " ".join(s), bos=bos, eos=eos)
                    for s in sents]
            assert got.dtype == np.float64 and got.shape == (len(sents),)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert lm.score_batch([]).shape == (0,)
    # long sentences go through the model in chunks of steps, with their state carried
    monkeypatch.setattr(api, "_CHUNK", 3)
    chunked = lm.score_batch(sents, batch=4)
    monkeypatch.undo()
    np.testing.assert_allclose(chunked, lm.score_batch(sents), rtol=1e-5)


def test_run_ends_in_the_state_base_score_reaches(path):
    lm = streamlm.Model(path, engine="numpy")
    seqs = [ids_of(lm, "the cat sat", eos=False), ids_of(lm, "on", eos=False),
            ids_of(lm, "", eos=False)]
    for bos in (True, False):
        _, ends = lm._run([lm._begin(bos)] * 3, seqs)
        for s, end in zip(["the cat sat", "on", ""], ends):
            want = walk(lm, s.split(), bos)[1][-1]
            assert end.length == want.length and end._prev == want._prev
            np.testing.assert_allclose(end._h if end._h is not None else 0,
                                       want._h if want._h is not None else 0, atol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
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
