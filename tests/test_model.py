"""The whole model: against the numpy reference, finite-difference gradients,
truncated-BPTT semantics and the model file."""

import json
import zipfile

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlm.errors import ModelFileError
from streamlm.nn.model import RNNLM
from streamlm.nn.params import PARAM_NAMES, ModelConfig, Params, load_model, save_model


def _setup(N=3, T=4, V=7, D=5, H=4, seed=0, dtype=np.float64, tied=False, bias=True):
    cfg = ModelConfig(V=V, D=D, H=H, tied=tied)
    p = Params.init(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    # make the embedding and biases non-trivial so every gradient is exercised
    p["embed_W"][...] = rng.standard_normal((V, D)) * 0.5
    if bias:
        p["rnn_b"][...] = rng.standard_normal(H) * 0.1
        p["affine_b"][...] = rng.standard_normal(V) * 0.1
    xs = rng.integers(0, V, size=(N, T)).astype(np.int32)
    xs[0, :2] = xs[0, 0]  # repeated ids
    ts = rng.integers(0, V, size=(N, T)).astype(np.int32)
    h0 = rng.standard_normal((N, H)) * 0.5
    return p, xs, ts, h0.astype(dtype)


def _arrays(p):
    return {n: np.array(a) for n, a in p.items()}


@pytest.mark.parametrize("recur", ["kernel", "blas"])
@pytest.mark.parametrize("N,T,D,H", [(1, 1, 3, 4), (3, 4, 5, 4), (2, 6, 4, 7)])
def test_forward_backward_match_reference(recur, N, T, D, H):
    p, xs, ts, h0 = _setup(N=N, T=T, D=D, H=H)
    if N * T > 1:
        ts[0, 0] = -1  # an ignored label
    m = RNNLM(p, recur=recur)
    loss, hT = m.forward(xs, ts, h0)
    g = p.zeros_like()
    dh0 = m.backward(g)
    want_loss, want = ref.model_grads(_arrays(p), xs, ts, h0)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
    for name in PARAM_NAMES:
        np.testing.assert_allclose(g[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dh0, want["h0"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hT, want["h_last"], rtol=1e-10)


def test_float32_model_matches_float64_reference():
    p64, xs, ts, h0 = _setup(N=4, T=6, V=50, D=8, H=16)
    p32 = p64.astype(np.float32)
    m = RNNLM(p32)
    loss, _ = m.forward(xs, ts, h0.astype(np.float32))
    g = p32.zeros_like()
    m.backward(g)
    want_loss, want = ref.model_grads(_arrays(p64), xs, ts, h0)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for name in PARAM_NAMES:
        np.testing.assert_allclose(g[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)


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
    """Central differences of the mean loss, float64, every parameter and h0."""
    D = H = 4 if tied else None
    p, xs, ts, h0 = _setup(N=2, T=5, V=6, D=D or 3, H=H or 4, tied=tied)
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
    names = [n for n in PARAM_NAMES if not (tied and n == "affine_W")]
    for name in names:
        num = _numeric_grad(loss, p[name])
        err = _rel_err(num, g[name])
        assert err < 1e-6, (name, err)
    num_h0 = _numeric_grad(loss, state["h0"])
    assert _rel_err(num_h0, dh0) < 1e-6
    assert np.abs(dh0).max() > 0  # h0 matters: the check can fail


def test_gradient_check_detects_a_wrong_gradient():
    """The checker itself can fail: a perturbed analytic gradient is caught."""
    p, xs, ts, h0 = _setup(N=2, T=3, V=6, D=3, H=4)
    m = RNNLM(p)

    def loss():
        return m.forward(xs, ts, h0)[0]

    loss()
    g = p.zeros_like()
    m.backward(g)
    bad = g["rnn_Wh"].copy()
    bad[0, 0] += 1e-3
    assert _rel_err(_numeric_grad(loss, p["rnn_Wh"]), bad) > 1e-6


def test_truncated_bptt_block_loss_equals_long_sequence():
    """A block scored from the carried h0 has the loss of the same tokens inside
    one long sequence; and no gradient flows past the block start."""
    p, _, _, _ = _setup(N=2, T=8, V=9, D=4, H=5)
    rng = np.random.default_rng(3)
    xs = rng.integers(0, 9, size=(2, 8)).astype(np.int32)
    ts = rng.integers(0, 9, size=(2, 8)).astype(np.int32)
    nll_whole, h_whole = RNNLM(p).nll(xs, ts)
    blocks = RNNLM(p)
    _, carried = blocks.forward(xs[:, :3], ts[:, :3])
    loss2, h2 = blocks.forward(xs[:, 3:], ts[:, 3:], carried)
    np.testing.assert_allclose(loss2, nll_whole[:, 3:].mean(), rtol=1e-12)
    np.testing.assert_allclose(h2, h_whole, rtol=1e-12)
    # the gradient of block 2 does not depend on the tokens of block 1
    # except through the carried (constant) h0
    g = p.zeros_like()
    blocks.backward(g)
    _, want = ref.model_grads(_arrays(p), xs[:, 3:], ts[:, 3:], carried)
    for name in PARAM_NAMES:
        np.testing.assert_allclose(g[name], want[name], rtol=1e-9, atol=1e-12)


def test_the_model_keeps_no_state_between_calls():
    """The carried state is the caller's: the same call gives the same answer
    whatever came before, and the returned state is a new array."""
    p, xs, ts, h0 = _setup(N=3, T=5, V=8, D=3, H=4)
    m = RNNLM(p)
    a, ha = m.nll(xs, ts, h0)
    m.forward(xs[:, ::-1], ts, h0 * 2)
    m.nll(xs, ts)
    b, hb = m.nll(xs, ts, h0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ha, hb)
    hb[...] = 7.0  # the caller's copy: changing it changes nothing inside
    np.testing.assert_array_equal(m.nll(xs, ts, h0)[1], ha)
    with pytest.raises(ValueError, match="state has shape"):
        m.nll(xs, ts, h0[:2])


@st.composite
def _cuts(draw, L=40):
    inner = draw(st.lists(st.integers(1, L - 1), max_size=8, unique=True))
    return [0, *sorted(inner), L]


@pytest.mark.parametrize("recur", ["kernel", "blas"])
@settings(max_examples=25, deadline=None)
@given(cuts=_cuts())
def test_nll_in_chunks_equals_whole(recur, cuts):
    """Scoring in chunks split at any points gives the same NLL and final state."""
    p, _, _, _ = _setup(N=1, T=1, V=11, D=4, H=6)
    rng = np.random.default_rng(8)
    L = cuts[-1]
    x = rng.integers(0, 11, size=(2, L)).astype(np.int32)
    t = rng.integers(0, 11, size=(2, L)).astype(np.int32)
    m = RNNLM(p, recur=recur)
    want, h_want = m.nll(x, t)
    h, parts = None, []
    for a, b in zip(cuts, cuts[1:]):
        nll, h = m.nll(x[:, a:b], t[:, a:b], h)
        parts.append(nll)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), want, rtol=1e-12)
    np.testing.assert_allclose(h, h_want, rtol=1e-12)


@pytest.mark.parametrize("recur", ["kernel", "blas"])
def test_reset_is_a_zero_state(recur):
    p, _, _, _ = _setup(N=1, T=1, V=11, D=4, H=6)
    rng = np.random.default_rng(8)
    L = 40
    x = rng.integers(0, 11, size=(1, L)).astype(np.int32)
    t = rng.integers(0, 11, size=(1, L)).astype(np.int32)
    want, _ = RNNLM(p, recur=recur).nll(x, t)
    # reset at position 20 == scoring the tail from a zero state
    reset = np.zeros((1, L), np.uint8)
    reset[0, 20] = 1
    r, _ = RNNLM(p, recur=recur).nll(x, t, reset=reset)
    tail, _ = RNNLM(p, recur=recur).nll(x[:, 20:], t[:, 20:])
    np.testing.assert_allclose(r[:, 20:], tail, rtol=1e-12)
    np.testing.assert_allclose(r[:, :20], want[:, :20], rtol=1e-12)
    assert not np.allclose(r[:, 20:], want[:, 20:])


def test_nll_matches_reference_and_forward():
    p, xs, ts, h0 = _setup(N=3, T=5, V=8, D=3, H=4)
    m = RNNLM(p)
    got, hT = m.nll(xs, ts, h0)
    _, h_last, want = ref.model_loss(_arrays(p), xs, ts, h0)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(hT, h_last, rtol=1e-10)
    np.testing.assert_allclose(m.forward(xs, ts, h0)[0], want.mean(), rtol=1e-12)


@pytest.mark.parametrize("N", [1, 3])  # one stream takes the pipelined path
def test_a_frozen_model_looks_the_input_term_up_and_gives_the_same_numbers(N):
    p, xs, ts, h0 = _setup(N=3, T=5, V=8, D=3, H=4)
    xs, ts, h0 = xs[:N], ts[:N], h0[:N]
    _, h_last, want = ref.model_loss(_arrays(p), xs, ts, h0)
    m = RNNLM(p, frozen=True)
    got, hT = m.nll(xs, ts, h0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(hT, h_last, rtol=1e-12)
    table = m.input_table()  # embed_W @ rnn_Wx + rnn_b, made once, then looked up
    np.testing.assert_allclose(table, p["embed_W"] @ p["rnn_Wx"] + p["rnn_b"], rtol=1e-12)
    m.nll(xs, ts, h0)
    assert m.input_table() is table
    s = m.sharing()  # another stream of the same weights: the same table, no copy
    np.testing.assert_array_equal(s.step(xs[:, 0], h0), m.step(xs[:, 0], h0))
    assert s.input_table() is table
    # an unfrozen model (training) never uses a table: its weights move
    u = RNNLM(p)
    u.nll(xs, ts, h0)
    assert u._table is None


def test_out_of_range_ids_are_refused_before_any_kernel():
    p, xs, ts, _ = _setup()
    m = RNNLM(p)
    bad = xs.copy()
    bad[0, 0] = 7  # == V
    with pytest.raises(ValueError, match="out of range"):
        m.forward(bad, ts)
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="out of range"):
        m.nll(bad, ts)
    badt = ts.copy()
    badt[0, 0] = -2
    with pytest.raises(ValueError, match="out of range"):
        m.forward(xs, badt)


def test_init_statistics_and_seed():
    cfg = ModelConfig(V=2000, D=64, H=256)
    p = Params.init(cfg, seed=1)
    assert p.dtype == np.float32
    assert abs(p["embed_W"].std() - 0.01) < 0.0005
    assert abs(p["rnn_Wx"].std() - 1 / np.sqrt(64)) < 0.005
    assert abs(p["rnn_Wh"].std() - 1 / np.sqrt(256)) < 0.002
    assert abs(p["affine_W"].std() - 1 / np.sqrt(256)) < 0.001
    assert not p["rnn_b"].any() and not p["affine_b"].any()
    q = Params.init(cfg, seed=1)
    np.testing.assert_array_equal(p.flat, q.flat)
    assert not np.array_equal(p.flat, Params.init(cfg, seed=2).flat)
    p64 = Params.init(cfg, seed=1, dtype=np.float64)
    np.testing.assert_array_equal(p64.flat.astype(np.float32), p.flat)


# ------------------------------------------------------------- model file --
def _save(tmp_path, tied=False):
    cfg = ModelConfig(V=5, D=4, H=4, tied=tied)
    p = Params.init(cfg, seed=3)
    vocab = ["<unk>", "<eos>", "a", "b", "c"]
    path = tmp_path / "m.npz"
    save_model(path, p, vocab, train_config={"lr": 0.1})
    return path, p, vocab


def test_model_file_roundtrip_and_numpy_alone_reads_it(tmp_path):
    path, p, vocab = _save(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == set(PARAM_NAMES) | {"vocab", "meta"}
        for name in PARAM_NAMES:
            np.testing.assert_array_equal(z[name], p[name])
        assert list(z["vocab"]) == vocab
        meta = json.loads(str(z["meta"]))
    assert meta["V"] == 5 and meta["D"] == 4 and meta["H"] == 4
    assert meta["format_version"] == 1 and len(meta["sha256"]) == 64
    assert meta["train_config"] == {"lr": 0.1}
    m = load_model(path)
    assert m.vocab == vocab
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(m.params[name], p[name])
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left


def test_mapped_load_equals_numpy_and_a_compressed_file_still_loads(tmp_path):
    """load_model maps the file (store.load(mapped=True)): the arrays are numpy's
    np.load ones, the loaded parameters (a class model: word-indexed arrays permuted
    into class order, affine_W transposed block by block) are the saved ones, and a
    file recompressed by hand (np.savez_compressed) loads by the ordinary path."""
    from streamlm.data import store
    from streamlm.nn.classes import WordClasses
    from streamlm.nn.params import FORMAT, FORMAT_VERSION, LOAD_BLOCK

    V = LOAD_BLOCK + 37  # more than one block of the transposed copy
    wc = np.random.default_rng(0).integers(0, 7, V).astype(np.int32)
    wc[:7] = np.arange(7)  # every class non-empty
    cfg = ModelConfig(V=V, D=3, H=5, softmax="class", C=7)
    p = Params.init(cfg, seed=2, classes=WordClasses(wc))
    vocab = ["<unk>", "<eos>"] + [f"w{i}" for i in range(V - 2)]
    path = tmp_path / "c.npz"
    save_model(path, p, vocab)
    _, mapped = store.load(path, FORMAT, FORMAT_VERSION, what="model file", mapped=True)
    with np.load(path, allow_pickle=False) as z:
        plain = {k: z[k] for k in z.files if k != "meta"}
    assert mapped.keys() == plain.keys()
    for k in plain:
        assert mapped[k].dtype == plain[k].dtype and not mapped[k].flags.writeable
        np.testing.assert_array_equal(mapped[k], plain[k])
    for f in (path, tmp_path / "z.npz"):
        m = load_model(f)
        for name in cfg.names:
            np.testing.assert_array_equal(m.params[name], p[name], err_msg=name)
        np.savez_compressed(tmp_path / "z.npz", **plain, meta=np.array(json.dumps(m.meta)))
    assert m.path.endswith("z.npz")
    with zipfile.ZipFile(tmp_path / "z.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())


def test_tied_model_saves_untied_arrays(tmp_path):
    path, p, _ = _save(tmp_path, tied=True)
    m = load_model(path)
    np.testing.assert_array_equal(m.params["affine_W"], p["embed_W"].T)


def test_model_file_truncated(tmp_path):
    path, _, _ = _save(tmp_path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=str(path)):
            load_model(path)


def test_model_file_flipped_byte_fails_checksum(tmp_path):
    path, _, _ = _save(tmp_path)
    # edit one weight through numpy and rewrite with the old meta
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["rnn_Wh"] = arrays["rnn_Wh"].copy()
    arrays["rnn_Wh"][0, 0] += 1.0
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)


def test_model_file_raw_byte_flip(tmp_path):
    path, _, _ = _save(tmp_path)
    data = bytearray(path.read_bytes())
    # flip a byte inside the rnn_Wh payload (found by its float bytes)
    with np.load(path, allow_pickle=False) as z:
        needle = z["rnn_Wh"].tobytes()[:8]
    i = bytes(data).find(needle)
    assert i > 0
    data[i] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        load_model(path)


def test_model_file_pickled_object_refused(tmp_path):
    path, _, _ = _save(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array([{"evil": 1}], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path)


def test_model_file_wrong_shape_extra_and_missing(tmp_path):
    path, _, _ = _save(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    a = dict(arrays)
    a["rnn_Wh"] = np.zeros((3, 3), np.float32)
    np.savez(path, **a)
    with pytest.raises(ModelFileError, match="shape"):
        load_model(path)
    a = dict(arrays, extra=np.zeros(1))
    np.savez(path, **a)
    with pytest.raises(ModelFileError, match="unexpected arrays: extra"):
        load_model(path)
    a = dict(arrays)
    del a["affine_b"]
    np.savez(path, **a)
    with pytest.raises(ModelFileError, match="missing arrays: affine_b"):
        load_model(path)


def _write_version_1(path, arrays, vocab):
    """A version-1 model file as streamlm wrote them before the restructuring (79a6f8e),
    by docs/format.md's description with numpy and hashlib alone: the six arrays, the
    vocabulary, and meta with the sha256 over each array's name, dtype string, shape
    and bytes, then the vocabulary joined by newlines."""
    import hashlib
    import json

    h = hashlib.sha256()
    for n in PARAM_NAMES:
        a = np.ascontiguousarray(arrays[n])
        h.update(f"{n}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update("\n".join(vocab).encode("utf-8"))
    V, D = arrays["embed_W"].shape
    meta = {"format": "streamlm-model", "format_version": 1, "V": V, "D": D,
            "H": arrays["rnn_Wh"].shape[0], "tied": False, "dtype": "float32",
            "train_config": {"note": "written as streamlm wrote at 79a6f8e"},
            "sha256": h.hexdigest()}
    np.savez(path, **arrays, vocab=np.array(vocab), meta=np.array(json.dumps(meta)))


def test_a_version_1_file_written_before_the_restructuring_loads(tmp_path):
    """A version-1 file loads, and it scores what the numpy reference computes from
    its arrays."""
    rng = np.random.default_rng(3)
    V, D, H = 6, 4, 5
    shapes = {"embed_W": (V, D), "rnn_Wx": (D, H), "rnn_Wh": (H, H), "rnn_b": (H,),
              "affine_W": (H, V), "affine_b": (V,)}
    arrays = {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in PARAM_NAMES}
    path = tmp_path / "model_v1.npz"
    _write_version_1(path, arrays, ["<unk>", "<eos>", "the", "cat", "sat", "mat"])
    m = load_model(path, dtype=np.float64)
    assert m.meta["format_version"] == 1 and m.vocab[:2] == ["<unk>", "<eos>"]
    xs = np.array([[1, 2, 3, 4]], np.int32)
    ts = np.array([[2, 3, 4, 1]], np.int32)
    got, _ = RNNLM(m.params).nll(xs, ts)
    want = ref.model_loss({n: a.astype(np.float64) for n, a in arrays.items()}, xs, ts,
                          np.zeros((1, H)))[2]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_model_file_not_npz_and_missing(tmp_path):
    p = tmp_path / "x.npz"
    p.write_text("hello")
    with pytest.raises(ModelFileError, match="x.npz: not a streamlm model file: not an .npz"):
        load_model(p)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.npz")
    with pytest.raises(ModelFileError, match="directory"):
        load_model(tmp_path)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "plain.npy")
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("junk.txt", "x")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "z.npz")
