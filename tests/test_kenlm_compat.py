"""KenLM users' code, unchanged, on streamlm.Model and on kenlm.Model.

``decode`` is written as a CTC / lattice decoder writes it against KenLM: a beam
of states from ``BeginSentenceWrite``, extended with ``BaseScore`` into fresh
``State()`` s, hypotheses with equal states recombined (states as dict keys),
and ``</s>`` scored from a copied state. It runs against ``kenlm.Model`` on the
PTB KN5 ARPA when the ``kenlm`` module is installed and against
``streamlm.Model``, and must give the best path and the scores that exhaustive
scoring with ``model.score`` gives.
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections import Counter

import numpy as np
import pytest

import streamlm
from streamlm.data.vocab import Vocab
from streamlm.nn.params import ModelConfig, Params, save_model


def decode(model, State, lattice, width=None):
    """Beam search over ``lattice`` (a list of candidate words per position): the
    hypotheses as (log10 score, words), best first."""
    start = State()
    model.BeginSentenceWrite(start)
    beam = {start: (0.0, ())}  # equal states recombine: the better hypothesis stays
    for choices in lattice:
        grown: dict = {}
        for state, (total, words) in beam.items():
            for w in choices:
                out = State()
                t = total + model.BaseScore(state, w, out)
                if out not in grown or grown[out][0] < t:
                    grown[out] = (t, words + (w,))
        best = sorted(grown.items(), key=lambda kv: -kv[1][0])
        beam = dict(best[:width] if width else best)
    done = []
    for state, (total, words) in beam.items():
        end = copy.copy(state)
        done.append((total + model.BaseScore(end, "</s>", State()), words))
        assert end == state  # scoring from a state leaves it as it was
    return sorted(done, key=lambda d: -d[0])


def exhaustive(model, lattice):
    """Every path scored with model.score, best first."""
    paths = {tuple(p) for p in itertools.product(*lattice)}
    return sorted(((model.score(" ".join(p)), p) for p in paths), key=lambda d: -d[0])


def check_decoder(model, State, lattice):
    every = exhaustive(model, lattice)
    got = decode(model, State, lattice)
    assert got[0][1] == every[0][1]  # the best path
    assert got[0][0] == pytest.approx(every[0][0], rel=1e-5)
    unique = len({tuple(p) for p in itertools.product(*lattice)})
    assert len(got) <= unique
    for total, words in got + decode(model, State, lattice, width=3):
        assert total == pytest.approx(model.score(" ".join(words)), rel=1e-5)


TOY_LATTICE = [["the", "a"], ["cat", "dog", "zebra"], ["sat", "sat", "ran"], ["on"],
               ["the", "mat", "log"]]
PTB_LATTICE = [["the", "a"], ["company", "market", "zyzzyva"], ["said", "said", "rose"],
               ["in"], ["the", "tokyo", "<unk>"]]


@pytest.fixture(scope="module", params=["full", "class", "full-lstm2", "class-gru2"])
def toy_model(request, tmp_path_factory):
    from streamlm.nn.classes import WordClasses

    vocab = Vocab.build(Counter("the cat sat on the mat a dog ran to the log".split()))
    V = len(vocab)
    softmax, _, cell = request.param.partition("-")
    kind = dict(cell=cell[:-1], layers=int(cell[-1])) if cell else {}
    if softmax == "class":
        cfg, cl = ModelConfig(V, 4, 5, softmax="class", C=3, **kind), WordClasses(
            np.arange(V, dtype=np.int32) % 3)
    else:
        cfg, cl = ModelConfig(V, 4, 5, **kind), None
    p = Params.init(cfg, seed=3, classes=cl)
    p.flat[...] *= 4  # a sharper model: paths far apart
    path = tmp_path_factory.mktemp("toy") / "toy.npz"
    save_model(path, p, vocab.words)
    return path


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_decoder_on_streamlm(toy_model, engine):
    check_decoder(streamlm.Model(toy_model, engine=engine), streamlm.State, TOY_LATTICE)


def test_decoder_on_kenlm(kenlm_anchor):
    kenlm = pytest.importorskip("kenlm")
    model = kenlm.Model(str(kenlm_anchor / "ptb.kn5.arpa.gz"))
    check_decoder(model, kenlm.State, PTB_LATTICE)


def test_the_two_apis_agree_in_shape(toy_model, kenlm_anchor):
    """The same calls return the same kinds of values from both libraries."""
    kenlm = pytest.importorskip("kenlm")
    ours = streamlm.Model(toy_model, engine="numpy")
    theirs = kenlm.Model(str(kenlm_anchor / "ptb.kn5.arpa.gz"))
    for m, State in ((ours, streamlm.State), (theirs, kenlm.State)):
        s, out = State(), State()
        m.NullContextWrite(s)
        assert s == State()
        m.BeginSentenceWrite(s)
        r = m.BaseFullScore(s, "the", out)
        assert isinstance(r.log_prob, float) and r.ngram_length == 2 and r.oov is False
        assert m.BaseFullScore(s, "qqqq", out).oov is True
        fs = list(m.full_scores("the qqqq", bos=False, eos=True))
        assert [len(t) for t in fs] == [3, 3, 3] and [t[2] for t in fs] == [False, True, False]
        assert fs[0][1] == 1  # a null context: the first word has no context
        assert m.score("the qqqq", bos=False, eos=False) == pytest.approx(
            fs[0][0] + fs[1][0], rel=1e-5)
        assert m.perplexity("the") == pytest.approx(10 ** (-m.score("the") / 2), rel=1e-5)
        assert "the" in m and "qqqq" not in m and "<unk>" not in m and "</s>" in m
        assert hash(copy.copy(out)) == hash(out)


# the loading options of code written for KenLM: the same lines, only the import changes
SNIPPET = """
config = kenlm.Config()
defaults = (config.load_method, config.show_progress, config.arpa_complain)
config.load_method = kenlm.LoadMethod.LAZY
config.arpa_complain = kenlm.ARPALoadComplain.NONE
config.show_progress = False
model = kenlm.Model(path, config)
again = kenlm.Model(path, config=config)
methods = [getattr(kenlm.LoadMethod, n) for n in
           ("LAZY", "POPULATE_OR_LAZY", "POPULATE_OR_READ", "READ", "PARALLEL_READ")]
