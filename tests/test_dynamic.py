"""Dynamic evaluation (streamlm.jobs.dynamic): the weights learn from each segment after
scoring it.

The step against a plain numpy reference (float64: the reference model, gradients by
central differences, the update rule written out densely) for every cell and both
output layers; no token scored by weights that saw it; learning rate 0 is static
scoring; chunks, batches and threads change nothing; --reset line starts every line
from the trained weights; the lazy decay of untouched rows equals a dense decay; and
the checkpoint resumes exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import reference as ref

from streamlm.jobs.dynamic import RMS_EPS, Adapter, Settings
from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.params import ModelConfig, Params, save_model, state_size
from streamlm.options import DYNAMIC_SEGMENT, ScoreOptions

CELLS = ["rnn", "lstm", "gru"]


def tiny(cell: str, softmax: str, dtype=np.float64, V=9, D=3, H=3, tied=False) -> Params:
    rng = np.random.default_rng(11)
    classes = None
    if softmax == "class":
        classes = WordClasses(frequency_classes(rng.integers(1, 40, V), 3))
    cfg = ModelConfig(V=V, D=D, H=H, cell=cell, softmax=softmax, tied=tied,
                      C=classes.C if classes else 0)
    p = Params.init(cfg, seed=2, dtype=dtype, classes=classes)
    a = p.file_arrays()
    for k in a:
        a[k] = a[k] + rng.standard_normal(a[k].shape) * 0.3
    if tied:
        a["affine_W"] = a["embed_W"].T.copy()
    p.set_file_arrays(a)
    return p


def reference_dynamic(p: Params, ids: np.ndarray, eos: int, K: int, lr: float, decay: float,
                      rms: np.ndarray | None):
    """Per-token NLL of the stream ``ids`` under the rule written out densely, every array
    in word-id order (the model file's), gradients by central differences of
    tests/reference.py's model."""
    cfg = p.config
    wc = None if p.classes is None else p.classes.word_class
    theta = {k: v.copy() for k, v in p.file_arrays().items()}
    theta0 = {k: v.copy() for k, v in theta.items()}
    inv = None
    if rms is not None:  # rms in the model's flat layout: as arrays in word-id order
        q = p.copy()
        q.flat[...] = rms
        # floored array by array at the array's mean (an unseen word's row: RMS 0)
        inv = {k: 1.0 / (np.maximum(v, v.mean()) + RMS_EPS) for k, v in q.file_arrays().items()}
    S = state_size(cfg)
    state, prev, out = np.zeros((1, S)), eos, []
    for a in range(0, len(ids), K):
        seg = ids[a:a + K]
        xs = np.concatenate([[prev], seg[:-1]])[None, :]

        def loss_of(th, xs=xs, seg=seg, state=state):
            return ref.model_nll(th, cfg, xs, seg[None, :], state, wc)[0].mean()

        nll, after = ref.model_nll(theta, cfg, xs, seg[None, :], state, wc)
        out.append(nll[0])
        grads = {}
        for k, arr in theta.items():  # (tied: affine_W follows embed_W)
            if cfg.tied and k == "affine_W":
                continue
            g = np.zeros_like(arr)
            for ix in np.ndindex(arr.shape):
                old = arr[ix]
                arr[ix] = old + 1e-6
                if cfg.tied and k == "embed_W":
                    theta["affine_W"] = theta["embed_W"].T.copy()
                up = loss_of(theta)
                arr[ix] = old - 1e-6
                if cfg.tied and k == "embed_W":
                    theta["affine_W"] = theta["embed_W"].T.copy()
                down = loss_of(theta)
                arr[ix] = old
                if cfg.tied and k == "embed_W":
                    theta["affine_W"] = theta["embed_W"].T.copy()
                g[ix] = (up - down) / 2e-6
            grads[k] = g
        if cfg.tied:
            theta["affine_W"] = theta["embed_W"].T.copy()
        for k, g in grads.items():
            scale = 1.0 if inv is None else inv[k]
            theta[k] = theta[k] - lr * g * scale + decay * (theta0[k] - theta[k])
        if cfg.tied:
            theta["affine_W"] = theta["embed_W"].T.copy()
        state, prev = after, int(seg[-1])
    return np.concatenate(out), theta


def adapter_run(p: Params, ids: np.ndarray, eos: int, settings: Settings, rms=None):
    ad = Adapter(p, settings, rms)
    state, prev, out = None, eos, []
    K = settings.segment
    for a in range(0, len(ids), K):
        seg = ids[a:a + K]
        xs = np.concatenate([[prev], seg[:-1]])[None, :].astype(np.int32)
        nll, state = ad.segment(xs, seg[None, :].astype(np.int32), state)
        out.append(nll[0])
        prev = int(seg[-1])
    return np.concatenate(out), ad


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("softmax", ["full", "class"])
@pytest.mark.parametrize("method", ["sgd", "rms"])
def test_the_step_is_the_rule_written_out(cell, softmax, method):
    """Three segments of 4 tokens: the NLL of each (scored before its step) and the
    weights after them equal the dense numpy reference (float64, 1e-6)."""
    check_the_rule(tiny(cell, softmax), method)


@pytest.mark.parametrize("method", ["sgd", "rms"])
def test_a_tied_full_softmax_steps_every_word_row(method):
    """Tied to a full softmax, the embedding takes the output layer's gradient on every
    row, not only on the rows of the segment's words."""
    check_the_rule(tiny("lstm", "full", tied=True), method)


def check_the_rule(p: Params, method: str) -> None:
    ids = np.random.default_rng(5).integers(0, p.config.V, 12).astype(np.int32)
    rms = None
    if method == "rms":
        rms = np.abs(np.random.default_rng(6).standard_normal(p.flat.shape)) + 0.5
        rms[::7] = 0.0  # parameters the tuning text never moved
    lr, decay = (0.5, 0.05) if method == "sgd" else (0.2, 0.1)
    want, theta = reference_dynamic(p, ids, 1, 4, lr, decay, rms)
    got, ad = adapter_run(p, ids, 1, Settings(method, lr, decay, 4), rms)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    have = ad.weights().file_arrays()
    for k, v in theta.items():
        np.testing.assert_allclose(have[k], v, rtol=1e-6, atol=1e-8, err_msg=k)


def test_tied_class_model_rows_decay_lazily_as_densely():
    p = tiny("lstm", "class", tied=True, D=3, H=3)
    ids = np.random.default_rng(7).integers(0, p.config.V, 16).astype(np.int32)
    assert set(range(p.config.V)) - set(ids.tolist())  # rows the text never touches
    want, theta = reference_dynamic(p, ids, 1, 4, 0.3, 0.2, None)
    got, ad = adapter_run(p, ids, 1, Settings("sgd", 0.3, 0.2, 4))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    have = ad.weights().file_arrays()
    assert set(theta) <= set(have)
    for k, v in theta.items():
        np.testing.assert_allclose(have[k], v, rtol=1e-6, atol=1e-8, err_msg=k)


def test_no_token_is_scored_by_weights_that_saw_it():
    """A huge step on a segment of one repeated word: if the step came before the
    scoring, the segment's NLL would collapse. The first segment is scored by the
    trained weights exactly; the second, of the same word, by the stepped ones."""
    p = tiny("lstm", "full")
    ids = np.full(8, 4, dtype=np.int32)
    static, _ = adapter_run(p, ids, 1, Settings("sgd", 0.0, 0.0, 4))
    got, _ = adapter_run(p, ids, 1, Settings("sgd", 5.0, 0.0, 4))
    np.testing.assert_array_equal(got[:4], static[:4])
    assert got[4:].mean() < static[4:].mean() * 0.5


# ----------------------------------------------------------- through score --
@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from collections import Counter

    from helpers import markov_text

    from streamlm.data.vocab import Vocab

    d = tmp_path_factory.mktemp("dyn")
    words = [f"w{i}" for i in range(25)]
    text = markov_text(400, 3, words, chain=1)
    (d / "text.txt").write_text(text)
    (d / "tune.txt").write_text(markov_text(100, 4, words, chain=1))
    vocab = Vocab.build(Counter(text.split()))
    out = {"dir": d}
    for cell, softmax, layers in (("lstm", "full", 2), ("gru", "class", 2), ("rnn", "full", 1),
                                  ("gru1", "class", 1)):
        cl = None
        if softmax == "class":
            counts = Counter(text.split())
            cl = WordClasses(frequency_classes(np.array([counts.get(w, 1) for w in
                                                         vocab.words]), 4))
        cfg = ModelConfig(V=len(vocab), D=8, H=8, cell=cell.rstrip("1"), layers=layers,
                          softmax=softmax, C=cl.C if cl else 0)
        p = Params.init(cfg, seed=1, classes=cl)
        save_model(d / f"{cell}.npz", p, vocab.words)
        out[cell] = d / f"{cell}.npz"
    return out


def _score(model, text, **kw):
    from streamlm.jobs.score import score

    return score(str(model), [str(text)], **kw).summary


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "gru1"])
def test_learning_rate_zero_is_static_scoring(job, cell, tmp_path):
    """Every token's log-probability the same as static scoring's to float32's
    rounding (1e-7), as any chunking of static scoring: the output layer, stacked
    layers' input terms and a class model's class factor are GEMMs over the block's
    rows, which a BLAS may round differently in a block of another length (a
    one-layer tanh model gave the same bits with MKL and OpenBLAS on an Intel Xeon,
    not with OpenBLAS on an AMD EPYC: 7e-10 apart)."""
    import pyarrow.parquet as pq

    from streamlm.jobs.score import score

    text = job["dir"] / "text.txt"
    a, b = tmp_path / "static.parquet", tmp_path / "dynamic.parquet"
    static = score(str(job[cell]), [str(text)], engine="numba", output=a, level="word").summary
    dyn = score(str(job[cell]), [str(text)], dynamic="sgd", dynamic_lr=0.0,
                dynamic_decay=0.0, output=b, level="word").summary
    assert dyn["tokens"] == static["tokens"]
    got, want = pq.read_table(b)["logprob"].to_pylist(), pq.read_table(a)["logprob"].to_pylist()
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert math.isclose(dyn["logprob"], static["logprob"], rel_tol=1e-7)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chunks_batches_and_threads_change_nothing(job, cell):
    from streamlm.compute import cpus

    text = job["dir"] / "text.txt"
    runs = []
    try:
        for chunk, batch, threads in ((2048, 16, 2), (7, 1, 1), (50, 3, 2)):
            cpus.set_threads(threads)
            runs.append(_score(job[cell], text, dynamic="sgd", dynamic_lr=0.1,
                               dynamic_segment=13, chunk_tokens=chunk, batch=batch))
    finally:
        cpus.set_threads(None)
    for r in runs[1:]:
        assert r["tokens"] == runs[0]["tokens"]
        assert math.isclose(r["logprob"], runs[0]["logprob"], rel_tol=1e-6)
    static = _score(job[cell], text, engine="numba")
    assert runs[0]["logprob"] > static["logprob"]  # it learned


