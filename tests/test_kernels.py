"""Each kernel against the plain numpy reference in tests/reference.py."""

import numpy as np
import pytest
import reference as ref

from streamlm.compute import kernels as K

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}
DTYPES = [np.float64, np.float32]
SHAPES = [  # (N, T, D, H, V)
    (1, 1, 3, 4, 5),
    (1, 7, 5, 3, 11),
    (3, 1, 4, 4, 6),
    (4, 5, 6, 9, 13),
]


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,D,V", [(1, 1, 2), (9, 4, 3), (50, 7, 20)])
def test_embedding_forward_backward_repeated_ids(dtype, M, D, V):
    rng = _rng(1)
    W = rng.standard_normal((V, D)).astype(dtype)
    ids = rng.integers(0, V, size=M).astype(np.int32)
    if M > 2:
        ids[:3] = ids[0]  # repeated ids must accumulate
    out = np.empty((M, D), dtype)
    K.embedding_forward(out, ids, W)
    np.testing.assert_array_equal(out, W[ids])
    dout = rng.standard_normal((M, D)).astype(dtype)
    dW = np.zeros((V, D), dtype)
    K.embedding_backward(dW, ids, dout)
    want = np.zeros((V, D), dtype)
    ref.embedding_backward(want, ids, dout)
    np.testing.assert_allclose(dW, want, **TOL[dtype])
    # accumulates into what the caller left there
    K.embedding_backward(dW, ids, dout)
    np.testing.assert_allclose(dW, 2 * want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,T,D,H,V", SHAPES)
def test_rnn_forward_backward_vs_reference(dtype, N, T, D, H, V):
    rng = _rng(2)
    x = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype) * 0.5
    Wx = (rng.standard_normal((D, H)) / np.sqrt(D)).astype(dtype)
    Wh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    b = rng.standard_normal(H).astype(dtype) * 0.1
    want_hs = ref.rnn_forward(x, h0, Wx, Wh, b)

    xw = np.ascontiguousarray((x @ Wx + b).transpose(1, 0, 2))  # (T, N, H)
    hs = np.empty((T, N, H), dtype)
    K.rnn_forward(hs, xw, h0, Wh, np.zeros((T, N), np.uint8))
    np.testing.assert_allclose(hs.transpose(1, 0, 2), want_hs, **TOL[dtype])

    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    dxs, dh0_want, dWx, dWh, db = ref.rnn_backward(dhs, x, h0, want_hs, Wx, Wh)
    dxw = np.empty((T, N, H), dtype)
    dh0 = np.empty((N, H), dtype)
    K.rnn_backward(dxw, dh0, np.ascontiguousarray(dhs.transpose(1, 0, 2)), hs, Wh)
    np.testing.assert_allclose(dh0, dh0_want, **TOL[dtype])
    hprev = np.concatenate([h0[None], hs[:-1]]).reshape(T * N, H)
    D2 = dxw.reshape(T * N, H)
    np.testing.assert_allclose(hprev.T @ D2, dWh, **TOL[dtype])
    np.testing.assert_allclose(x.transpose(1, 0, 2).reshape(T * N, D).T @ D2, dWx, **TOL[dtype])
    np.testing.assert_allclose(D2.sum(0), db, **TOL[dtype])
    np.testing.assert_allclose((D2 @ Wx.T).reshape(T, N, D).transpose(1, 0, 2), dxs,
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_forward_reset_mask(dtype):
    rng = _rng(3)
    N, T, D, H = 3, 6, 4, 5
    x = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype)
    Wx = rng.standard_normal((D, H)).astype(dtype) * 0.3
    Wh = rng.standard_normal((H, H)).astype(dtype) * 0.3
    b = np.zeros(H, dtype)
    reset = (rng.random((N, T)) < 0.3).astype(np.uint8)
    reset[0, 0] = 1
    want = ref.rnn_forward(x, h0, Wx, Wh, b, reset=reset)
    xw = np.ascontiguousarray((x @ Wx + b).transpose(1, 0, 2))
    hs = np.empty((T, N, H), dtype)
    K.rnn_forward(hs, xw, h0, Wh, np.ascontiguousarray(reset.T))
    np.testing.assert_allclose(hs.transpose(1, 0, 2), want, **TOL[dtype])
    # the reset really changes the result (the test can fail)
    hs2 = np.empty_like(hs)
    K.rnn_forward(hs2, xw, h0, Wh, np.zeros((T, N), np.uint8))
    assert not np.allclose(hs2[0, 0], hs[0, 0])


