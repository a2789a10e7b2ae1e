"""The recurrent cells (streamlm.nn.cells): the tanh RNN, the LSTM and the GRU, one layer
or stacked, behind one interface.

Each against the plain numpy reference of tests/reference.py (the book's TimeLSTM,
PyTorch's GRU equations), float64 to 1e-12; finite-difference gradients in float64
for every parameter of every layer and for the carried state (h0, and c0 for the
LSTM); the carried state and chunk invariance; the kernel and the BLAS recurrence;
the production numpy engine; and PyTorch's nn.LSTM / nn.GRU with the same weights
where torch is installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from numba import config

from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.engines import NumpyRNN
from streamlm.nn.model import RNNLM
from streamlm.nn.params import ModelConfig, Params, layer_names

CELLS = ["rnn", "lstm", "gru"]
QUICK = bool(config.DISABLE_JIT)  # (no JIT: the kernels run as Python, slowly)


def make(cell: str, layers: int, softmax: str = "full", dtype=np.float64, V=13, D=5, H=7,
         seed=1) -> Params:
    rng = np.random.default_rng(seed)
    classes = None
    if softmax == "class":
        classes = WordClasses(frequency_classes(rng.integers(1, 50, V), 4))
    cfg = ModelConfig(V=V, D=D, H=H, cell=cell, layers=layers, softmax=softmax,
                      C=classes.C if classes else 0)
    p = Params.init(cfg, seed=seed, dtype=dtype, classes=classes)
    a = p.file_arrays()  # biases and weights off their symmetric start
    for k in a:
        a[k] = a[k] + rng.standard_normal(a[k].shape) * 0.1
    p.set_file_arrays(a)
    return p


def reference_nll(p: Params, xs, ts, state0, reset=None):
    """Per-token NLL (N, T) and the state after the block (N, S), by tests/reference.py."""
    wc = None if p.classes is None else p.classes.word_class
    return ref.model_nll(p.file_arrays(), p.config, xs, ts, state0, wc, reset)


def block(p: Params, N=3, T=9, seed=2):
    rng = np.random.default_rng(seed)
    V = p.config.V
    xs = rng.integers(0, V, (N, T)).astype(np.int32)
    ts = rng.integers(0, V, (N, T)).astype(np.int32)
    state0 = rng.standard_normal((N, RNNLM(p).state_size)) * 0.3
    return xs, ts, state0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("softmax", ["full", "class"])
@pytest.mark.parametrize("recur", ["kernel", "blas"])
def test_nll_and_state_equal_the_reference(cell, layers, softmax, recur):
    p = make(cell, layers, softmax)
    xs, ts, s0 = block(p)
    reset = (np.random.default_rng(3).random(xs.shape) < 0.2).astype(np.uint8)
    want, want_state = reference_nll(p, xs, ts, s0, reset)
    for frozen in (False, True):  # (frozen: layer 0 reads its input table)
        got, state = RNNLM(p, recur=recur, frozen=frozen).nll(xs, ts, s0, reset=reset)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(state, want_state, rtol=1e-12, atol=1e-12)
    got, state = NumpyRNN(p).nll(xs, ts, s0, reset=reset)  # the numpy engine
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state, want_state, rtol=1e-12, atol=1e-12)


def _numeric_grad(f, arr: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Central differences of f() with respect to every element of arr (in place)."""
    g = np.zeros_like(arr)
    flat, gf = arr.reshape(-1), g.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        gf[k] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("recur", ["kernel", "blas"])
