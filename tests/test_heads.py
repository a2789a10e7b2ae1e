"""The output layers (streamlm.nn.heads): the full and the class-factored softmax against
the numpy reference (tests/reference.py). Scoring (``score``) gives each target's NLL,
the whole distribution (``logprobs``) the same numbers, and one thread's share
(``score_rows``, the single-stream pipeline's) the same as ``score``."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from streamlm.compute import threads
from streamlm.nn import heads
from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.params import ModelConfig, Params

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}
V, H = 23, 6


def layer(softmax: str, dtype, seed=0):
    """(the output layer, its model's arrays in word-id order, float64, as the reference
    takes them, and the class of each word or None)."""
    rng = np.random.default_rng(seed)
    classes, kw = None, {}
    if softmax == "class":
        classes = WordClasses(frequency_classes(rng.integers(1, 50, V), 4))
        kw = dict(softmax="class", C=classes.C)
    p = Params.init(ModelConfig(V=V, D=5, H=H, **kw), seed=seed, dtype=dtype, classes=classes)
    a = p.file_arrays()
    a["affine_W"] = rng.standard_normal((H, V))
    a["affine_b"] = rng.standard_normal(V) * 0.3
    if classes is not None:
        a["class_W"] = rng.standard_normal((H, classes.C))
        a["class_b"] = rng.standard_normal(classes.C) * 0.3
    p.set_file_arrays(a)
    f64 = {k: v.astype(np.float64) for k, v in p.file_arrays().items()}
    return heads.output_layer(p), f64, None if classes is None else classes.word_class


def reference_nll(a, word_class, hs, labels):
    """The reference's NLL of each row's target (word ids; -1: none, 0)."""
    nll, _, _, _ = ref.output_layer(a, hs.astype(np.float64)[None], labels[None], word_class)
    return nll[0]


def internal(head, ids):
    """Word ids as the layer takes them (a class softmax keeps its words in class order)."""
    classes = head.params.classes
    return ids.astype(np.int32) if classes is None else classes.to_internal(ids)


def rows(dtype, M=50, seed=1):
    rng = np.random.default_rng(seed)
    hs = (rng.standard_normal((M, H)) * 1.5).astype(dtype)
    labels = rng.integers(0, V, M).astype(np.int32)
    labels[[3, M - 2]] = -1  # ignored
    labels[4:6] = labels[2]  # repeated targets
    return hs, labels


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("softmax", ["full", "class"])
def test_score_is_the_reference(monkeypatch, softmax, dtype):
    """In slices of a few rows too (the logits of a bounded number of rows at a time)."""
    head, a, wc = layer(softmax, dtype)
    hs, labels = rows(dtype)
    want = reference_nll(a, wc, hs, labels)
    assert want[3] == 0 and want[-2] == 0
    for limit in (None, 4):
        if limit is not None:
            monkeypatch.setattr(heads, "PROJ_ROWS", limit)
            monkeypatch.setattr(heads, "CLASS_SCORE_ROWS", limit)
        out = np.full(len(hs), np.nan)
        head.score(hs, internal(head, labels), out, threads.pool())
        np.testing.assert_allclose(out, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("softmax", ["full", "class"])
def test_logprobs_are_the_reference_for_every_word(softmax, dtype):
    """logprobs(h): log p of every word (the layer's order), the reference's NLL of each
    word as the target, and the scored targets' among them."""
    head, a, wc = layer(softmax, dtype)
    hs, labels = rows(dtype, M=7)
    lp = head.logprobs(hs)
    words = np.arange(V)
    every = reference_nll(a, wc, np.repeat(hs, V, axis=0), np.tile(words, len(hs)))
    np.testing.assert_allclose(-lp[:, internal(head, words)], every.reshape(len(hs), V),
                               **TOL[dtype])
    out = np.empty(len(hs))
    head.score(hs, internal(head, labels), out, threads.pool())
    ok = labels >= 0
    np.testing.assert_allclose(-lp[ok, internal(head, labels[ok])], out[ok], **TOL[dtype])
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(axis=1), 1.0,
                               rtol=TOL[dtype]["rtol"])


@pytest.mark.parametrize("softmax", ["full", "class"])
def test_score_rows_is_score(softmax):
    """One thread's share with its own scratch (the pipeline's), a slice at a time: the
    numbers of score (to float32 rounding: a BLAS may cut the product otherwise)."""
    head, _, _ = layer(softmax, np.float32)
    hs, labels = rows(np.float32, M=40)
    ids = internal(head, labels)
    want = np.empty(len(hs))
    head.score(hs, ids, want, threads.pool())
    work = head.scratch(1, head.row_limit(len(hs)))[0]
    got = np.empty(len(hs))
    for a in range(0, len(hs), 16):
        b = min(len(hs), a + 16)
        head.score_rows(work, hs[a:b], ids[a:b], got[a:b])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
