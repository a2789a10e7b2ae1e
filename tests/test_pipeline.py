"""streamlm.nn.pipeline: one stream's blocks with the recurrence of the next block beside
the output layer of the last. The same numbers as RNNLM.nll, block by block, in
order; errors of a helper on the caller; and the scorer uses it for one stream."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from streamlm.compute import plan
from streamlm.nn import pipeline as PL
from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.model import RNNLM
from streamlm.nn.params import ModelConfig, Params


def model(kind: str, dtype=np.float64, V=40, H=8) -> RNNLM:
    rng = np.random.default_rng(5)
    classes = None
    cfg = ModelConfig(V, 6, H)
    if kind == "class":
        classes = WordClasses(frequency_classes(rng.integers(1, 50, V), 5))
        cfg = ModelConfig(V, 6, H, softmax="class", C=classes.C)
    p = Params.init(cfg, seed=2, dtype=dtype, classes=classes)
    a = p.file_arrays()
    a["rnn_b"] = np.linspace(-0.2, 0.2, H)
    a["affine_b"] = np.linspace(-0.4, 0.4, V)
    p.set_file_arrays(a)
    return RNNLM(p, frozen=True)


@pytest.mark.parametrize("kind", ["full", "class"])
@pytest.mark.parametrize("N", [1, 2])
def test_blocks_equal_nll_in_order_with_carried_state(kind, N, monkeypatch):
    """Six blocks of several segments each (8 rows a segment), resets and a short
    last row: per block the NLL of RNNLM.nll (float64, 1e-12) and its final
    states bitwise, delivered in order; float64 also against the reference."""
    monkeypatch.setattr(plan, "CLASS_SEGMENT_ROWS", 8)
    monkeypatch.setattr(plan, "FULL_SEGMENT_ROWS", 8)
    rnn = model(kind)
    V, H = rnn.config.V, rnn.config.H
    rng = np.random.default_rng(1)
    blocks = []
    for k in range(6):
        T = 37 if k < 5 else 11
        xs = rng.integers(0, V, (N, T)).astype(np.int32)
        ts = rng.integers(0, V, (N, T)).astype(np.int32)
        ts[0, 3] = -1
        rs = (rng.random((N, T)) < 0.05).astype(np.uint8)
        lengths = np.full(N, T)
        lengths[-1] = T - 2
        ts[-1, T - 2:] = -1
        blocks.append((xs, ts, rs, lengths))
    h = np.zeros((N, H))
    want = []
    for xs, ts, rs, lengths in blocks:
        nll, h2 = rnn.nll(xs, ts, h, reset=rs, lengths=lengths)
        want.append((nll, h2))
        h = h2
    got = []
    with PL.StreamPipeline(rnn, helpers=1) as pipe:
        h = np.zeros((N, H))
        for k, (xs, ts, rs, lengths) in enumerate(blocks):
            h = pipe.submit(xs, ts, h, reset=rs, lengths=lengths, key=k)
            np.testing.assert_array_equal(h, want[k][1])  # the states are known at once
            got.extend(pipe.completed())
        got.extend(pipe.finish())
        assert pipe.finish() == []
    assert [k for k, _, _ in got] == list(range(6))
    for (_, hN, nll), (wnll, wh) in zip(got, want):
        np.testing.assert_array_equal(hN, wh)
        np.testing.assert_allclose(nll, wnll, rtol=1e-12, atol=1e-12)
    # and the first block against the float64 reference (no resets there)
    xs, ts, _, _ = blocks[0]
    wc = None if rnn.classes is None else rnn.classes.word_class
    with PL.StreamPipeline(rnn, helpers=1) as pipe:
        pipe.submit(xs, np.where(ts < 0, 0, ts), np.zeros((N, H)), key=0)
        (_, _, nll), = pipe.finish()
    _, _, rnll = ref.model_loss(rnn.params.file_arrays(), xs, np.where(ts < 0, 0, ts),
                                np.zeros((N, H)), wc)
    np.testing.assert_allclose(nll, rnll, rtol=1e-10)


def test_a_helpers_error_reaches_the_caller(monkeypatch):
    rnn = model("class", np.float32)
    calls = {"n": 0}
    real = rnn.head.score_rows

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ArithmeticError("boom in a segment")
        real(*a)

    monkeypatch.setattr(rnn.head, "score_rows", flaky)
    monkeypatch.setattr(plan, "CLASS_SEGMENT_ROWS", 4)
    xs = np.ones((1, 40), np.int32)
    with pytest.raises(ArithmeticError, match="boom"):
        with PL.StreamPipeline(rnn, helpers=1) as pipe:
            h = np.zeros((1, rnn.config.H), np.float32)
            for k in range(5):
                h = pipe.submit(xs, xs, h, key=k)
                pipe.completed()
            pipe.finish()


def test_bad_ids_refused_before_any_kernel():
    rnn = model("full", np.float32)
    with PL.StreamPipeline(rnn, helpers=1) as pipe:
        with pytest.raises(ValueError):
            pipe.submit(np.full((1, 5), 99, np.int32), np.zeros((1, 5), np.int32),
                        np.zeros((1, rnn.config.H), np.float32))


def pipelined(rnn: RNNLM, N: int, threads: int) -> bool:
    """Whether the plan puts N streams on ``threads`` threads through the pipeline
    (plan.stream_pipeline)."""
    return plan.stream_pipeline(rnn.sizes, N, threads, False) > 0


def test_the_plan_pipelines_fewer_streams_than_threads_of_a_class_model():
    rnn = model("class", np.float32, V=40, H=8)
    assert pipelined(rnn, 1, 2) and not pipelined(rnn, 2, 2)
    assert not pipelined(rnn, 1, 1)
    from numba import config

    big = model("class", np.float32, V=400, H=256)  # split recurrence, head C + V/C < H
    assert pipelined(big, 1, 2) == bool(config.DISABLE_JIT)  # (no split without the JIT)
    assert not pipelined(model("full", np.float32), 1, 2)  # (its head splits W instead)


def test_the_scorer_pipelines_one_stream(tmp_path, monkeypatch):
    """score() of one stream on two threads goes through the pipeline, with the same
    figures as on one thread (where there is none)."""
    from streamlm.compute import threads
    from streamlm.jobs.score import score
    from streamlm.nn.params import save_model

    rnn = model("class", np.float32)
    words = [f"w{i}" for i in range(rnn.config.V - 2)] + ["<unk>", "<eos>"]
    path = tmp_path / "m.npz"
    save_model(path, rnn.params, words)
    rng = np.random.default_rng(0)
    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(rng.choice(words[:-2], 9)) for _ in range(400)))
    submits = {"n": 0}
    real = PL.StreamPipeline.submit

    def counted(self, *a, **k):
        submits["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(PL.StreamPipeline, "submit", counted)
    monkeypatch.setattr(plan, "CLASS_SEGMENT_ROWS", 64)
    old = threads.get_num_threads()
    try:
        threads.set_num_threads(2)
        two = score(str(path), [str(text)], engine="numba", chunk_tokens=50, batch=4).summary
        n2 = submits["n"]
        threads.set_num_threads(1)
        one = score(str(path), [str(text)], engine="numba", chunk_tokens=50, batch=4).summary
    finally:
        threads.set_num_threads(old)
    assert n2 == -(-4000 // 200) and submits["n"] == n2  # 4,000 tokens in calls of 200
    assert two["tokens"] == one["tokens"] == 4000
    assert two["logprob"] == pytest.approx(one["logprob"], rel=1e-6)