def test_gradients_of_every_parameter_and_the_carried_state(cell, layers, recur):
    """Relative error below 1e-6 (the largest difference over the largest gradient) for
    every parameter of every layer, and for h0 (and c0) of every layer."""
    if QUICK and (layers == 2 or recur == "blas"):
        pytest.skip("the no-JIT lane checks one layer with the kernel")
    p = make(cell, layers, H=5, V=9, D=4)
    xs, ts, s0 = block(p, N=2, T=5)
    m = RNNLM(p, recur=recur)
    m.forward(xs, ts, s0)
    g = p.zeros_like()
    ds0 = m.backward(g)

    def loss():
        return RNNLM(p, recur=recur).forward(xs, ts, s0)[0]

    for name, arr in p.items():
        num = _numeric_grad(loss, arr)
        err = np.abs(num - g[name]).max() / np.abs(num).max()
        assert err < 1e-6, (name, err)
    num = _numeric_grad(loss, s0)
    assert np.abs(num - ds0).max() / np.abs(num).max() < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_and_many_rows_give_the_same_gradients(cell, monkeypatch):
    """The weight gradients split by columns into ``grads`` (few rows: the check above,
    and dynamic evaluation's segments) equal those summed from partial sums by rows
    (the training blocks), on one thread and on two."""
    from streamlm.compute import cpus
    from streamlm.nn import cells

    p = make(cell, 2, H=5, V=9, D=4)
    xs, ts, s0 = block(p, N=3, T=6)
    got, few_rows = {}, cells.FEW_ROWS
    assert few_rows > 0
    try:
        for threads in (1, 2):
            cpus.set_threads(threads)
            for few in (few_rows, 0):
                monkeypatch.setattr(cells, "FEW_ROWS", few)
                m = RNNLM(p)
                m.forward(xs, ts, s0)
                g = p.zeros_like()
                g.flat[:] = 0.5  # (accumulated into, not overwritten)
                m.backward(g)
                got[threads, few > 0] = g.flat.copy()
    finally:
        cpus.set_threads(None)
    assert sorted(got) == [(1, False), (1, True), (2, False), (2, True)]
    for k, v in got.items():
        np.testing.assert_allclose(v, got[1, False], rtol=1e-12, atol=1e-14, err_msg=str(k))


