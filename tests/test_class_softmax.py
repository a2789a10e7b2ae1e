"""The class-factored softmax: Mikolov's frequency binning, exact normalisation,
kernels and the whole model against the dense numpy reference, finite-difference
gradients for every parameter and h0, chunk invariance, the sparse optimiser
step, and the model file (format 2)."""

import json

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlm.errors import ModelFileError
from streamlm.nn import heads, optim
from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.model import RNNLM
from streamlm.nn.params import ModelConfig, Params, load_model, save_model


# ------------------------------------------------------------ the classes --
def test_frequency_binning_by_hand():
    """Counts of 6 words (ids 0..5): 10, 1, 40, 20, 5, 24 (total 100), C = 3.

    By count: ids 2, 5, 3, 0, 4, 1. sqrt(count/total) = .6325 .4899 .4472 .3162
    .2236 .1000 (sum 2.2094), normalised .2863 .2217 .2024 .1431 .1012 .0453,
    running .2863 .5080 .7104 .8535 .9547 1. A word takes the current class, then a
    new class opens when the running mass passes (c+1)/3 = .333, .667: id 2 -> 0;
    id 5 -> 0 (.508 > .333: open 1); id 3 -> 1 (.710 > .667: open 2); ids 0, 4, 1 -> 2.
    With count/total (-old-classes): running .40 .64 .84 .94 .99 1: id 2 -> 0 (open
    1); id 5 -> 1; id 3 -> 1 (open 2); ids 0, 4, 1 -> 2.
    """
    counts = np.array([10, 1, 40, 20, 5, 24])
    assert frequency_classes(counts, 3).tolist() == [2, 2, 0, 1, 2, 0]
    assert frequency_classes(counts, 3, old=True).tolist() == [2, 2, 0, 1, 2, 1]
    # ties keep id order; one class holds everything; C is at most V
    assert frequency_classes(np.array([5, 5, 5, 5]), 1).tolist() == [0, 0, 0, 0]
    assert frequency_classes(np.array([3, 1, 2]), 10).max() <= 2


def test_word_classes_order_and_ranges():
    cl = WordClasses(np.array([2, 2, 0, 1, 2, 0], np.int32))
    assert cl.C == 3 and cl.order.tolist() == [2, 5, 3, 0, 1, 4]
    assert cl.start.tolist() == [0, 2, 3, 6]
    assert cl.rank[cl.order].tolist() == list(range(6))
    assert cl.cls.tolist() == [0, 0, 1, 2, 2, 2]
    assert cl.to_internal(np.array([0, -1, 5])).tolist() == [3, -1, 1]
    with pytest.raises(ValueError, match="no words"):
        WordClasses(np.array([0, 2, 2], np.int32))


def test_ptb_like_vocabulary_uses_every_class():
    counts = (1e5 / np.arange(1, 10_001) ** 1.1).astype(np.int64) + 1  # Zipf
    cl = WordClasses(frequency_classes(counts, 100))
    assert cl.C == 100 and cl.sizes.min() >= 1
    assert cl.sizes[0] < cl.sizes[-1]  # frequent words: small classes


# ---------------------------------------------------------- the reference --
def _setup(N=3, T=5, V=17, D=4, H=6, C=4, seed=0, dtype=np.float64, tied=False):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 50, V)
    cl = WordClasses(frequency_classes(counts, C))
    cfg = ModelConfig(V=V, D=D, H=H, tied=tied, softmax="class", C=cl.C)
    p = Params.init(cfg, seed=seed, dtype=dtype, classes=cl)
    a = p.file_arrays()
    a["embed_W"] = rng.standard_normal((V, D)) * 0.5
    a["rnn_b"] = rng.standard_normal(H) * 0.1
    a["affine_b"] = rng.standard_normal(V) * 0.3
    a["class_b"] = rng.standard_normal(cl.C) * 0.3
    if tied:
        a["affine_W"] = a["embed_W"].T
    p.set_file_arrays(a)
    xs = rng.integers(0, V, size=(N, T)).astype(np.int32)
    ts = rng.integers(0, V, size=(N, T)).astype(np.int32)
    h0 = (rng.standard_normal((N, H)) * 0.5).astype(dtype)
    return p, xs, ts, h0


def _file(p):
    return {k: v.astype(np.float64) for k, v in p.file_arrays().items()}