complain = [kenlm.ARPALoadComplain.ALL, kenlm.ARPALoadComplain.EXPENSIVE,
            kenlm.ARPALoadComplain.NONE]
result = {
    "defaults": defaults,
    "set": (config.load_method, config.show_progress, config.arpa_complain),
    "methods": methods, "complain": complain,
    "order": model.order,
    "score": model.score("the cat sat", bos=True, eos=True),
    "again": again.score("the cat sat"),
}
try:
    kenlm.Model(path, "lazy")
except TypeError:
    result["bad_config"] = "TypeError"
"""


def run_snippet(module, path) -> dict:
    scope = {"kenlm": module, "path": str(path)}
    exec(SNIPPET, scope)
    return scope["result"]


def test_config_and_load_method_run_unchanged_on_both(toy_model, kenlm_anchor):
    kenlm = pytest.importorskip("kenlm")
    theirs = run_snippet(kenlm, kenlm_anchor / "ptb.kn5.arpa.gz")
    ours = run_snippet(streamlm, toy_model)
    for k in ("defaults", "set", "methods", "complain", "bad_config"):
        assert ours[k] == theirs[k], k
    assert theirs["order"] == 5 and isinstance(ours["order"], int)
    assert theirs["score"] == pytest.approx(theirs["again"])
    # the settings change nothing for an RNN: the scores of a model loaded without them
    plain = streamlm.Model(toy_model)
    assert ours["score"] == ours["again"] == plain.score("the cat sat")
    assert isinstance(plain.load_config, streamlm.Config)


def test_a_kenlm_config_is_taken_too_and_kept(toy_model):
    import pickle

    kenlm = pytest.importorskip("kenlm")
    c = kenlm.Config()
    c.load_method = kenlm.LoadMethod.READ
    lm = streamlm.Model(toy_model, c, engine="numpy")
    assert lm.load_config.load_method == kenlm.LoadMethod.READ
    back = pickle.loads(pickle.dumps(lm))
    assert back.engine == "numpy" and back.load_config.load_method == kenlm.LoadMethod.READ
    with pytest.raises(TypeError, match="engine='numpy'"):
        streamlm.Model(toy_model, "numpy")  # the engine is no longer the second argument


def test_order_is_unbounded_so_pyctcdecode_prunes_no_beam_the_rnn_tells_apart(toy_model):
    """pyctcdecode's ``_prune_history`` keys a beam by its last ``max(1, order - 1)``
    words and keeps one beam per key. Two beams that differ only in their first word
    score differently on an RNN: they must keep different keys."""
    lm = streamlm.Model(toy_model, engine="numpy")
    assert lm.order == sys.maxsize

    def key(text: str, order: int) -> tuple:  # pyctcdecode.decoder._prune_history
        return tuple(text.split()[-max(1, order - 1):])

    a, b = "the cat sat on the mat", "a cat sat on the mat"
    assert lm.score(a) != lm.score(b)
    assert key(a, lm.order) != key(b, lm.order)
    assert key(a, 5) == key(b, 5)  # what a 5-gram order would have merged
