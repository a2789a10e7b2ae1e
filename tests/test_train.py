"""The trainer: CLI end to end, resume, NaN stop, lr decay, the JSONL log, exact
validation perplexity and bad options. (Bitwise resume after kill -9 is in
test_faults.py.)"""

import json
import math

import numpy as np
import pytest
import reference as ref
from helpers import cli, markov_text
from typer.testing import CliRunner

from streamlm.cli.app import app
from streamlm.data.shards import open_dataset
from streamlm.errors import TrainingDiverged, UsageError
from streamlm.jobs.prepare import prepare
from streamlm.jobs.train import TrainConfig, checkpoint_path, evaluate, train
from streamlm.nn.params import PARAM_NAMES, ModelConfig, Params, load_model

LOG_KEYS = {"step", "epoch", "tokens", "train_ppl", "valid_ppl", "lr", "tokens_per_s",
            "elapsed_s"}


_toy_text = markov_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    words = [f"w{i}" for i in range(40)]
    (d / "train.txt").write_text(_toy_text(600, 1, words))
    (d / "valid.txt").write_text(_toy_text(60, 2, words))
    # a validation set from a different chain: valid ppl gets worse as training fits train
    (d / "other.txt").write_text(_toy_text(60, 99, words, chain=1))
    prepare([str(d / "train.txt")], d / "train", row_group_tokens=997)
    vocab = d / "train" / "vocab.txt"
    prepare([str(d / "valid.txt")], d / "valid", vocab_path=vocab)
    prepare([str(d / "other.txt")], d / "other", vocab_path=vocab)
    return d


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


SMALL = ["--embed", "16", "--hidden", "16", "--batch", "8", "--bptt", "10"]


# ------------------------------------------------------------ end to end --
def test_cli_train_then_generate(corpus, tmp_path):
    out = tmp_path / "m.npz"
    log = tmp_path / "log.jsonl"
    rc, so, se = cli("train", corpus / "train", "--valid", corpus / "valid", "--out", out,
                     *SMALL, "--epochs", "3", "--optimizer", "adam", "--lr", "0.01",
                     "--log", log, "--log-interval", "50", "--json")
    assert rc == 0, se
    summary = json.loads(so)  # exactly one JSON object on stdout
    assert summary["stopped_by"] == "epochs" and summary["epochs"] == 3.0
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert recs and all(LOG_KEYS <= set(r) for r in recs)
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1.0, 2.0, 3.0]
    assert all(r["valid_ppl"] is not None for r in epochs)
    assert all(r["valid_ppl"] is None for r in recs if r["kind"] == "interval")
    # learning happened: 40 words, 3 successors each -> ppl far below 40
    assert recs[0]["train_ppl"] > 25  # starts near uniform (V = 42)
    assert epochs[-1]["valid_ppl"] < min(15, epochs[0]["valid_ppl"])
    # the model file is the best model, readable by numpy alone, with its config
    m = load_model(out)
    assert m.meta["valid_ppl"] == pytest.approx(min(r["valid_ppl"] for r in epochs))
    assert m.meta["train_config"]["optimizer"] == "adam"
    assert m.vocab == (corpus / "train" / "vocab.txt").read_text().split("\n")[:-1]
    assert summary["best_valid_ppl"] == pytest.approx(m.meta["valid_ppl"])
    # scoring the model file again reproduces the stored valid ppl exactly
    vp = evaluate(m.params, open_dataset(corpus / "valid"))["ppl"]
    assert vp == pytest.approx(m.meta["valid_ppl"], rel=1e-9)

    rc, text, se = cli("generate", out, "--words", "30", "--seed", "5")
    assert rc == 0, se
    words = text.split()
    assert len(words) + text.count("\n") - 1 <= 30 and len(words) > 0
    assert set(words) <= set(m.vocab)


def test_evaluate_is_exact_one_stream(corpus):
    """evaluate() = mean NLL of tokens 1..L-1 from one carried state (numpy reference)."""
    ds = open_dataset(corpus / "valid")
    cfg = ModelConfig(V=ds.vocab_size, D=5, H=6)
    p = Params.init(cfg, seed=3, dtype=np.float64)
    p["affine_b"][...] = np.random.default_rng(0).standard_normal(cfg.V)
    ids = ds.read(0, ds.num_tokens)
    arrays = {n: np.array(a) for n, a in p.items()}
    want, _, _ = ref.model_loss(arrays, ids[None, :-1], ids[None, 1:], np.zeros((1, 6)))
    got = evaluate(p, ds, chunk=37)  # chunks of 37 tokens: the state must carry
    assert got["tokens"] == ds.num_tokens - 1
    assert got["nll"] == pytest.approx(float(want), rel=1e-10)
    assert got["ppl"] == pytest.approx(math.exp(float(want)), rel=1e-10)


