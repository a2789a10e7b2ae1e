"""streamlm.nn.optim: the optimisers' step against numpy references, their state through
a checkpoint, the weight average, and the learning-rate schedules (their lr
sequences on a fake validation curve, resumed halfway, and one CLI run each)."""

import json
import math

import numpy as np
import pytest
from helpers import assert_one_error_line, cli, markov_text

from streamlm.errors import UsageError
from streamlm.jobs.prepare import prepare
from streamlm.jobs.train import TrainConfig
from streamlm.nn import optim

SMALL = ["--embed", "12", "--hidden", "12", "--batch", "4", "--bptt", "6"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    words = [f"w{i}" for i in range(30)]
    (d / "train.txt").write_text(markov_text(150, 1, words))
    # a validation set from another chain: its ppl gets worse as training fits train
    (d / "other.txt").write_text(markov_text(40, 2, words, chain=1))
    prepare([str(d / "train.txt")], d / "train")
    prepare([str(d / "other.txt")], d / "other", vocab_path=d / "train" / "vocab.txt")
    return d


# ------------------------------------------------------------ the optimisers --
def _grad(P=300, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(P) * scale).astype(np.float32), \
        rng.standard_normal(P).astype(np.float32)


def _clip_rate(g, clip):
    """The book's clip_grads in numpy: rate = clip / (norm + 1e-6) when below 1."""
    norm = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    rate = clip / (norm + 1e-6)
    return norm, np.float32(rate if rate < 1 else 1.0)


@pytest.mark.parametrize("clip", [0.0, 0.5, 1e9])
def test_sgd_step_is_the_clipped_update_and_zeroes_the_gradient(clip):
    g, p = _grad(scale=3.0)
    opt = optim.make_optimizer("sgd", p, clip=clip)
    norm, rate = _clip_rate(g, clip) if clip else (_clip_rate(g, 1.0)[0], np.float32(1))
    want = p.astype(np.float64) - 0.1 * (g.astype(np.float64) * float(rate))
    got = opt.step(p, g, None, 0.1, 1)
    assert got == pytest.approx(norm, rel=1e-12)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
    assert not g.any()
    assert (rate < 1) == (clip == 0.5)  # the clipping did something only at 0.5


def test_adam_steps_are_the_books_adam():
    """Three steps of Adam with clipping against the book's Adam in numpy (float32)."""
    _, p = _grad(seed=1)
    ref = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    opt = optim.make_optimizer("adam", p, clip=0.7)
    f = np.float32
    for t in range(1, 4):
        g, _ = _grad(seed=10 + t, scale=0.2 * t)
        _, rate = _clip_rate(g, 0.7)
        gs = g * rate
        lr_t = f(0.01 * math.sqrt(1.0 - 0.999 ** t) / (1.0 - 0.9 ** t))
        m = m + (f(1) - f(0.9)) * (gs - m)
        v = v + (f(1) - f(0.999)) * (gs * gs - v)
        ref = ref - lr_t * m / (np.sqrt(v) + f(1e-7))
        opt.step(p, g, None, 0.01, t)
        assert not g.any()
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.m, m, rtol=1e-5, atol=1e-8)
    assert opt.t == 3


def test_a_non_finite_gradient_moves_nothing():
    g, p = _grad()
    g[7] = np.inf
    opt = optim.make_optimizer("adam", p, clip=1.0, ema=0.9)
    before = p.copy()
    assert opt.step(p, g, None, 0.01, 4) == math.inf
    np.testing.assert_array_equal(p, before)
    assert opt.t == 0 and not opt.m.any() and opt.average.n == 0