def test_reset_line_starts_every_line_from_the_trained_weights(job, tmp_path):
    text = job["dir"] / "text.txt"
    lines = text.read_text().splitlines()[:30]
    both = tmp_path / "both.txt"
    both.write_text("\n".join(lines) + "\n")
    kw = dict(dynamic="sgd", dynamic_lr=0.5, dynamic_segment=3, reset="line")
    together = _score(job["lstm"], both, **kw)
    alone = 0.0
    for k, line in enumerate(lines):
        f = tmp_path / f"l{k}.txt"
        f.write_text(line + "\n")
        alone += _score(job["lstm"], f, **kw)["logprob"]
    assert math.isclose(together["logprob"], alone, rel_tol=1e-9)


def test_rms_statistics_auto_and_the_summary(job, tmp_path, caplog):
    import logging

    text, tune = job["dir"] / "text.txt", job["dir"] / "tune.txt"
    stats = tmp_path / "stats.npz"
    a = _score(job["gru"], text, dynamic="rms", tune_on=str(tune), dynamic_stats=str(stats))
    assert stats.exists()
    with caplog.at_level(logging.WARNING, logger="streamlm"):
        b = _score(job["gru"], text, dynamic="rms", dynamic_stats=str(stats))  # read back
    assert b["logprob"] == a["logprob"] and "statistics measured with" not in caplog.text
    assert a["dynamic"]["method"] == "rms" and a["dynamic"]["segment"] == DYNAMIC_SEGMENT
    assert a["dynamic"]["steps"] > 0
    with caplog.at_level(logging.WARNING, logger="streamlm"):
        _score(job["gru"], text, dynamic="rms", dynamic_stats=str(stats), dynamic_segment=7)
    assert f"segments of {DYNAMIC_SEGMENT} tokens, used with --dynamic-segment 7" in caplog.text
    c = _score(job["gru"], text, dynamic="auto", tune_on=str(tune))
    assert c["dynamic"]["tuned_on"] == str(tune)
    with pytest.raises(Exception, match="--tune-on"):
        ScoreOptions(dynamic="auto")