# ------------------------------------------------------------------ resume --
def test_resume_refuses_other_options(corpus, tmp_path):
    out = tmp_path / "m.npz"
    cfg = TrainConfig(embed=8, hidden=8, batch=4, bptt=5, epochs=1, optimizer="sgd", lr=0.1,
                      clip=0)
    train(cfg, corpus / "train", out)
    with pytest.raises(UsageError, match="--hidden"):
        train(TrainConfig(embed=8, hidden=9, batch=4, bptt=5, epochs=2, optimizer="sgd",
                          lr=0.1, clip=0),
              corpus / "train", out, resume=True)
    with pytest.raises(UsageError, match="no checkpoint"):
        train(cfg, corpus / "train", tmp_path / "other.npz", resume=True)
    # resuming with more epochs continues from the end of epoch 1
    s = train(TrainConfig(embed=8, hidden=8, batch=4, bptt=5, epochs=2, optimizer="sgd",
                          lr=0.1, clip=0),
              corpus / "train", out, resume=True)
    assert s["epochs"] == 2.0
    assert [r["epoch"] for r in s["history"] if r["kind"] == "epoch"] == [1.0, 2.0]


# ---------------------------------------------------------------- NaN stop --
def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(corpus, tmp_path):
    out = tmp_path / "m.npz"
    rc, so, se = cli("train", corpus / "train", "--out", out, *SMALL, "--epochs", "5",
                     "--optimizer", "sgd", "--lr", "1e30", "--clip", "0",
                     "--checkpoint-every", "1")
    assert rc == 3, se
    assert so == ""
    err = [line for line in se.splitlines() if line.startswith("streamlm: error:")]
    assert len(err) == 1 and "Traceback" not in se and "Warning" not in se
    assert "NaN" in err[0] or "nan" in err[0] or "inf" in err[0]
    assert "checkpoint" in err[0]
    ck = _arrays(checkpoint_path(out))
    assert np.isfinite(ck["params"]).all()
    state = json.loads(str(ck["meta"]))
    assert state["batcher"]["time_idx"] >= 10  # at least one good step was kept


def test_diverged_is_raised_by_the_library(corpus, tmp_path):
    cfg = TrainConfig(embed=16, hidden=16, batch=4, bptt=6, epochs=5, optimizer="sgd", lr=1e30,
                      clip=0,
                      checkpoint_every=0)
    with pytest.raises(TrainingDiverged, match="step"):
        train(cfg, corpus / "train", tmp_path / "m.npz")


# ----------------------------------------------------------------- lr decay --
def test_lr_divided_by_4_when_valid_does_not_improve(corpus, tmp_path):
    out = tmp_path / "m.npz"
    cfg = TrainConfig(embed=16, hidden=16, batch=4, bptt=6, epochs=5, optimizer="sgd",
                      lr=1.0, clip=1.0, checkpoint_every=0)
    s = train(cfg, corpus / "train", out, valid_paths=corpus / "other")
    ep = [r for r in s["history"] if r["kind"] == "epoch"]
    assert len(ep) == 5
    best = math.inf
    decays = 0
    lr = 1.0
    for r in ep:  # lr recorded after the epoch's decision
        if r["valid_ppl"] < best:
            best = r["valid_ppl"]
        else:
            lr /= 4
            decays += 1
        assert r["lr"] == lr
    assert decays >= 1, "the unrelated valid set should stop improving"
    assert load_model(out).meta["valid_ppl"] == pytest.approx(best)
    # interval records carry the lr in force at the time
    assert all(r["lr"] in {1.0 / 4 ** k for k in range(6)} for r in s["history"])


def test_mikolov_anneal_rule():
    """rnnlm's rule on the validation entropy (ln ppl): a gain below the factor starts
    the halving, which then goes on every epoch; the next small gain stops."""
    from types import SimpleNamespace

    from streamlm.nn.optim import _mikolov_anneal

    run = SimpleNamespace(lr=1.0, last_ppl=None, halving=False)
    steps = [(200.0, False, 1.0), (150.0, False, 1.0), (149.0, False, 0.5), (100.0, False, 0.25),
             (99.9, True, 0.25)]
    for ppl, stop, lr in steps:
        assert _mikolov_anneal(run, ppl, 1.003) is stop
        assert run.lr == lr and run.last_ppl == ppl