def _panels(W):
    P = np.empty((-(-W.shape[1] // K.PANEL), W.shape[0], K.PANEL), W.dtype)
    K.rnn_panels(P, W)
    return P


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K_,J", [(1, 1), (5, 64), (70, 65), (3, 130)])
def test_rnn_panels_layout(dtype, K_, J):
    W = _rng(5).standard_normal((K_, J)).astype(dtype)
    P = _panels(W)
    assert P.shape == (-(-J // 64), K_, 64)
    flat = P.transpose(1, 0, 2).reshape(K_, -1)  # (K, nb*64): W then zero columns
    np.testing.assert_array_equal(flat[:, :J], W)
    assert not flat[:, J:].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 2, 3, 5])
@pytest.mark.parametrize("H", [3, 64, 100])
def test_rnn_forward_rows_panels_streams_and_resets(dtype, N, H):
    """Groups of 1, 2, 3 and 4 + 1 streams, each a sub-range of the
    streams, with resets, against the reference; the others stay untouched."""
    rng = _rng(6)
    T, D = 9, 4
    x = rng.standard_normal((N + 2, T, D)).astype(dtype)
    h0 = rng.standard_normal((N + 2, H)).astype(dtype) * 0.5
    Wx = (rng.standard_normal((D, H)) / np.sqrt(D)).astype(dtype)
    Wh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    b = rng.standard_normal(H).astype(dtype) * 0.1
    reset = (rng.random((N + 2, T)) < 0.2).astype(np.uint8)
    reset[1, 0] = 1
    reset[-2, T - 1] = 1
    want = ref.rnn_forward(x, h0, Wx, Wh, b, reset=reset)
    xw = np.ascontiguousarray((x @ Wx + b).transpose(1, 0, 2))
    reset_tm = np.ascontiguousarray(reset.T)
    hs = np.full((T, N + 2, H), 7.0, dtype)
    K.rnn_forward_rows(hs, xw, h0, _panels(Wh), reset_tm, 1, N + 1)
    np.testing.assert_allclose(hs[:, 1:N + 1].transpose(1, 0, 2), want[1:N + 1], **TOL[dtype])
    assert (hs[:, 0] == 7).all() and (hs[:, N + 1] == 7).all()
    # one stream at a time: the same up to rounding (the grouping is not maths)
    hs1 = np.empty_like(hs)
    for n in range(1, N + 1):
        K.rnn_forward_rows(hs1, xw, h0, _panels(Wh), reset_tm, n, n + 1)
    np.testing.assert_allclose(hs1[:, 1:N + 1], hs[:, 1:N + 1], rtol=1e-12 if dtype == np.float64
                               else 1e-6, atol=0)
    # the input terms as rows of a table (a scoring model's): the same bytes
    table = np.ascontiguousarray(xw.reshape(T * (N + 2), H)[::-1])
    xid = (T * (N + 2) - 1 - np.arange(T * (N + 2))).reshape(T, N + 2)
    hs2 = np.full((T, N + 2, H), 7.0, dtype)
    K.rnn_forward_rows_x(hs2, table, xid.astype(np.int32), h0, _panels(Wh), reset_tm, 1, N + 1)
    assert hs2.tobytes() == hs.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 2, 3, 5])
@pytest.mark.parametrize("H", [3, 64, 100])
def test_rnn_backward_rows_panels_streams(dtype, N, H):
    """The backward over Wh^T panels for groups of 1, 2, 3 and 4 + 1 streams, a
    sub-range of the streams, against the reference; the others stay untouched."""
    rng = _rng(7)
    T, D = 8, 3
    x = rng.standard_normal((N + 2, T, D)).astype(dtype)
    h0 = rng.standard_normal((N + 2, H)).astype(dtype) * 0.5
    Wx = (rng.standard_normal((D, H)) / np.sqrt(D)).astype(dtype)
    Wh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    b = rng.standard_normal(H).astype(dtype) * 0.1
    hs_ref = ref.rnn_forward(x, h0, Wx, Wh, b)
    dhs = rng.standard_normal((N + 2, T, H)).astype(dtype)
    s = slice(1, N + 1)
    _, dh0_want, _, dWh, db = ref.rnn_backward(dhs[s], x[s], h0[s], hs_ref[s], Wx, Wh)
    hs = np.ascontiguousarray(hs_ref.transpose(1, 0, 2))
    dxw = np.full((T, N + 2, H), 7.0, dtype)
    dh0 = np.full((N + 2, H), 7.0, dtype)
    K.rnn_backward_rows(dxw, dh0, np.ascontiguousarray(dhs.transpose(1, 0, 2)), hs,
                        _panels(np.ascontiguousarray(Wh.T)), 1, N + 1)
    tol = TOL[dtype]
    np.testing.assert_allclose(dh0[s], dh0_want, **tol)
    hprev = np.concatenate([h0[None, s], hs[:-1, s]]).reshape(T * N, H)
    D2 = dxw[:, s].reshape(T * N, H)
    # sums of T*N terms that cancel: float32 keeps 1e-6 of their size, not of the result
    sums = tol if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hprev.T @ D2, dWh, **sums)
    np.testing.assert_allclose(D2.sum(0), db, **sums)
    assert (dxw[:, 0] == 7).all() and (dxw[:, N + 1] == 7).all()
    assert (dh0[0] == 7).all() and (dh0[N + 1] == 7).all()