@pytest.mark.parametrize("blas_min", [1, 10**9])  # every class through BLAS / the kernel
@pytest.mark.parametrize("N,T,H,D", [(1, 1, 4, 3), (3, 5, 6, 4), (2, 9, 5, 7)])
def test_forward_backward_match_reference(monkeypatch, blas_min, N, T, H, D):
    monkeypatch.setattr(heads, "CLASS_BLAS_MIN_TOKENS", blas_min)
    p, xs, ts, h0 = _setup(N=N, T=T, H=H, D=D)
    if N * T > 1:
        ts[0, 0] = -1  # an ignored label
    m = RNNLM(p)
    loss, hT = m.forward(xs, ts, h0)
    g = p.zeros_like()
    dh0 = m.backward(g)
    want_loss, want = ref.model_grads(_file(p), xs, ts, h0, p.classes.word_class)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
    got = g.file_arrays()
    for name in p.config.names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dh0, want["h0"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hT, want["h_last"], rtol=1e-10)
    nll, _ = m.nll(xs, ts, h0)
    _, _, want_nll = ref.model_loss(_file(p), xs, ts, h0, p.classes.word_class)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("mode", ["whole", "sliced", "in cache"])
def test_large_classes_go_through_blas_in_slices(monkeypatch, mode):
    """A class whose weights pass CLASS_BLAS_MIN_BYTES, in a model whose output
    weights pass CLASS_BLAS_WEIGHTS_BYTES, goes to BLAS from
    CLASS_BLAS_MIN_TOKENS_LARGE tokens on, its tokens in slices of at most
    CLASS_BLAS_LOGITS logits: the same NLL as the reference, and as the kernel."""
    p, xs, ts, h0 = _setup(N=4, T=9, V=40, H=6, C=3)
    sizes = p.classes.sizes
    called = []
    orig = heads.blas.gemm

    def gemm(A, B, C, *a, **k):
        called.append(B.shape[1])  # the words of a class (or C for the class logits)
        return orig(A, B, C, *a, **k)

    monkeypatch.setattr(heads.blas, "gemm", gemm)
    monkeypatch.setattr(heads, "CLASS_BLAS_MIN_TOKENS", 10**9)  # never by tokens alone
    monkeypatch.setattr(heads, "CLASS_BLAS_MIN_TOKENS_LARGE", 2)
    # the largest class is "large" (its H * size * 8 bytes), the others not
    monkeypatch.setattr(heads, "CLASS_BLAS_MIN_BYTES", int(sizes.max()) * 6 * 8)
    # the output weights (V H 8 bytes) do not fit the "cache", or (in cache) they do
    monkeypatch.setattr(heads, "CLASS_BLAS_WEIGHTS_BYTES", 40 * 6 * 8 - (mode != "in cache"))
    if mode == "sliced":
        monkeypatch.setattr(heads, "CLASS_BLAS_LOGITS", int(sizes.max()) * 3)  # 3 tokens
    m = RNNLM(p)
    nll, _ = m.nll(xs, ts, h0)
    _, _, want = ref.model_loss(_file(p), xs, ts, h0, p.classes.word_class)
    np.testing.assert_allclose(nll, want, rtol=1e-10, atol=1e-13)
    big = int(sizes.max())
    n_big = int(np.isin(p.classes.to_internal(ts), np.flatnonzero(
        p.classes.cls == int(np.argmax(sizes)))).sum())
    assert n_big >= 4  # (the setup puts enough targets there)
    want_calls = {"whole": 1, "sliced": -(-n_big // 3), "in cache": 0}[mode]
    assert called.count(big) == want_calls
    # scoring in training mode's forward gives the same NLL too
    loss, _ = m.forward(xs, ts, h0)
    np.testing.assert_allclose(loss, want.sum() / want.size, rtol=1e-10)


def test_float32_matches_float64_reference():
    p64, xs, ts, h0 = _setup(N=4, T=6, V=60, D=8, H=16, C=7)
    p32 = p64.astype(np.float32)
    m = RNNLM(p32)
    loss, _ = m.forward(xs, ts, h0.astype(np.float32))
    g = p32.zeros_like()
    m.backward(g)
    want_loss, want = ref.model_grads(_file(p64), xs, ts, h0, p64.classes.word_class)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    got = g.file_arrays()
    for name in p64.config.names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    nll, _ = m.nll(xs, ts, h0.astype(np.float32))
    _, _, want_nll = ref.model_loss(_file(p64), xs, ts, h0, p64.classes.word_class)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_probabilities_sum_to_one(dtype, tol):
    """For random states, sum over all V words of P(w | h) is 1: through the scoring
    kernels (every word as the target of the same state) and through logprobs."""
    p, _, _, _ = _setup(V=41, H=6, C=6, dtype=dtype)
    m = RNNLM(p)
    rng = np.random.default_rng(9)
    for _ in range(3):
        h0 = (rng.standard_normal((1, 6)) * 2).astype(dtype)
        V = p.config.V
        xs = np.full((V, 1), 3, np.int32)
        ts = np.arange(V, dtype=np.int32)[:, None]
        nll, _ = m.nll(xs, ts, np.repeat(h0, V, axis=0))
        assert abs(np.exp(-nll.astype(np.float64)).sum() - 1) < tol
        h = m.step(np.array([3]), h0)
        assert abs(np.exp(m.logprobs(h).astype(np.float64)).sum() - 1) < tol
        np.testing.assert_allclose(-m.logprobs(h)[0], nll[:, 0], rtol=10 * tol, atol=tol)


def _numeric_grad(f, x, eps=1e-5):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("tied,dropout", [(False, 0.0), (True, 0.0), (False, 0.3)])
def test_finite_difference_gradients(tied, dropout):
    """Central differences of the mean loss, float64: class_W, class_b, affine_W,
    affine_b, the RNN weights, the embedding and h0 (relative error < 1e-6)."""
    D = H = 4 if tied else None
    p, xs, ts, h0 = _setup(N=2, T=4, V=11, D=D or 3, H=H or 5, C=3, tied=tied)
    ts[1, 2] = -1
    m = RNNLM(p, dropout=dropout, seed=7)
    state = {"h0": h0}
    rng_state = m.rng.bit_generator.state

    def loss():
        m.rng.bit_generator.state = rng_state  # same dropout masks every call
        return m.forward(xs, ts, state["h0"], train=True)[0]

    loss()
    g = p.zeros_like()
    dh0 = m.backward(g)
    for name in p.config.storage_names():
        err = _rel_err(_numeric_grad(loss, p[name]), g[name])
        assert err < 1e-6, (name, err)
    assert _rel_err(_numeric_grad(loss, state["h0"]), dh0) < 1e-6
    assert np.abs(g["class_W"]).max() > 0 and np.abs(dh0).max() > 0


@st.composite
def _cuts(draw, L=30):
    inner = draw(st.lists(st.integers(1, L - 1), max_size=6, unique=True))
    return [0, *sorted(inner), L]


@settings(max_examples=20, deadline=None)
@given(cuts=_cuts())
def test_chunks_carry_the_state(cuts):
    p, _, _, _ = _setup(V=23, H=6, C=5, dtype=np.float64)
    rng = np.random.default_rng(4)
    L = cuts[-1]
    x = rng.integers(0, 23, size=(2, L)).astype(np.int32)
    t = rng.integers(0, 23, size=(2, L)).astype(np.int32)
    m = RNNLM(p)
    want, h_want = m.nll(x, t)
    h, parts = None, []
    for a, b in zip(cuts, cuts[1:]):
        nll, h = m.nll(x[:, a:b], t[:, a:b], h)
        parts.append(nll)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), want, rtol=1e-12)
    np.testing.assert_allclose(h, h_want, rtol=1e-12)