def test_statistics_measured_on_another_text_than_the_tuning(job, tmp_path):
    """--dynamic-stats-on: the RMS measured on that text (Krause et al. measure it on
    the training text), the step still tuned on --tune-on; the file says where."""
    from streamlm.data import store
    from streamlm.jobs.dynamic_tuning import STATS_FORMAT

    text, tune = job["dir"] / "text.txt", job["dir"] / "tune.txt"
    other = tmp_path / "other.txt"
    other.write_text("\n".join(text.read_text().splitlines()[:60]) + "\n")
    on_other, via_tune_on = tmp_path / "other.npz", tmp_path / "via_tune_on.npz"
    a = _score(job["lstm"], text, dynamic="auto", tune_on=str(tune),
               dynamic_stats_on=str(other), dynamic_stats=str(on_other))
    assert a["dynamic"]["stats_on"] == str(other) and a["dynamic"]["tuned_on"] == str(tune)
    _score(job["lstm"], text, dynamic="rms", tune_on=str(other), dynamic_stats=str(via_tune_on))
    meta, arrays = store.load(str(on_other), STATS_FORMAT, 1, what="stats")
    assert meta["measured_on"] == str(other)
    _, same = store.load(str(via_tune_on), STATS_FORMAT, 1, what="stats")  # measured on `other` too
    np.testing.assert_array_equal(arrays["rms"], same["rms"])
    t = tmp_path / "t.npz"
    _score(job["lstm"], text, dynamic="rms", tune_on=str(tune), dynamic_stats=str(t))
    _, theirs = store.load(str(t), STATS_FORMAT, 1, what="stats")
    assert not np.array_equal(arrays["rms"], theirs["rms"])  # the option decided it
    # unset, it is not in the fingerprint of checkpoints and Dask records (older ones
    # lack it and still match); set, it is
    assert "dynamic_stats_on" not in ScoreOptions(dynamic="rms").result_options()
    assert ScoreOptions(dynamic="rms", dynamic_stats_on=str(other)).result_options()[
        "dynamic_stats_on"] == str(other)
    assert Settings.of({"method": "sgd"}).lr == 0.05  # the API's dicts: the CLI's defaults
    assert (Settings.of({}).lr, Settings.of({}).segment) == (2.4e-3, DYNAMIC_SEGMENT)
    for bad in (dict(dynamic="sgd", dynamic_stats_on=str(other)),
                dict(dynamic_stats_on=str(other))):
        with pytest.raises(Exception, match="--dynamic-stats-on"):
            ScoreOptions(**bad)