def test_lazy_step_moves_only_the_segments():
    g, p = _grad()
    seg = np.array([[10, 40], [100, 101], [250, 300]], dtype=np.int64)
    inside = np.zeros(p.shape, bool)
    for a, b in seg:
        inside[a:b] = True
    g[~inside] = 0  # a row-sparse gradient lives inside its segments
    dense_p, dense_g = p.copy(), g.copy()
    lazy = optim.make_optimizer("adam", p)
    dense = optim.make_optimizer("adam", dense_p)
    norm = lazy.step(p, g, seg, 0.01, 1)
    assert norm == pytest.approx(dense.step(dense_p, dense_g, None, 0.01, 1), rel=1e-12)
    np.testing.assert_array_equal(p, dense_p)
    assert not g.any() and not lazy.m[~inside].any() and lazy.m[inside].any()


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_state_goes_through_a_checkpoint_and_continues_bitwise(name):
    """state_arrays / state_meta (as the checkpoint stores them) into a new optimiser:
    the next steps give the same bytes as the optimiser that never stopped."""
    _, p = _grad(seed=2)
    a = optim.make_optimizer(name, p, clip=0.5, ema=0.9)
    for t in range(1, 7):
        a.step(p, _grad(seed=t)[0], None, 0.05, t)
    q = p.copy()
    arrays = {k: v.copy() for k, v in a.state_arrays().items()}
    assert set(arrays) == {"adam_m", "adam_v", "ema"}  # the names checkpoints use
    meta = json.loads(json.dumps(a.state_meta()))
    b = optim.make_optimizer(name, q, clip=0.5, ema=0.9)
    b.load_state(arrays, meta, "ckpt")
    for t in range(7, 12):
        a.step(p, _grad(seed=t)[0], None, 0.05, t)
        b.step(q, _grad(seed=t)[0], None, 0.05, t)
    assert p.tobytes() == q.tobytes()
    assert a.average.avg.tobytes() == b.average.avg.tobytes() and a.average.n == b.average.n


def test_the_weight_average_is_debiased_and_put_back():
    p = np.zeros(5, dtype=np.float64)
    opt = optim.make_optimizer("sgd", p, ema=0.5)
    seen = []
    for step in range(1, 2 * optim.EMA_EVERY + 1):
        p[:] = step
        if step % optim.EMA_EVERY == 0:
            seen.append(float(step))
        opt.average.update(step, p)
    d = 0.5 ** optim.EMA_EVERY  # per update
    w = [(1 - d) * d ** (len(seen) - 1 - i) for i in range(len(seen))]
    want = sum(wi * x for wi, x in zip(w, seen)) / sum(w)  # the debiased weighted mean
    with opt.averaged(p):
        np.testing.assert_allclose(p, want, rtol=1e-12)
    np.testing.assert_array_equal(p, 2 * optim.EMA_EVERY)  # the weights are back


# ----------------------------------------------------------- the schedules --
CURVE = [100.0, 90.0, 95.0, 90.0, 80.0, 85.0, 85.0, 70.0]  # a fake validation curve


def _drive(schedule, curve, start=0, best=None):
    """epoch_end over the curve (epochs start+1...): the lr after each, the stops."""
    lrs, stops = [], []
    for e, ppl in enumerate(curve, start + 1):
        stops.append(schedule.epoch_end(e, ppl, best))
        best = ppl if best is None or ppl < best else best
        lrs.append(schedule.lr)
    return lrs, stops


def test_plateau_lowers_the_lr_when_no_better_than_the_best():
    # by hand: 90 < 100 keeps; 95 and 90 (a tie is no better) are no better than 90;
    # 80 is; 85, 85 are not; 70 is
    lrs, stops = _drive(optim.make_schedule("plateau", 1.0), CURVE)
    q = 1 / 4
    assert lrs == [1.0, 1.0, q, q ** 2, q ** 2, q ** 3, q ** 4, q ** 4] and not any(stops)
    lrs, _ = _drive(optim.make_schedule("plateau", 2.0, 0.5), CURVE)
    assert lrs == [2.0, 2.0, 1.0, 0.5, 0.5, 0.25, 0.125, 0.125]
    # the default is today's rule bit for bit: lr / 4 (not lr * 0.25 rounded otherwise)
    s, lr = optim.make_schedule("plateau", 0.003), 0.003
    for e, ppl in enumerate([5.0, 6.0, 7.0, 8.0], 1):
        s.epoch_end(e, ppl, 5.0 if e > 1 else None)
        lr = lr / 4.0 if e > 1 else lr
        assert s.lr == lr
    # without a validation set nothing changes
    assert _drive(optim.make_schedule("plateau", 1.0), [None] * 3)[0] == [1.0] * 3


@pytest.mark.parametrize("lr, decay, after", [(1.0, 0.5, 4), (1.0, 0.8, 6), (0.7, 0.9, 1)])
def test_step_decay_is_zarembas_schedule(lr, decay, after):
    """TensorFlow's PTB tutorial: epoch i (0-based) runs at lr * lr_decay **
    max(i + 1 - max_epoch, 0.0), whatever the validation says."""
    tf = [lr * decay ** max(i + 1 - after, 0.0) for i in range(12)]
    s = optim.make_schedule("step", lr, decay, after)
    assert s.lr == tf[0]
    lrs, stops = _drive(s, (CURVE + CURVE)[:11])
    assert lrs == tf[1:] and not any(stops)
    s = optim.make_schedule("step", lr, decay, after)
    assert _drive(s, [None] * 11)[0] == tf[1:]  # no validation needed