def test_rnn_rows_reject_wrong_panels():
    H = 5
    hs = np.zeros((2, 1, H))
    bad = np.zeros((1, H, 32))
    with pytest.raises(ValueError):
        K.rnn_forward_rows(hs, np.zeros_like(hs), np.zeros((1, H)), bad,
                           np.zeros((2, 1), np.uint8), 0, 1)
    with pytest.raises(ValueError):
        K.rnn_backward_rows(np.zeros_like(hs), np.zeros((1, H)), np.zeros_like(hs), hs, bad,
                            0, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,V", [(1, 2), (6, 5), (40, 300)])
def test_softmax_ce_forward_and_fused_vs_reference(dtype, M, V):
    rng = _rng(4)
    logits = (rng.standard_normal((M, V)) * 3).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    labels = rng.integers(0, V, size=M).astype(np.int32)
    if M > 1:
        labels[1] = -1  # ignored
    nll_want, loss_want, d_want = ref.softmax_ce((logits + b)[None], labels[None])
    nll = np.empty(M, np.float64)
    K.softmax_ce_forward(nll, logits, b, labels)
    tol = TOL[dtype]
    np.testing.assert_allclose(nll, nll_want[0], **tol)
    count = int((labels >= 0).sum())
    nll2 = np.empty(M, np.float64)
    g = logits.copy()
    K.softmax_ce_fused(nll2, g, b, labels, dtype(1.0 / count), logits, np.eye(V, dtype=dtype))
    np.testing.assert_allclose(nll2, nll_want[0], **tol)
    np.testing.assert_allclose(nll2.sum() / count, loss_want, **tol)
    np.testing.assert_allclose(g, d_want[0], **tol)
    if M > 1:
        assert nll2[1] == 0 and not g[1].any()


def test_softmax_ce_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4 - 1]], np.float32)
    b = np.zeros(3, np.float32)
    labels = np.array([2, 1], np.int32)
    nll = np.empty(2)
    K.softmax_ce_forward(nll, logits, b, labels)
    assert np.all(np.isfinite(nll))
    np.testing.assert_allclose(nll[0], 2e4, rtol=1e-6)
    np.testing.assert_allclose(nll[1], np.log1p(np.exp(-1.0)), rtol=1e-5)
    g = logits.copy()
    K.softmax_ce_fused(nll, g, b, labels, np.float32(0.5), logits, np.eye(3, dtype=np.float32))
    np.testing.assert_allclose(nll[0], 2e4, rtol=1e-6)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g[0], [0.5, 0.0, -0.5], atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_ce_far_target_takes_the_exact_path(dtype):
    # The sum is shifted by the target's own logit; a target ~100 nats below
    # the row max overflows that shift and the row is redone with the max,
    # the fused kernel recomputing its (already overwritten) logits from h @ W.
    rng = _rng(9)
    M, H, V = 6, 5, 70
    h = rng.standard_normal((M, H)).astype(dtype)
    W = rng.standard_normal((H, V)).astype(dtype)
    logits = (h @ W).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    labels = rng.integers(0, V, size=M).astype(np.int32)
    W[:, 3] *= 60  # column 3 dominates every row whose h . W[:, 3] is large
    logits = (h @ W).astype(dtype)
    labels[:] = np.argmin(logits + b, axis=1)
    far = (logits + b).max(1) - (logits + b)[np.arange(M), labels]
    assert (far > 80).sum() >= 2 and (far < 60).sum() >= 1  # both paths taken
    nll_want, loss_want, d_want = ref.softmax_ce((logits + b)[None], labels[None])
    nll = np.empty(M, np.float64)
    K.softmax_ce_forward(nll, logits, b, labels)
    np.testing.assert_allclose(nll, nll_want[0], **TOL[dtype])
    g = logits.copy()
    db = np.zeros(V, dtype)
    K.softmax_ce_fused_db(nll, g, b, labels, dtype(1.0 / M), db, h, W)
    np.testing.assert_allclose(nll, nll_want[0], **TOL[dtype])
    np.testing.assert_allclose(g, d_want[0], rtol=TOL[dtype]["rtol"], atol=1e-6)
    np.testing.assert_allclose(db, d_want[0].sum(0), rtol=TOL[dtype]["rtol"], atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_rows(dtype):
    rng = _rng(5)
    z = rng.standard_normal((4, 9)).astype(dtype)
    b = rng.standard_normal(9).astype(dtype)
    out = np.empty_like(z)
    K.log_softmax_rows(out, z, b)
    s = (z + b).astype(np.float64)
    want = s - s.max(1, keepdims=True)
    want = want - np.log(np.exp(want).sum(1, keepdims=True))
    np.testing.assert_allclose(out, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimisers_and_clipping_vs_reference(dtype):
    rng = _rng(6)
    P = 1001
    p = rng.standard_normal(P).astype(dtype)
    g = rng.standard_normal(P).astype(dtype)
    np.testing.assert_allclose(K.sum_squares(g), np.sum(g.astype(np.float64) ** 2), rtol=1e-12)
    g2 = g * dtype(0.25)  # what clipping used to do in a separate pass

    q = p.copy()
    K.sgd_update(q, g, dtype(0.1), dtype(1.0))
    np.testing.assert_allclose(q, p - dtype(0.1) * g, **TOL[dtype])
    # the clipping rate applied inside the update == scaling g first, bitwise
    q, q2 = p.copy(), p.copy()
    K.sgd_update(q, g, dtype(0.1), dtype(0.25))
    K.sgd_update(q2, g2, dtype(0.1), dtype(1.0))
    np.testing.assert_array_equal(q, q2)
    assert not np.array_equal(q, p - dtype(0.1) * g)

    # Adam, the book's formulation (common/optimizer.py), three steps
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    q = p.copy()
    m = np.zeros(P, dtype)
    v = np.zeros(P, dtype)
    pw, mw, vw = p.astype(np.float64), np.zeros(P), np.zeros(P)
    for it in range(1, 4):
        gi = (g * it).astype(dtype)
        lr_t = lr * np.sqrt(1 - b2 ** it) / (1 - b1 ** it)
        K.adam_update(q, gi, m, v, dtype(lr_t), dtype(b1), dtype(b2), dtype(eps), dtype(1.0))
        mw += (1 - b1) * (gi - mw)
        vw += (1 - b2) * (gi.astype(np.float64) ** 2 - vw)
        pw -= lr_t * mw / (np.sqrt(vw) + eps)
    np.testing.assert_allclose(q, pw, rtol=1e-5 if dtype == np.float32 else 1e-10, atol=1e-6)
    # gscale: the clipping rate on the fly == scaling g first, bitwise
    args = (dtype(lr), dtype(b1), dtype(b2), dtype(eps))
    q, m, v = p.copy(), np.zeros(P, dtype), np.zeros(P, dtype)
    q2, m2, v2 = p.copy(), np.zeros(P, dtype), np.zeros(P, dtype)
    K.adam_update(q, g, m, v, *args, dtype(0.25))
    K.adam_update(q2, g2, m2, v2, *args, dtype(1.0))
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(v, v2)


def test_all_finite():
    x = np.ones(10, np.float32)
    assert K.all_finite(x)
    x[7] = np.nan
    assert not K.all_finite(x)
    x[7] = np.inf
    assert not K.all_finite(x)


def test_sample_from_logits_follows_distribution():
    logits = np.log(np.array([0.1, 0.2, 0.7])).astype(np.float32)
    b = np.zeros(3, np.float32)
    rng = np.random.default_rng(0)
    draws = np.array([K.sample_from_logits(logits, b, 1.0, u) for u in rng.random(20000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.015)
    # low temperature is (almost) argmax
    draws = [K.sample_from_logits(logits, b, 0.05, u) for u in rng.random(200)]
    assert np.mean(np.array(draws) == 2) > 0.99


def test_light_cache_loads_in_the_command():
    """In the command's mode (STREAMLM_FAST_START=1) a cached kernel loads with only
    numba's runtime started, and runs right, allocation included; a kernel that
    must compile afterwards (here the test's own) gets numba's whole set-up; as a
    library, numba is left as it is."""
    import os
    import subprocess
    import sys

    prog = (
        "import numpy as np, sys\n"
        "from streamlm.compute import kernels as K, numba_setup\n"
        "print(numba_setup.SETUP['cache_loads'])\n"
        "z = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -2.0]], dtype=np.float32)\n"
        "out = np.empty(2); K.softmax_ce_forward(out, z, np.zeros(3, np.float32),"
        " np.array([2, 0], np.int32))\n"  # allocates inside: needs NRT
        "ref = np.log(np.exp(z.astype(float)).sum(1)) - z[[0, 1], [2, 0]]\n"
        "assert np.allclose(out, ref, rtol=1e-5), (out, ref)\n"
        "from numba import njit\n"
        "f = njit(lambda a: np.sqrt((a * a).sum()))\n"  # compiled now
        "assert abs(f(np.array([3.0, 4.0])) - 5.0) < 1e-12\n"
        "print('ok')\n")
    for fast, want in (("1", "runtime only"), ("0", "numba's own")):
        env = {**os.environ, "STREAMLM_FAST_START": fast}
        env.pop("STREAMLM_NUMBA_BLAS", None)
        r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:2] == [want, "ok"]


def test_numba_is_set_up_before_the_first_kernel():
    """numba_setup.configure() runs before numba builds its CPU target (at the first
    @njit of streamlm.compute.kernels): the features decided are the ones the kernels compile
    for (512-bit vectors on AVX-512), and a second call changes nothing."""
    import os
    import subprocess
    import sys

    prog = (
        "import streamlm.compute.kernels\n"
        "from numba.core import config\n"
        "from streamlm.compute import numba_setup\n"
        "first = dict(numba_setup.SETUP)\n"
        "assert numba_setup.configure() == first\n"
        "print(first['vectors'])\n"
        "print((config.CPU_FEATURES or '').endswith('-prefer-256-bit'))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    vectors, wide = r.stdout.split("\n")[:2]
    assert vectors in ("512-bit vectors", "no AVX-512"), vectors  # not "too late"
    assert wide == str(vectors == "512-bit vectors")