def test_a_run_that_took_no_step_says_so(job, tmp_path, caplog):
    """Lines shorter than the segment: no step, the static scores; the summary counts
    the steps and a warning says why (not a silent static run)."""
    import logging

    text = job["dir"] / "text.txt"
    longest = max(len(line.split()) + 1 for line in text.read_text().splitlines())
    kw = dict(dynamic="sgd", dynamic_lr=0.5, reset="line")
    with caplog.at_level(logging.WARNING, logger="streamlm"):
        none = _score(job["lstm"], text, dynamic_segment=longest, **kw)
    assert none["dynamic"]["steps"] == 0
    assert "took no step" in caplog.text and f"--dynamic-segment {longest}" in caplog.text
    assert none["logprob"] == pytest.approx(_score(job["lstm"], text, reset="line",
                                                   engine="numba")["logprob"], rel=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamlm"):
        some = _score(job["lstm"], text, dynamic_segment=3, **kw)
    assert some["dynamic"]["steps"] > 0 and "took no step" not in caplog.text


def test_a_missing_statistics_text_is_one_line_and_exit_2(job, tmp_path):
    import subprocess

    from helpers import assert_one_error_line, script

    out = tmp_path / "scores.jsonl"
    r = subprocess.run(script("score", job["gru"], job["dir"] / "text.txt", "--dynamic", "rms",
                              "--dynamic-stats-on", tmp_path / "missing.txt", "-o", out),
                       capture_output=True, text=True)
    assert_one_error_line(r.returncode, r.stderr, "missing.txt")
    assert r.returncode == 2 and r.stdout == "" and not out.exists()


def test_save_adapted_and_compare_static(job, tmp_path):
    import hashlib

    from streamlm.jobs.score import score

    text = job["dir"] / "text.txt"
    before = hashlib.sha256(job["lstm"].read_bytes()).hexdigest()
    out = tmp_path / "adapted.npz"
    r = score(str(job["lstm"]), [str(text)], dynamic="sgd", dynamic_lr=0.2,
              save_adapted=str(out), compare_static=True).summary
    assert hashlib.sha256(job["lstm"].read_bytes()).hexdigest() == before  # untouched
    static = _score(job["lstm"], text, engine="numba")
    assert r["dynamic"]["static_perplexity"] == static["perplexity"]
    adapted = _score(out, text, engine="numba")  # the adapted weights score it better
    assert adapted["perplexity"] < static["perplexity"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_totals_of_an_uninterrupted_one(job, tmp_path):
    import subprocess

    from helpers import KILLED, kill_when, script

    text = job["dir"] / "big.txt"
    text.write_text((job["dir"] / "text.txt").read_text() * 24)
    base = ["score", job["gru"], text, "--dynamic", "sgd", "--dynamic-lr", "0.1", "--json",
            "-q"]
    want = json.loads(subprocess.run(script(*base), capture_output=True, text=True,
                                     check=True).stdout)
    rcs = []
    # the job ends within a second of its first checkpoint: kill soon after it
    for k, delay in enumerate(np.random.default_rng(1).uniform(0.0, 0.3, 3)):
        ck = tmp_path / f"c{k}.ckpt"
        argv = [*base[:-2], "--checkpoint", ck, "--checkpoint-every", "2000"]
        rc = kill_when(argv, ck.exists, delay=float(delay))
        assert rc in (0, KILLED), rc
        rcs.append((rc, ck.exists()))  # killed with a checkpoint left: the re-run resumes
        r = subprocess.run(script(*argv, "--json"), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["tokens"] == want["tokens"]
        assert math.isclose(got["logprob"], want["logprob"], rel_tol=1e-9), (rc, KILLED)
    assert (KILLED, True) in rcs, f"no run resumed from a checkpoint: {rcs}"


def test_the_api_stream_adapts_across_feeds_as_the_cli_does(job):
    """lm.stream(dynamic=...) fed in pieces that cut across segments: the totals of
    `streamlm score --dynamic` (to float32's rounding)."""
    import streamlm

    text = job["dir"] / "text.txt"
    want = _score(job["lstm"], text, dynamic="sgd", dynamic_lr=0.3, dynamic_segment=7)
    lm = streamlm.Model(job["lstm"])
    s = lm.stream(dynamic={"method": "sgd", "lr": 0.3, "segment": 7})
    for line in text.read_text().splitlines():
        s.feed(line, eos=True)
    assert s.tokens == want["tokens"]
    assert math.isclose(s.logprob, want["logprob"], rel_tol=1e-6)
    static = lm.stream()
    for line in text.read_text().splitlines():
        static.feed(line, eos=True)
    assert s.logprob > static.logprob  # it learned
    s.reset()  # the trained weights again
    first = text.read_text().splitlines()[0]
    np.testing.assert_allclose(s.feed(first, eos=True), lm.stream().feed(first, eos=True),
                               rtol=1e-6)


@pytest.mark.parametrize("best_k", [-6, -2, -1, 0, 1, 3, 6, 9])
def test_auto_walks_the_step_to_the_lowest_perplexity(best_k):
    """--dynamic auto's step: the best of x0 * 2**k (|k| <= 6) for a perplexity with one
    minimum, found up or down from x0, in few evaluations when x0 is near it."""
    from streamlm.jobs.dynamic_tuning import walk

    x0, calls = 8e-4, []

    def f(x):
        calls.append(x)
        return (math.log2(x / x0) - best_k) ** 2

    got = walk(f, x0)
    assert math.isclose(got, x0 * 2.0 ** max(-6, min(6, best_k)), rel_tol=1e-12)
    if best_k == 0:
        assert len(calls) == 3  # x0, one step up, one step down
    assert len(calls) == len(set(calls))  # no perplexity computed twice


def test_auto_refines_the_step_between_the_walks_points():
    """The best step between two of the walk's points (x0 * sqrt(2)): refine finds it
    in two more evaluations, and keeps x when neither midpoint is better."""
    from streamlm.jobs.dynamic_tuning import refine, walk

    x0, calls = 8e-4, []

    def f(x):
        calls.append(x)
        return (math.log2(x / x0) - 0.5) ** 2

    got = refine(f, walk(f, x0))
    assert math.isclose(got, x0 * math.sqrt(2), rel_tol=1e-12)
    assert refine(lambda x: (math.log2(x / x0)) ** 2, x0) == x0


def test_a_checkpoint_resumes_only_with_its_own_settings():
    """The step and decay come from defaults that may change between versions: a
    checkpoint holds the settings it ran with, and another run's are refused."""
    cfg = ModelConfig(V=12, D=4, H=4, cell="lstm")
    p = Params.init(cfg, seed=0)
    a = Adapter(p, Settings.of({"method": "sgd", "lr": 0.1}).check())
    arrays, meta = a.state_arrays(), a.state_meta()
    Adapter(p, Settings.of({"method": "sgd", "lr": 0.1}).check()).load_state(arrays, meta)
    with pytest.raises(Exception, match="pass the same settings"):
        Adapter(p, Settings.of({"method": "sgd", "lr": 0.2}).check()).load_state(arrays, meta)
    old = {k: v for k, v in meta.items() if k != "settings"}  # (before they were kept)
    Adapter(p, Settings.of({"method": "sgd", "lr": 0.2}).check()).load_state(arrays, old)