def test_mikolov_anneal_converges_and_resumes_bitwise(corpus, tmp_path):
    """--anneal mikolov ends training by itself ("converged"), halving the lr each
    epoch from the first small gain; stopped one epoch early and resumed, it ends
    with the same bytes, and resuming a converged run trains nothing."""
    def cfg(epochs):
        return TrainConfig(embed=16, hidden=16, batch=4, bptt=6, epochs=epochs, lr=0.01,
                           anneal="mikolov", min_improvement=1.02, checkpoint_every=0)

    a = train(cfg(60), corpus / "train", tmp_path / "a.npz", valid_paths=corpus / "valid")
    assert a["stopped_by"] == "converged"
    ep = [r for r in a["history"] if r["kind"] == "epoch"]
    lrs = [r["lr"] for r in ep]
    first = next(i for i, lr in enumerate(lrs) if lr < 0.01)
    assert 1 <= first < len(ep) - 1 < 59
    assert lrs[first:] == [0.01 / 2 ** (k + 1) for k in range(len(ep) - first)][:-1] + \
        [lrs[-1]] and lrs[-1] == lrs[-2]  # the stopping epoch does not halve
    E = len(ep)
    train(cfg(E - 1), corpus / "train", tmp_path / "b.npz", valid_paths=corpus / "valid")
    b = train(cfg(60), corpus / "train", tmp_path / "b.npz", valid_paths=corpus / "valid",
              resume=True)
    assert b["stopped_by"] == "converged"
    x, y = _arrays(tmp_path / "a.npz"), _arrays(tmp_path / "b.npz")
    for k in x:
        if k != "meta":
            assert x[k].tobytes() == y[k].tobytes(), k
    before = (tmp_path / "b.npz").read_bytes()
    c = train(cfg(60), corpus / "train", tmp_path / "b.npz", valid_paths=corpus / "valid",
              resume=True)
    assert c["stopped_by"] == "converged" and (tmp_path / "b.npz").read_bytes() == before


# -------------------------------------------------------------- bad options --
@pytest.mark.parametrize("opt, needle", [
    (["--bptt", "0"], "--bptt"),
    (["--batch", "0"], "--batch"),
    (["--lr", "-0.1"], "--lr"),
    (["--dropout", "1.5"], "--dropout"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--tie-weights", "--embed", "8", "--hidden", "16"], "--tie-weights"),
    (["--clip", "-1"], "--clip"),
    (["--anneal", "cosine"], "--anneal"),
    (["--min-improvement", "0.5"], "--min-improvement"),
])
def test_bad_options_one_line(corpus, tmp_path, opt, needle):
    out = tmp_path / "m.npz"
    rc, so, se = cli("train", corpus / "train", "--out", out, *opt)
    assert rc == 2
    lines = se.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in se
    assert not out.exists() and not checkpoint_path(out).exists()


def test_bad_data_one_line(corpus, tmp_path):
    # valid shards with another vocabulary are refused before training starts
    d = tmp_path / "v2"
    prepare([str(corpus / "other.txt")], d)
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(corpus / "train"), "--valid", str(d), "--out",
                            str(tmp_path / "m.npz")])
    assert r.exit_code != 0
    assert "vocabulary" in str(r.exception)
    rc, _, se = cli("train", corpus / "train" / "shard-00000.parquet", "--out",
                    tmp_path / "m.npz")
    assert rc == 2 and "--vocab" in se and len(se.strip().splitlines()) == 1