def test_scoring_never_touches_the_other_classes():
    """Scoring a token costs H (C + |c|): the columns of the other classes are never
    read (NaN there would show in the NLL)."""
    p, xs, ts, h0 = _setup(V=30, C=5)
    wc = p.classes.word_class
    ts = np.flatnonzero(wc == 1)[np.arange(ts.size) % (wc == 1).sum()].reshape(ts.shape)
    ts = ts.astype(np.int32)
    want, _ = RNNLM(p).nll(xs, ts, h0)
    used = np.unique(wc[ts])
    a = p.file_arrays()
    other = ~np.isin(p.classes.word_class, used)
    assert other.any()
    a["affine_W"][:, other] = np.nan
    a["affine_b"][other] = np.nan
    p.set_file_arrays(a)
    got, _ = RNNLM(p).nll(xs, ts, h0)
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------- the optimiser --
def test_sparse_step_touches_only_its_rows_and_sgd_equals_dense():
    p, xs, ts, h0 = _setup(V=300, C=17, D=5, H=6, dtype=np.float32)
    m = RNNLM(p)
    m.forward(xs, ts, h0)
    g = p.zeros_like()
    m.backward(g)
    seg = m.touched()
    inside = np.zeros(p.flat.shape, bool)
    for a, b in seg:
        inside[a:b] = True
    assert not g.flat[~inside].any()  # the gradient lives inside the segments
    assert inside.sum() < 0.7 * inside.size
    assert optim.sum_squares(g.flat, seg) == pytest.approx(
        float(np.sum(g.flat.astype(np.float64) ** 2)), rel=1e-12)
    dense, sparse = p.flat.copy(), p.flat.copy()
    lr, one = np.float32(0.1), np.float32(1)
    optim.sgd_update(dense, g.flat, lr, one)
    g2 = g.flat.copy()
    optim.sgd_update(sparse, g2, lr, one, seg)
    np.testing.assert_array_equal(dense, sparse)
    assert not g2.any()  # the sparse step zeroes the gradient it used
    # lazy Adam: untouched weights and moments stay, touched ones move as dense Adam
    mo, vo = np.zeros_like(p.flat), np.zeros_like(p.flat)
    md, vd = np.zeros_like(p.flat), np.zeros_like(p.flat)
    lazy, full = p.flat.copy(), p.flat.copy()
    f = np.float32
    args = (f(1e-3), f(0.9), f(0.999), f(1e-8), one)
    optim.adam_update(full, g.flat, md, vd, *args)
    optim.adam_update(lazy, g.flat, mo, vo, *args, seg)
    np.testing.assert_array_equal(lazy[inside], full[inside])
    np.testing.assert_array_equal(lazy[~inside], p.flat[~inside])
    assert not mo[~inside].any()
    assert not g.flat.any()
    g.flat[:] = 1
    optim.zero(g.flat, seg)
    assert not g.flat[inside].any() and g.flat[~inside].all()


