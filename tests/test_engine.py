"""streamlm's own threads: the split work (row blocks, stream groups, V
columns, the pipelined single-stream scorer, the optimiser slices) gives the
reference's numbers for any thread count."""

import numpy as np
import pytest
import reference as ref

from streamlm.compute import kernels as K
from streamlm.compute import plan as PL
from streamlm.compute import threads
from streamlm.nn import cells as C
from streamlm.nn import heads, optim
from streamlm.nn.model import RNNLM
from streamlm.nn.params import PARAM_NAMES, ModelConfig, Params


@pytest.fixture
def nthreads_of():
    before = threads.get_num_threads()
    yield threads.set_num_threads
    threads.set_num_threads(before)


def _setup(N, T, V=23, D=5, H=6, seed=0):
    p = Params.init(ModelConfig(V=V, D=D, H=H), seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    p["embed_W"][...] = rng.standard_normal((V, D)) * 0.5
    p["rnn_b"][...] = rng.standard_normal(H) * 0.1
    p["affine_b"][...] = rng.standard_normal(V) * 0.1
    xs = rng.integers(0, V, size=(N, T)).astype(np.int32)
    ts = rng.integers(0, V, size=(N, T)).astype(np.int32)
    ts[0, 0] = -1
    h0 = rng.standard_normal((N, H)) * 0.5
    return p, xs, ts, h0


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("recur", ["kernel", "blas"])
@pytest.mark.parametrize("N,T", [(1, 7), (2, 5), (5, 3), (7, 4)])
def test_forward_backward_any_thread_count(nthreads_of, nthreads, recur, N, T):
    nthreads_of(nthreads)
    p, xs, ts, h0 = _setup(N, T)
    m = RNNLM(p, recur=recur)
    loss, hT = m.forward(xs, ts, h0)
    g = p.zeros_like()
    g.flat[...] = 1.0  # backward accumulates
    dh0 = m.backward(g)
    want_loss, want = ref.model_grads({n: np.array(a) for n, a in p.items()}, xs, ts, h0)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
    for name in PARAM_NAMES:
        np.testing.assert_allclose(g[name] - 1.0, want[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(dh0, want["h0"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hT, want["h_last"], rtol=1e-10)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("N", [1, 2, 4])
@pytest.mark.parametrize("split_h", [None, 1])
def test_nll_any_thread_count_and_pipelined_single_stream(nthreads_of, monkeypatch, nthreads,
                                                          N, split_h):
    """split_h=1: one stream's recurrence on two threads from H=1 on (the model's
    path at large H, here for every H)."""
    nthreads_of(nthreads)
    if split_h is not None:
        monkeypatch.setattr(PL, "SPLIT_MIN_H", split_h)
    monkeypatch.setattr(heads, "PROJ_ROWS", 4)  # many projection slices / pipeline segments
    monkeypatch.setattr(PL, "PIPE_ROWS", 3)
    monkeypatch.setattr(PL, "CLASS_PIPE_ROWS", 3)
    p, xs, ts, h0 = _setup(N, 37)
    rng = np.random.default_rng(5)
    reset = (rng.random(xs.shape) < 0.1).astype(np.uint8)
    m = RNNLM(p)
    got, hT = m.nll(xs, ts, h0, reset=reset)
    # reference: the recurrence with resets, then the per-token NLL
    x = ref.embedding_forward(p["embed_W"], xs)
    hs = ref.rnn_forward(x, h0, p["rnn_Wx"], p["rnn_Wh"], p["rnn_b"], reset=reset)
    want, _, _ = ref.softmax_ce(hs @ p["affine_W"] + p["affine_b"], ts)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hT, hs[:, -1], rtol=1e-10)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_optimiser_wrappers_match_kernels(nthreads_of, nthreads):
    nthreads_of(nthreads)
    rng = np.random.default_rng(7)
    P = 200_003  # several slices, a ragged last one
    p = rng.standard_normal(P).astype(np.float32)
    g = rng.standard_normal(P).astype(np.float32)
    want = np.sum(g.astype(np.float64) ** 2)
    np.testing.assert_allclose(optim.sum_squares(g), want, rtol=1e-12)
    a, b = p.copy(), p.copy()
    optim.sgd_update(a, g, np.float32(0.1), np.float32(0.5))
    K.sgd_update(b, g, np.float32(0.1), np.float32(0.5))
    np.testing.assert_array_equal(a, b)
    a, b = p.copy(), p.copy()
    ma, va = np.zeros_like(p), np.zeros_like(p)
    mb, vb = np.zeros_like(p), np.zeros_like(p)
    f = np.float32
    for _ in range(3):
        optim.adam_update(a, g, ma, va, f(1e-3), f(0.9), f(0.999), f(1e-8), f(0.5))
        K.adam_update(b, g, mb, vb, f(1e-3), f(0.9), f(0.999), f(1e-8), f(0.5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(a, p)


def test_errors_in_a_worker_thread_propagate(nthreads_of):
    nthreads_of(2)
    eng = threads.pool()

    def boom(i, j):
        if i > 0:
            raise ValueError("worker failed")

    with pytest.raises(ValueError, match="worker failed"):
        eng.map(boom, [(0, 1), (1, 2)])


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_the_pool_holds_numpys_blas_at_one_thread_while_it_lives(nthreads_of):
    """No job has to remember to hold BLAS: a pool of 2 threads does, until closed."""
    from streamlm.compute import blas

    if blas.name() == "mkl":
        pytest.skip("MKL as streamlm loads it is sequential: nothing to hold")
    threads.shutdown()
    before = _blas_threads()
    nthreads_of(2)
    assert threads.get_num_threads() == 2
    assert _blas_threads() and all(n == 1 for n in _blas_threads())
    threads.shutdown()
    assert _blas_threads() == before


def test_a_blas_nobody_can_hold_means_one_thread_and_says_so(nthreads_of, monkeypatch, caplog):
    from streamlm.compute import blas

    monkeypatch.setattr(blas, "single_thread_limit", lambda: None)
    monkeypatch.setattr(blas, "load", lambda choice=None: None)  # no CBLAS: numpy's @
    with caplog.at_level("WARNING"):
        nthreads_of(2)
    assert threads.get_num_threads() == 1
    assert "one thread" in caplog.text


def _split(hs_full, xw, P, reset, pl, t0=0, t1=None):
    """A tanh cell's advance_split of one stream over steps [t0, t1) of hs_full."""
    T, _, H = xw.shape
    blk = C.Block(1, T, xw, None, hs_full, reset, False, P)
    C.TanhRNN.advance_split(None, blk, pl, t0, t1)


@pytest.mark.parametrize("H", [70, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_stream_on_two_threads_is_bitwise_the_one_thread_recurrence(nthreads_of, monkeypatch,
                                                                       H, dtype):
    """advance_split (half of Wh's panels per thread, meeting every step) writes the
    same bytes as rnn_forward_rows, with resets, whole or by segments; a thread that
    stops waiting (spin limit 0) leaves the block to one thread, same bytes again;
    and a thread whose partner never comes returns -1 and says so in the flags."""
    nthreads_of(2)
    rng = np.random.default_rng(H)
    T = 60 if PL.can_split(1, 512, 2, False) else 12  # (no JIT: plain Python, slow)
    Wh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    xw = rng.standard_normal((T, 1, H)).astype(dtype)
    reset = np.zeros((T, 1), dtype=np.uint8)
    reset[[0, T // 3]] = 1
    start = np.empty((T + 1, 1, H), dtype=dtype)
    start[0] = rng.standard_normal(H)
    P = C.panels(Wh)
    want = start.copy()
    K.rnn_forward_rows(want[1:], xw, want[0], P, reset, 0, 1)
    pl = threads.pool()
    got = start.copy()
    _split(got, xw, P, reset, pl)
    assert got.tobytes() == want.tobytes()
    got = start.copy()
    for t0, t1 in ((0, T // 2 - 1), (T // 2 - 1, T)):
        _split(got, xw, P, reset, pl, t0, t1)
    assert got.tobytes() == want.tobytes()
    for spins in (0, 3, 50):  # gives up at once, or somewhere inside the block
        monkeypatch.setattr(C, "SPLIT_SPIN_MAX", spins)
        monkeypatch.setattr(C, "SPLIT_STEP_SPINS", spins)
        for _ in range(5):
            got = start.copy()
            _split(got, xw, P, reset, pl)
            assert got.tobytes() == want.tobytes()
    flags = np.zeros(48, dtype=np.int64)
    xid = np.arange(T, dtype=np.int64).reshape(T, 1)
    assert K.rnn_forward_split(got[1:], xw.reshape(T, H), xid, got[0], P, reset, 0, 1, flags, 0,
                               1000, 10) == -1
    assert flags[K.SPLIT_GAVE_UP] == 1 and flags[0] == 1  # gave up at step 1


def test_a_split_that_gave_up_backs_off_for_more_blocks_each_time():
    """After a give-up the next blocks run on one thread: 1, then 2, then 4...; a split
    that completes resets the count (a loaded machine pays a wait once in many blocks,
    an idle one never stops splitting)."""
    b = PL.Backoff()
    assert b.allow()
    b.gave_up()
    assert [b.allow() for _ in range(2)] == [False, True]
    b.gave_up()
    assert [b.allow() for _ in range(3)] == [False, False, True]
    b.gave_up()
    assert [b.allow() for _ in range(5)] == [False] * 4 + [True]
    b.completed()
    b.gave_up()
    assert [b.allow() for _ in range(2)] == [False, True]
    for _ in range(20):
        b.gave_up()
    assert b.skip == PL.Backoff.MAX