def test_mikolov_schedule_halves_then_stops():
    # entropy gains ln(prev) / ln(ppl): 200 -> 150 large, 150 -> 149 small (start
    # halving), 149 -> 100 large (halve anyway), 100 -> 99.9 small again: stop
    s = optim.make_schedule("mikolov", 1.0, min_improvement=1.003)
    lrs, stops = _drive(s, [200.0, 150.0, 149.0, 100.0, 99.9])
    assert lrs == [1.0, 1.0, 0.5, 0.25, 0.25] and stops == [False] * 4 + [True]


@pytest.mark.parametrize("anneal, kw", [("plateau", {}), ("plateau", {"factor": 0.3}),
                                        ("step", {"factor": 0.8, "after": 3}),
                                        ("mikolov", {"min_improvement": 1.02})])
def test_every_schedule_resumes_exactly(anneal, kw):
    """Stopped after 4 epochs, its state through JSON (the checkpoint's meta) into a
    new schedule: the same lrs and stops as one that never stopped."""
    curve = [300.0, 200.0, 160.0, 150.0, 155.0]  # mikolov: halving from 4, stops at 5
    whole, whole_stops = _drive(optim.make_schedule(anneal, 0.5, **kw), curve)
    a = optim.make_schedule(anneal, 0.5, **kw)
    first, _ = _drive(a, curve[:4])
    b = optim.make_schedule(anneal, 0.5, **kw)
    b.load(json.loads(json.dumps(a.state())))
    rest, rest_stops = _drive(b, curve[4:], start=4, best=min(curve[:4]))
    assert first + rest == whole and rest_stops == whole_stops[4:]
    assert whole[-1] < whole[0]  # the curve makes every schedule lower the lr


def test_schedule_options_defaults_and_errors():
    assert optim.schedule_options("plateau", None, None) == (0.25, None)
    assert optim.schedule_options("step", None, None) == (0.5, 4)
    assert optim.schedule_options("step", 0.8, 6) == (0.8, 6)
    assert optim.schedule_options("mikolov", None, None) == (0.5, None)
    for args, needle in [(("plateau", 4.0, None), "--lr-decay"), (("step", 0.0, None),
                         "--lr-decay"), (("plateau", 0.5, 3), "--decay-after"),
                         (("step", 0.5, 0), "--decay-after")]:
        with pytest.raises(UsageError, match=needle):
            optim.schedule_options(*args)
    cfg = TrainConfig(anneal="step", lr_decay=0.8, decay_after=6)
    cfg.validate()
    assert (cfg.lr_decay, cfg.decay_after) == (0.8, 6)


# ------------------------------------------------------------- the CLI runs --
def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "meta"}


def test_cli_step_decay_logs_the_lr_and_resumes_bitwise(corpus, tmp_path):
    """--anneal step --lr-decay 0.5 --decay-after 2 (no validation set): the epoch
    records carry TF's lr for the next epoch, the interval records the one in force;
    2 epochs then --resume to 5 ends with the bytes of 5 in one go."""
    def args(out, epochs, *more):
        return ("train", corpus / "train", "--out", out, *SMALL, "--epochs", str(epochs),
                "--optimizer", "sgd", "--lr", "0.5", "--anneal", "step", "--lr-decay", "0.5",
                "--decay-after", "2", "--checkpoint-every", "0", "--log-interval", "5",
                "--log", out.with_suffix(".jsonl"), *more)

    a = tmp_path / "a.npz"
    rc, _, se = cli(*args(a, 5))
    assert rc == 0, se
    recs = _records(a.with_suffix(".jsonl"))
    ep = [r for r in recs if r["kind"] == "epoch"]
    assert [r["lr"] for r in ep] == [0.5 * 0.5 ** max(e + 1 - 2, 0) for e in range(1, 6)]
    ipe = ep[0]["step"]
    for r in recs:
        if r["kind"] == "interval" and r["step"] % ipe:  # within epoch n: its lr
            n = r["step"] // ipe + 1
            assert r["lr"] == 0.5 * 0.5 ** max(n - 2, 0)
    b = tmp_path / "b.npz"
    assert cli(*args(b, 2))[0] == 0
    rc, _, se = cli(*args(b, 5, "--resume"))
    assert rc == 0, se
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys() and all(x[k].tobytes() == y[k].tobytes() for k in x)
    assert [r["lr"] for r in _records(b.with_suffix(".jsonl")) if r["kind"] == "epoch"] == \
        [r["lr"] for r in ep]