@pytest.mark.parametrize("cell", CELLS)
def test_chunks_with_the_state_carried_equal_one_block(cell):
    p = make(cell, 2, dtype=np.float32, H=70)
    xs, ts, s0 = block(p, N=2, T=40)
    s0 = s0.astype(np.float32)
    m = RNNLM(p, frozen=True)
    whole, end = m.nll(xs, ts, s0)
    parts, state = [], s0
    for a, b in ((0, 7), (7, 8), (8, 31), (31, 40)):
        nll, state = m.nll(xs[:, a:b], ts[:, a:b], state)
        parts.append(nll)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-6)
    # (layer 1's input terms are a GEMM over the block's rows: BLAS may round a row's
    # last bit differently in a block of another length)
    np.testing.assert_allclose(state, end, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_kernels_match_float64(cell):
    p64 = make(cell, 2, H=70)
    p32 = p64.astype(np.float32)
    xs, ts, s0 = block(p64, N=5, T=30)
    want, _ = RNNLM(p64).nll(xs, ts, s0)
    got, _ = RNNLM(p32).nll(xs, ts, s0.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_step_at_a_time_equals_the_block(cell):
    """step() (generation, the KenLM State) carries every layer's state (h and c)."""
    p = make(cell, 2, dtype=np.float32)
    xs, _, s0 = block(p, N=2, T=6)
    m = RNNLM(p, frozen=True)
    state = s0.astype(np.float32)
    for t in range(xs.shape[1]):
        state = m.step(xs[:, t], state)
    _, end = m.nll(xs, xs, s0.astype(np.float32))
    np.testing.assert_allclose(state, end, rtol=1e-5, atol=1e-6)
    lp = m.logprobs(state)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- PyTorch --
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_pytorch_gets_the_same_log_probabilities(cell):
    """A streamlm LSTM / GRU loaded into torch.nn.LSTM / nn.GRU (bench extra): the same
    log-probabilities. torch's LSTM gates are i, f, g, o (streamlm's the book's f, g,
    i, o); its GRU's are streamlm's r, z, n, weights transposed."""
    torch = pytest.importorskip("torch")
    H, layers = 16, 2
    p = make(cell, layers, dtype=np.float32, V=20, D=H, H=H)
    a = p.file_arrays()
    cfg = p.config
    Net = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    net = Net(H, H, num_layers=layers)
    with torch.no_grad():
        for layer in range(layers):
            n = layer_names(cfg, layer)
            Wx, Wh, b = a[n["Wx"]].T, a[n["Wh"]].T, a[n["b"]]
            bh = a[n["bh"]] if cell == "gru" else np.zeros_like(b)
            if cell == "lstm":  # rows f, g, i, o -> i, f, g, o
                order = np.r_[2 * H:3 * H, 0:H, H:2 * H, 3 * H:4 * H]
                Wx, Wh, b = Wx[order], Wh[order], b[order]
            getattr(net, f"weight_ih_l{layer}").copy_(torch.from_numpy(np.ascontiguousarray(Wx)))
            getattr(net, f"weight_hh_l{layer}").copy_(torch.from_numpy(np.ascontiguousarray(Wh)))
            getattr(net, f"bias_ih_l{layer}").copy_(torch.from_numpy(np.ascontiguousarray(b)))
            getattr(net, f"bias_hh_l{layer}").copy_(torch.from_numpy(np.ascontiguousarray(bh)))
    rng = np.random.default_rng(4)
    xs = rng.integers(0, 20, (3, 12)).astype(np.int32)
    ts = rng.integers(0, 20, (3, 12)).astype(np.int32)
    got, _ = RNNLM(p, frozen=True).nll(xs, ts)
    with torch.no_grad():
        x = torch.from_numpy(a["embed_W"][xs.T])  # (T, N, D)
        out, _ = net(x)
        logits = out @ torch.from_numpy(a["affine_W"]) + torch.from_numpy(a["affine_b"])
        lp = torch.log_softmax(logits.double(), dim=-1).numpy()  # (T, N, V)
    want = -np.take_along_axis(lp, ts.T[:, :, None], axis=2)[:, :, 0].T
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------- every path --
@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A two-layer LSTM and a GRU of a small vocabulary, as model files, and texts."""
    from collections import Counter

    from helpers import markov_text

    from streamlm.data.vocab import Vocab
    from streamlm.nn.params import save_model

    d = tmp_path_factory.mktemp("gated")
    words = [f"w{i}" for i in range(30)]
    text = markov_text(300, 1, words)
    (d / "text.txt").write_text(text)
    import json

    (d / "docs.jsonl").write_text("".join(json.dumps({"id": k, "text": line}) + "\n"
                                          for k, line in enumerate(text.splitlines()[:40])))
    vocab = Vocab.build(Counter(text.split()))
    for cell in ("lstm", "gru"):
        p = make(cell, 2, dtype=np.float32, V=len(vocab), D=8, H=8)
        save_model(d / f"{cell}.npz", p, vocab.words)
    return d


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_scoring_path_takes_a_gated_model(gated, cell, tmp_path):
    """Through the installed CLI: one stream, lines alone, documents with records of each
    level, query, generate, and --dask; the same totals whichever way that must agree."""
    import json
    import subprocess

    from helpers import script

    m, text, docs = gated / f"{cell}.npz", gated / "text.txt", gated / "docs.jsonl"

    def run(*args, stdin=None):
        r = subprocess.run(script(*args), capture_output=True, text=True, input=stdin)
        assert r.returncode == 0, r.stderr
        return r.stdout

    carried = json.loads(run("score", m, text, "--json", "--engine", "numba"))
    numpy = json.loads(run("score", m, text, "--json", "--engine", "numpy"))
    assert abs(carried["logprob"] - numpy["logprob"]) < 1e-5 * abs(numpy["logprob"])
    lines = json.loads(run("score", m, text, "--json", "--reset", "line", "--output",
                           tmp_path / "l.jsonl", "--level", "word"))
    assert lines["tokens"] == carried["tokens"] and lines["logprob"] != carried["logprob"]
    recs = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert len(recs) == lines["tokens"]
    doc = json.loads(run("score", m, docs, "--json", "--output", tmp_path / "d.parquet",
                         "--keep", "id"))
    assert doc["rows"] == 40
    first = (gated / "text.txt").read_text().splitlines()[0]
    q = run("query", m, "-v", "sentence", stdin=first + "\n")
    _, total, _, oov = q.split()  # Total: <log10> OOV: <n>
    (tmp_path / "first.txt").write_text(first + "\n")
    alone = json.loads(run("score", m, tmp_path / "first.txt", "--json", "--reset", "line"))
    assert oov == "0" and math.isclose(float(total), alone["log10prob"], rel_tol=1e-4), q
    from streamlm.jobs.generate import format_words, generate

    sampled = list(generate(m, words=12, seed=3))
    assert len(sampled) == 12
    assert run("generate", m, "--words", "12", "--seed", "3") == "".join(format_words(sampled))
    pytest.importorskip("distributed")
    dask = json.loads(run("score", m, text, "--json", "--dask", "local:1", "--reset", "line"))
    assert abs(dask["logprob"] - lines["logprob"]) < 1e-6 * abs(lines["logprob"])
