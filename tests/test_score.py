"""The streaming scorer (streamlm.jobs.score): accounting, exactness, batching, outputs, resume.

Expected values come from tests/reference.py (plain numpy, float64) run over the
tokens as the accounting rule defines them, or from the training-side loss.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba.core import config as numba_config

from streamlm.data.text import iter_pieces
from streamlm.data.tokenizer import Block, encode
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError
from streamlm.jobs.prepare import prepare
from streamlm.jobs.score import score
from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.engines import NumpyRNN
from streamlm.nn.params import ModelConfig, Params, load_model, save_model, state_size

NO_JIT = bool(numba_config.DISABLE_JIT)

TRAIN = """the cat sat on the mat
the dog sat on the log
a cat and a dog
the end
"""
# blank lines (documents), an OOV word, a literal <unk>, a tab, an empty last line piece
TEXT = """the cat sat on the mat
zebra sat on the <unk>

the dog\tand a cat
a log

\n
the end of it all
the mat"""

ENGINES = ["numpy", "numba"]


@pytest.fixture(scope="module", params=["full", "class", "full-lstm2", "class-gru2"])
def lm(request, tmp_path_factory):
    """A small model with nonzero biases, with a full softmax and with a class-factored
    one (3 classes by Mikolov's binning of the training counts), a tanh RNN, and two
    layers of LSTM or GRU: every test below runs on each."""
    d = tmp_path_factory.mktemp("model")
    counts = Counter(TRAIN.split())
    vocab = Vocab.build(counts)
    V = len(vocab)
    classes = None
    softmax, _, cell = request.param.partition("-")
    kind = dict(cell=cell[:-1], layers=int(cell[-1])) if cell else {}
    cfg = ModelConfig(V, 5, 6, **kind)
    if softmax == "class":
        wc = frequency_classes(np.array([counts.get(w, 1) for w in vocab.words]), 3)
        classes = WordClasses(wc)
        cfg = ModelConfig(V, 5, 6, softmax="class", C=classes.C, **kind)
    p = Params.init(cfg, seed=3, classes=classes)
    a = p.file_arrays()
    for name in cfg.layer_names:  # nonzero biases: exercise them
        if name.endswith("b") or name.endswith("bh"):
            a[name] = np.linspace(-0.3, 0.3, a[name].shape[0])
    a["affine_b"] = np.linspace(-0.5, 0.5, V)
    if classes is not None:
        a["class_b"] = np.linspace(0.4, -0.4, classes.C)
    p.set_file_arrays(a)
    save_model(d / "m.npz", p, vocab.words)
    (d / "text.txt").write_text(TEXT)
    return {"path": str(d / "m.npz"), "vocab": vocab, "dir": d, "text": str(d / "text.txt"),
            "softmax": softmax}


def ref_nll(model_path, ids, eos, segment_starts=(0,)):
    """Per-token NLL with tests/reference.py, float64: state zero and input <eos> at
    every segment start (the full or the class softmax, as the model has)."""
    m = load_model(model_path, dtype=np.float64)
    P = m.params.file_arrays()
    wc = None if m.params.classes is None else m.params.classes.word_class
    starts = sorted(set(segment_starts) | {0})
    bounds = starts + [len(ids)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = np.asarray(ids[a:b])
        if not len(seg):
            continue
        xs = np.concatenate([[eos], seg[:-1]])[None, :]
        nll, _ = ref.model_nll(P, m.config, xs, seg[None, :],
                               np.zeros((1, state_size(m.config))), wc)
        out.append(nll[0])
    return np.concatenate(out) if out else np.zeros(0)


def text_ids(path, vocab, docs="none"):
    blocks = list(encode(iter_pieces(path), vocab, docs=docs != "none"))
    if not blocks:
        return np.zeros(0, np.int32), None
    b = Block.join(blocks)
    return b.ids, (b.doc_starts(-1) if docs != "none" else None)


# ------------------------------------------------------------- accounting --
def test_token_accounting_and_oov(lm):
    r = score(lm["path"], [lm["text"]], engine="numpy").summary
    lines = TEXT.split("\n")
    words = TEXT.split()
    assert r["tokens"] == len(words) + len(lines)  # W + L
    known = set(TRAIN.split())
    assert r["oov"] == sum(w not in known or w == "<unk>" for w in words) == 5
    assert r["inputs"][0]["tokens"] == r["tokens"]


@pytest.mark.parametrize("engine", ENGINES)
def test_matches_reference_and_kenlm_definitions(lm, engine):
    v = lm["vocab"]
    ids, _ = text_ids(lm["text"], v)
    nll = ref_nll(lm["path"], ids, v.eos_id)
    r = score(lm["path"], [lm["text"]], engine=engine).summary
    lp = -nll.sum()
    assert r["logprob"] == pytest.approx(lp, rel=1e-5)
    assert r["log10prob"] == pytest.approx(lp / math.log(10), rel=1e-5)
    oov = ids == v.unk_id
    assert r["perplexity"] == pytest.approx(math.exp(nll.sum() / len(ids)), rel=1e-5)
    assert r["perplexity_excl_oov"] == pytest.approx(
        math.exp(nll[~oov].sum() / (~oov).sum()), rel=1e-5)
    assert r["bits_per_token"] == pytest.approx(nll.sum() / len(ids) / math.log(2), rel=1e-5)
    assert r["perplexity"] != r["perplexity_excl_oov"]


def test_float64_model_matches_reference_tightly(lm):
    m = load_model(lm["path"], dtype=np.float64)
    v = lm["vocab"]
    ids, _ = text_ids(lm["text"], v)
    nll = ref_nll(lm["path"], ids, v.eos_id)
    for engine in ENGINES:
        r = score(m, [lm["text"]], engine=engine, chunk_tokens=5).summary
        assert r["logprob"] == pytest.approx(-nll.sum(), rel=1e-9)


def test_training_loss_agrees(lm):
    from streamlm.nn.model import RNNLM

    v = lm["vocab"]
    ids, _ = text_ids(lm["text"], v)
    m = load_model(lm["path"])
    xs = np.concatenate([[v.eos_id], ids[:-1]])[None, :]
    mean, _ = RNNLM(m.params).forward(xs, ids[None, :])
    r = score(lm["path"], [lm["text"]], engine="numba").summary
    assert -r["logprob"] == pytest.approx(mean * len(ids), rel=1e-5)


# ------------------------------------------------------------- exactness --
@pytest.mark.parametrize("engine", ENGINES)
def test_chunk_sizes_give_same_totals_and_state(lm, engine):
    n = score(lm["path"], [lm["text"]], engine=engine).summary["tokens"]
    res = [score(lm["path"], [lm["text"]], chunk_tokens=c, batch=1, engine=engine)
           for c in (1, 7, 4096, n)]
    base = res[0]
    for r in res[1:]:
        assert r.summary["logprob"] == pytest.approx(base.summary["logprob"], rel=1e-6)
        assert r.summary["tokens"] == base.summary["tokens"]
        np.testing.assert_allclose(r.final_states[0], base.final_states[0], rtol=1e-5,
                                   atol=1e-6)


def test_engines_agree(lm):
    a = score(lm["path"], [lm["text"]], engine="numpy")
    b = score(lm["path"], [lm["text"]], engine="numba")
    assert a.summary["logprob"] == pytest.approx(b.summary["logprob"], rel=1e-6)
    np.testing.assert_allclose(a.final_states[0], b.final_states[0], atol=1e-5)


@pytest.fixture(scope="module")
def ptb_lines(shared_data, tmp_path_factory):
    src = shared_data / "ptb" / "ptb.valid.txt"
    small = tmp_path_factory.mktemp("ptb") / "v.txt"
    small.write_text("".join(src.read_text().splitlines(True)[:400]))
    return small


@settings(max_examples=3 if NO_JIT else 8, deadline=None,  # (no JIT: Python kernels, slow)
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.integers(17, 3000), batch=st.integers(1, 20),
       reset=st.sampled_from(["none", "line"]))
def test_any_chunking_equals_whole_on_ptb(lm, ptb_lines, chunk, batch, reset):
    """The streaming invariant on real text (400 PTB lines): any chunk length and
    batch give the totals and the final state of one whole-input call."""
    whole = score(lm["path"], [ptb_lines], chunk_tokens=10**7, reset=reset, engine="numba")
    r = score(lm["path"], [ptb_lines], chunk_tokens=chunk, batch=batch, reset=reset,
              engine="numba")
    assert r.summary["tokens"] == whole.summary["tokens"]
    assert r.summary["logprob"] == pytest.approx(whole.summary["logprob"], rel=1e-6)
    if reset == "none":
        np.testing.assert_allclose(r.final_states[0], whole.final_states[0], atol=1e-5)


# ---------------------------------------------------------------- resets --
@pytest.mark.parametrize("engine", ENGINES)
def test_reset_line_is_each_line_alone(lm, engine):
    v = lm["vocab"]
    ids, _ = text_ids(lm["text"], v)
    starts = [0] + list(np.flatnonzero(ids == v.eos_id) + 1)
    nll = ref_nll(lm["path"], ids, v.eos_id, [s for s in starts if s < len(ids)])
    got = {(c, b): score(lm["path"], [lm["text"]], reset="line", chunk_tokens=c, batch=b,
                         engine=engine).summary["logprob"]
           for c in (1, 3, 7, 4096) for b in (1, 3, 16)}
    for val in got.values():
        assert val == pytest.approx(-nll.sum(), rel=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_reset_doc_text_and_shards(lm, tmp_path, engine):
    v = lm["vocab"]
    ids, ds = text_ids(lm["text"], v, "blank-line")
    nll = ref_nll(lm["path"], ids, v.eos_id, list(np.flatnonzero(ds)))
    for c, b in ((2, 1), (4, 2), (4096, 16)):
        r = score(lm["path"], [lm["text"]], reset="doc", chunk_tokens=c, batch=b,
                  engine=engine).summary
        assert r["tokens"] == len(ids)
        assert r["logprob"] == pytest.approx(-nll.sum(), rel=1e-6)
    # the same documents from prepared shards with the model's vocabulary
    vf = tmp_path / "vocab.txt"
    v.save(vf)
    prepare([lm["text"]], tmp_path / "sh", vocab_path=vf, docs="blank-line")
    r = score(lm["path"], [tmp_path / "sh"], reset="doc", chunk_tokens=3, engine=engine).summary
    assert r["logprob"] == pytest.approx(-nll.sum(), rel=1e-6)


def test_doc_mode_differs_from_none(lm):
    a = score(lm["path"], [lm["text"]], reset="none", engine="numpy").summary["logprob"]
    b = score(lm["path"], [lm["text"]], reset="doc", engine="numpy").summary["logprob"]
    assert a != pytest.approx(b, rel=1e-6)


def test_shards_equal_text(lm, tmp_path):
    v = lm["vocab"]
    vf = tmp_path / "vocab.txt"
    v.save(vf)
    prepare([lm["text"]], tmp_path / "sh", vocab_path=vf, shard_tokens=7,
            row_group_tokens=3)
    a = score(lm["path"], [lm["text"]], engine="numba").summary
    b = score(lm["path"], [tmp_path / "sh"], engine="numba", chunk_tokens=5).summary
    assert (a["tokens"], a["oov"]) == (b["tokens"], b["oov"])
    assert a["logprob"] == pytest.approx(b["logprob"], rel=1e-6)
    c = score(lm["path"], [tmp_path / "sh"], engine="numba", reset="line").summary
    d = score(lm["path"], [lm["text"]], engine="numba", reset="line").summary
    assert c["logprob"] == pytest.approx(d["logprob"], rel=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_parallel_inputs_equal_alone(lm, tmp_path, engine):
    paths = []
    for k in range(5):
        p = tmp_path / f"in{k}.txt"
        p.write_text("\n".join(TEXT.split("\n")[k:]) + "\n" * (k % 2))
        paths.append(p)
    (tmp_path / "empty.txt").write_text("")
    paths.insert(2, tmp_path / "empty.txt")
    alone = [score(lm["path"], [p], engine=engine) for p in paths]
    for b, c in ((1, 4096), (3, 2), (16, 5)):
        r = score(lm["path"], paths, batch=b, chunk_tokens=c, engine=engine)
        for k, a in enumerate(alone):
            got = r.summary["inputs"][k]
            assert got["tokens"] == a.summary["tokens"]
            if got["tokens"]:
                assert got["logprob"] == pytest.approx(a.summary["logprob"], rel=1e-6)
                np.testing.assert_allclose(r.final_states[k], a.final_states[0], atol=1e-5)
        # aggregation sums, never averages perplexities
        tot = r.summary
        assert tot["tokens"] == sum(x.summary["tokens"] for x in alone)
        lp = sum(x.summary["logprob"] for x in alone)
        assert tot["logprob"] == pytest.approx(lp, rel=1e-6)
        assert tot["perplexity"] == pytest.approx(math.exp(-lp / tot["tokens"]), rel=1e-6)


def test_empty_input(lm, tmp_path):
    p = tmp_path / "e.txt"
    p.write_text("")
    r = score(lm["path"], [p]).summary
    assert r["tokens"] == 0 and r["perplexity"] is None and r["bits_per_token"] is None
    json.dumps(r, allow_nan=False)


def test_numpy_rnn_rejects_bad_ids(lm):
    m = load_model(lm["path"])
    r = NumpyRNN(m.params)
    with pytest.raises(ValueError):
        r.nll(np.array([[len(lm["vocab"])]]), np.array([[0]]))


# ---------------------------------------------------------------- output --
@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
@pytest.mark.parametrize("reset", ["none", "line"])
def test_output_levels(lm, tmp_path, ext, reset):
    v = lm["vocab"]
    ids, _ = text_ids(lm["text"], v)

    def read(p):
        if ext == "jsonl":
            return [json.loads(x) for x in p.read_text().splitlines()]
        return pq.read_table(p).to_pylist()

    out = tmp_path / f"lines.{ext}"
    r = score(lm["path"], [lm["text"], lm["text"]], level="line", output=out, reset=reset,
              chunk_tokens=4, batch=3).summary
    recs = read(out)
    n_lines = len(TEXT.split("\n"))
    assert len(recs) == 2 * n_lines
    assert [x["index"] for x in recs] == list(range(n_lines)) * 2
    assert [x["input"] for x in recs] == [0] * n_lines + [1] * n_lines
    assert sum(x["tokens"] for x in recs) == r["tokens"]
    assert sum(x["oov"] for x in recs) == r["oov"]
    assert sum(x["logprob"] for x in recs) == pytest.approx(r["logprob"], rel=1e-9)
    x = recs[0]
    assert x["perplexity"] == pytest.approx(math.exp(-x["logprob"] / x["tokens"]))
    assert x["tokens"] == len(TEXT.split("\n")[0].split()) + 1

    out = tmp_path / f"words.{ext}"
    r = score(lm["path"], [lm["text"]], level="word", output=out, reset=reset).summary
    recs = read(out)
    assert [x["token"] for x in recs] == v.decode(ids)
    assert sum(x["oov"] for x in recs) == r["oov"]
    assert sum(x["log10prob"] for x in recs) == pytest.approx(r["log10prob"], rel=1e-9)

    out = tmp_path / f"docs.{ext}"
    r = score(lm["path"], [lm["text"]], level="doc", output=out,
              reset="doc" if reset == "line" else "none").summary
    recs = read(out)
    assert len(recs) == text_ids(lm["text"], v, "blank-line")[1].sum() == 3
    assert sum(x["tokens"] for x in recs) == r["tokens"]
    assert sum(x["logprob"] for x in recs) == pytest.approx(r["logprob"], rel=1e-9)
    assert not list(tmp_path.glob(".*spool*"))


def test_output_not_written_on_error(lm, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the cat\nthe \xff dog\n")
    out = tmp_path / "o.jsonl"
    with pytest.raises(InputError, match="byte 12"):
        score(lm["path"], [lm["text"], bad], level="line", output=out)
    assert not out.exists()
    assert not list(tmp_path.glob(".*"))  # no spool left behind
    r = score(lm["path"], [bad], errors="replace").summary
    assert r["tokens"] == (2 + 1) + (3 + 1) and r["oov"] == 1  # U+FFFD: an OOV word


def test_usage_errors(lm, tmp_path):
    with pytest.raises(UsageError):
        score(lm["path"], [lm["text"]], reset="sentence")
    with pytest.raises(UsageError):
        score(lm["path"], [lm["text"]], level="line")  # no output
    with pytest.raises(InputError, match="no such file"):
        score(lm["path"], [tmp_path / "missing.txt"])


def test_model_loaded_beside_the_kernels_import(lm, tmp_path):
    """With numba likely, the model file loads on a thread of its own while the
    kernels import: the same figures, and a bad file's error comes out as it would."""
    from streamlm.compute.plan import NUMPY_MAX_TOKENS, likely_numba
    from streamlm.errors import ModelFileError
    from streamlm.options import Engine

    big = tmp_path / "big.txt"
    big.write_text("the cat sat on the mat\n" * (NUMPY_MAX_TOKENS // 5))
    small = tmp_path / "small.txt"
    small.write_text("the cat\n")
    assert likely_numba(Engine.numba, [str(small)])
    assert not likely_numba(Engine.numpy, [str(big)])
    assert likely_numba(Engine.auto, [str(big)]) and not likely_numba(Engine.auto, [str(small)])
    assert not likely_numba(Engine.auto, ["-"]) and likely_numba(Engine.auto, [str(tmp_path)])
    a = score(lm["path"], [lm["text"]], engine="numba").summary
    b = score(load_model(lm["path"]), [lm["text"]], engine="numba").summary
    assert a["logprob"] == b["logprob"] and a["tokens"] == b["tokens"]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(open(lm["path"], "rb").read()[:-100])
    with pytest.raises(ModelFileError, match="bad.npz"):
        score(str(bad), [str(big)], engine="numba")


# ---------------------------------------------------------------- resume --
class Boom(Exception):
    pass


def interrupted(after_calls):
    state = {"n": 0}

    def progress(info):
        state["n"] += 1
        if state["n"] == after_calls:
            raise Boom()
    return progress


@pytest.mark.parametrize("reset,engine", [("none", "numba"), ("none", "numpy"),
                                          ("line", "numba"), ("doc", "numpy")])
def test_resume_after_interruption_is_exact(lm, tmp_path, reset, engine):
    inputs = [lm["text"], lm["text"]]
    kw = dict(reset=reset, chunk_tokens=3, batch=2, engine=engine, level="word")
    full = score(lm["path"], inputs, output=tmp_path / "full.jsonl", **kw)
    ck = tmp_path / "ck.npz"
    for stop in (2, 5):
        with pytest.raises(Boom):
            score(lm["path"], inputs, output=tmp_path / "r.jsonl", checkpoint=ck,
                  checkpoint_every=1, progress=interrupted(stop), **kw)
        assert ck.exists() and not (tmp_path / "r.jsonl").exists()
    r = score(lm["path"], inputs, output=tmp_path / "r.jsonl", checkpoint=ck, **kw)
    assert r.summary["tokens"] == full.summary["tokens"]
    assert r.summary["logprob"] == pytest.approx(full.summary["logprob"], rel=1e-12)
    assert (tmp_path / "r.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()
    assert not ck.exists() and not (tmp_path / "ck.npz.spool").exists()


def test_resume_long_line_segments(lm, tmp_path):
    # lines longer than chunk_tokens are streamed in chunks with state: resume inside
    long = tmp_path / "long.txt"
    long.write_text(" ".join(TRAIN.split()) + "\nthe cat\n" + " ".join(TRAIN.split()[:9]) + "\n")
    kw = dict(reset="line", chunk_tokens=3, batch=2, engine="numpy")
    full = score(lm["path"], [long], **kw).summary
    ck = tmp_path / "ck.npz"
    inside = 0
    for stop in (2, 3, 3):  # each run stops after a few calls, inside the long lines
        with pytest.raises(Boom):
            score(lm["path"], [long], checkpoint=ck, checkpoint_every=1,
                  progress=interrupted(stop), **kw)
        with np.load(ck) as z:
            meta = json.loads(str(z["meta"]))
        inside += any(d["seg_offset"] > 0 for d in meta["state"].values())
    assert inside >= 2
    r = score(lm["path"], [long], checkpoint=ck, **kw).summary
    assert r["logprob"] == pytest.approx(full["logprob"], rel=1e-12)


def test_checkpoint_mismatch_refused(lm, tmp_path):
    ck = tmp_path / "ck.npz"
    with pytest.raises(Boom):
        score(lm["path"], [lm["text"]], checkpoint=ck, checkpoint_every=1, chunk_tokens=2,
              progress=interrupted(2))
    with pytest.raises(UsageError, match="different run"):
        score(lm["path"], [lm["text"]], checkpoint=ck, reset="line")
    other = tmp_path / "other.txt"
    other.write_text("the cat\n")
    with pytest.raises(UsageError, match="different run"):
        score(lm["path"], [other], checkpoint=ck)
    with pytest.raises(UsageError, match="stdin"):
        score(lm["path"], ["-"], checkpoint=tmp_path / "x.npz")