# --------------------------------------------------------- the model file --
def _save(tmp_path, **kw):
    p, xs, ts, h0 = _setup(dtype=np.float32, **kw)
    vocab = ["<unk>", "<eos>"] + [f"w{i}" for i in range(p.config.V - 2)]
    path = tmp_path / "c.npz"
    save_model(path, p, vocab)
    return path, p, vocab, xs, ts


def test_model_file_holds_the_classes_and_numpy_alone_computes_p(tmp_path):
    path, p, vocab, xs, ts = _save(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    meta = json.loads(str(a["meta"]))
    assert meta["format_version"] == 2 and meta["softmax"] == "class" and meta["C"] == 4
    assert a["word_class"].dtype == np.int32 and a["word_class"].shape == (17,)
    assert a["class_W"].shape == (6, 4) and a["class_b"].shape == (4,)
    # docs/format.md's recipe: P(w | h) from the file's arrays, numpy alone
    h = np.random.default_rng(0).standard_normal(6).astype(np.float32)
    zc = h @ a["class_W"] + a["class_b"]
    pc = np.exp(zc - zc.max())
    pc /= pc.sum()
    zw = h @ a["affine_W"] + a["affine_b"]
    pw = np.zeros(17)
    for c in range(4):
        words = a["word_class"] == c
        e = np.exp(zw[words] - zw[words].max())
        pw[words] = pc[c] * e / e.sum()
    m = load_model(path)
    assert m.params.classes == p.classes
    np.testing.assert_allclose(np.exp(RNNLM(m.params).logprobs(h[None]))[0], pw, rtol=1e-5)
    assert abs(pw.sum() - 1) < 1e-6


def test_model_file_checks_cover_the_classes(tmp_path):
    path, p, vocab, _, _ = _save(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}

    def write(**changes):
        np.savez(path, **{**a, **changes})

    write(class_W=a["class_W"] + 1)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)
    wc = a["word_class"].copy()
    wc[wc == 1] = 0  # class 1 empty
    write(word_class=wc)
    with pytest.raises(ModelFileError, match="class 1 has no words"):
        load_model(path)
    write(word_class=a["word_class"].astype(np.int64))
    with pytest.raises(ModelFileError, match="word_class"):
        load_model(path)
    b = dict(a)
    del b["class_b"]
    np.savez(path, **b)
    with pytest.raises(ModelFileError, match="missing arrays: class_b"):
        load_model(path)


def test_a_full_softmax_file_is_still_version_1(tmp_path):
    p = Params.init(ModelConfig(V=5, D=3, H=4), seed=0)
    save_model(tmp_path / "f.npz", p, ["<unk>", "<eos>", "a", "b", "c"])
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["format_version"] == 1
        assert "word_class" not in z.files