def test_plot_and_time_limit(corpus, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "m.npz", tmp_path / "c.png"
    cfg = TrainConfig(embed=8, hidden=8, batch=4, bptt=5, epochs=1000, optimizer="sgd",
                      lr=0.5, clip=1,
                      max_minutes=0.02, log_interval=10)
    s = train(cfg, corpus / "train", out, valid_paths=corpus / "valid", plot_path=png)
    assert s["stopped_by"] == "time" and s["epochs"] < 1000
    assert s["history"][-1]["valid_ppl"] is not None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_model(out).meta["valid_ppl"] == pytest.approx(s["best_valid_ppl"])


def test_tied_weights_saved_untied_and_equal(corpus, tmp_path):
    out = tmp_path / "m.npz"
    train(TrainConfig(embed=12, hidden=12, batch=4, bptt=5, epochs=1, optimizer="sgd",
                      lr=0.5, clip=1,
                      tie_weights=True), corpus / "train", out)
    a = _arrays(out)
    assert set(PARAM_NAMES) <= set(a)
    np.testing.assert_array_equal(a["affine_W"], a["embed_W"].T)


def test_train_help_lists_options():
    r = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    for opt in ("--embed", "--hidden", "--batch", "--bptt", "--epochs", "--max-minutes",
                "--optimizer", "--lr", "--clip", "--seed", "--dropout", "--tie-weights",
                "--log", "--plot", "--checkpoint-every", "--resume", "--json", "--valid"):
        assert opt in r.output


@pytest.mark.parametrize("tied", [False, True])
def test_class_softmax_trains_and_resumes_bitwise(corpus, tmp_path, tied):
    """A class model (lazy Adam on the touched rows, dropout): 2 epochs in one run, or 1
    epoch and then a resume to 2, give the same bytes; and it learns."""
    def cfg(epochs):
        return TrainConfig(embed=16, hidden=16, batch=4, bptt=6, epochs=epochs, lr=0.01,
                           dropout=0.2, softmax="class", classes=6, tie_weights=tied, seed=4,
                           checkpoint_every=0)

    a = train(cfg(2), corpus / "train", tmp_path / "a.npz", valid_paths=corpus / "valid")
    train(cfg(1), corpus / "train", tmp_path / "b.npz", valid_paths=corpus / "valid")
    b = train(cfg(2), corpus / "train", tmp_path / "b.npz", valid_paths=corpus / "valid",
              resume=True)
    x, y = _arrays(tmp_path / "a.npz"), _arrays(tmp_path / "b.npz")
    assert x.keys() == y.keys() and {"class_W", "class_b", "word_class"} <= set(x)
    for k in x:
        if k != "meta":
            assert x[k].tobytes() == y[k].tobytes(), k
    assert a["best_valid_ppl"] == b["best_valid_ppl"] < 25  # 40 words, 3 successors each
    m = load_model(tmp_path / "a.npz")
    assert m.config.softmax == "class" and m.config.C == 6


def test_weight_average_is_what_validation_and_the_model_file_use(corpus, tmp_path):
    """--ema: the model file holds the debiased average of the weights (updated every
    EMA_EVERY steps), not the last weights; and a resume continues it bitwise."""
    from streamlm.compute import kernels as K
    from streamlm.nn.optim import EMA_EVERY

    x = np.arange(6, dtype=np.float64)
    avg = np.ones(6)
    K.ema_update(avg, x, 0.9)
    assert np.allclose(avg, 0.9 + 0.1 * x)

    def cfg(epochs, ema=0.99):
        return TrainConfig(embed=8, hidden=8, batch=4, bptt=5, epochs=epochs, lr=0.01,
                           seed=3, checkpoint_every=0, ema=ema)

    train(cfg(1), corpus / "train", tmp_path / "a.npz")
    ck = _arrays(checkpoint_path(tmp_path / "a.npz"))
    meta = json.loads(str(ck["meta"]))
    n = meta["ema_n"]
    assert n == meta["history"][-1]["step"] // EMA_EVERY > 0
    want = ck["ema"] / np.float32(1 - (0.99 ** EMA_EVERY) ** n)
    got = load_model(tmp_path / "a.npz").params.flat
    assert np.array_equal(got, want)
    assert not np.allclose(got, ck["params"])  # the average, not the last weights
    # a resume gives the bytes of an uninterrupted run
    train(cfg(2), corpus / "train", tmp_path / "b.npz", valid_paths=corpus / "valid")
    train(cfg(1), corpus / "train", tmp_path / "c.npz", valid_paths=corpus / "valid")
    train(cfg(2), corpus / "train", tmp_path / "c.npz", valid_paths=corpus / "valid",
          resume=True)
    b, c = _arrays(tmp_path / "b.npz"), _arrays(tmp_path / "c.npz")
    assert all(b[k].tobytes() == c[k].tobytes() for k in b if k != "meta")
    with pytest.raises(UsageError, match="ema"):
        train(cfg(3, ema=0.9), corpus / "train", tmp_path / "c.npz", resume=True)
    with pytest.raises(UsageError, match="--ema"):
        TrainConfig(ema=1.0).validate()