def test_cli_plateau_lr_decay(corpus, tmp_path):
    """--lr-decay 0.5 with the default --anneal plateau: the lr halves after every
    epoch whose valid ppl is no better than the best before it."""
    out = tmp_path / "m.npz"
    log = tmp_path / "m.jsonl"
    rc, so, se = cli("train", corpus / "train", "--valid", corpus / "other", "--out", out,
                     *SMALL, "--epochs", "5", "--optimizer", "sgd", "--lr", "1",
                     "--lr-decay", "0.5", "--checkpoint-every", "0", "--log", log, "--json")
    assert rc == 0, se
    ep = [r for r in _records(log) if r["kind"] == "epoch"]
    best, lr, decays = math.inf, 1.0, 0
    for r in ep:
        if r["valid_ppl"] < best:
            best = r["valid_ppl"]
        else:
            lr, decays = lr * 0.5, decays + 1
        assert r["lr"] == lr
    assert decays >= 1, "the unrelated valid set should stop improving"
    summary = json.loads(so)
    assert summary["lr"] == lr and summary["train_config"]["lr_decay"] == 0.5


@pytest.mark.parametrize("opt, needles", [
    (["--lr-decay", "4"], ["--lr-decay must be in (0, 1]", "got 4.0"]),
    (["--anneal", "step", "--lr-decay", "0"], ["--lr-decay must be in (0, 1]", "got 0.0"]),
    (["--decay-after", "3"], ["--decay-after goes with --anneal step"]),
    (["--anneal", "step", "--decay-after", "0"], ["--decay-after must be a positive"]),
])
def test_bad_schedule_options_one_line(corpus, tmp_path, opt, needles):
    out = tmp_path / "m.npz"
    rc, so, se = cli("train", corpus / "train", "--out", out, *SMALL, *opt)
    assert rc == 2 and so == ""
    assert_one_error_line(rc, se, *needles)
    assert not out.exists()


def test_resume_refuses_another_schedule(corpus, tmp_path):
    out = tmp_path / "m.npz"
    base = ("train", corpus / "train", "--out", out, *SMALL, "--optimizer", "sgd",
            "--checkpoint-every", "0", "--anneal", "step")
    assert cli(*base, "--epochs", "1")[0] == 0
    rc, _, se = cli(*base, "--epochs", "2", "--decay-after", "7", "--resume")
    assert_one_error_line(rc, se, "--decay-after")
    assert rc == 2


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_split_ranges_covers_every_element_once_in_order(parts):
    rng = np.random.default_rng(parts)
    for _ in range(50):
        n = int(rng.integers(1, 7))
        seg = np.sort(rng.choice(200_000, 2 * n, replace=False)).reshape(n, 2).astype(np.int64)
        groups = optim.split_ranges(seg, parts, min_size=1000)
        assert 1 <= len(groups) <= parts
        got = np.concatenate([np.arange(a, b) for g in groups for a, b in g])
        want = np.concatenate([np.arange(a, b) for a, b in seg])
        np.testing.assert_array_equal(got, want)
        sizes = [int((g[:, 1] - g[:, 0]).sum()) for g in groups]
        assert max(sizes) - min(sizes) <= 1


def test_dynamic_step_on_threads_equals_one_pass():
    from streamlm.compute import kernels as K
    from streamlm.compute.threads import set_num_threads

    rng = np.random.default_rng(3)
    P = 300_000
    theta0 = rng.standard_normal(P).astype(np.float32)
    seg = np.array([[10, 1000], [5000, 250_000], [260_000, P]], dtype=np.int64)
    inv = rng.random(P).astype(np.float32) + 0.5
    lr, decay = np.float32(0.01), np.float32(0.05)
    out = []
    for threads in (1, 2):
        set_num_threads(threads)
        theta = theta0 + np.float32(1)
        g = np.random.default_rng(4).standard_normal(P).astype(np.float32)
        if threads == 1:
            K.dyn_step(theta, theta0, g, inv, lr, decay, seg)
        else:
            optim.dynamic_step(theta, theta0, g, inv, lr, decay, seg)
        out.append((theta, g))
    set_num_threads(None)
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
    assert (out[1][1][seg[1, 0]:seg[1, 1]] == 0).all() and out[1][1][2000] != 0
