"""The thin CLI: every option reaches its library function as the value the user
gave (typer's CliRunner, the library replaced by a recorder), and the choices are
listed in --help. What the jobs then do is tested with the jobs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from streamlm.cli.app import app
from streamlm.options import (
    Docs,
    Engine,
    Errors,
    Level,
    Optimizer,
    PieceModel,
    Reset,
    ScoreOptions,
)


class Recorder:
    def __init__(self, result):
        self.result = result
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


@pytest.fixture(autouse=True)
def _keep_logging():
    """The CLI configures the root logger for its own stderr: undo it after each test
    (CliRunner's stream is closed once the command returns)."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def test_score_options_reach_the_scorer(monkeypatch):
    from streamlm.jobs import score as score_module

    class Result:
        summary = {"tokens": 3, "oov": 0, "inputs": [{"path": "a.txt"}]}

    rec = Recorder(Result())
    monkeypatch.setattr(score_module, "score", rec)
    r = invoke("score", "m.npz", "a.txt", "b.txt", "--reset", "doc", "--level", "doc",
               "--output", "o.parquet", "--chunk-tokens", "7", "--batch", "3", "--errors",
               "replace", "--column", "ids", "--engine", "numpy", "--checkpoint", "c.ckpt",
               "--checkpoint-every", "99", "--no-progress", "--json", "--text-field", "a.b",
               "--text-column", "body", "--keep", "id,url", "--max-oov-rate", "0.2",
               "--split-buckets", "split")
    assert r.exit_code == 0, r.output
    (args, kwargs), = rec.calls
    assert args[:2] == ("m.npz", ["a.txt", "b.txt"])
    assert args[2] == ScoreOptions(reset=Reset.doc, level=Level.doc, chunk_tokens=7, batch=3,
                                   errors=Errors.replace, column="ids", engine=Engine.numpy,
                                   checkpoint_every=99, text_field="a.b", text_column="body",
                                   keep=("id", "url"), max_oov_rate=0.2)
    assert kwargs["output"] == "o.parquet" and kwargs["checkpoint"] == "c.ckpt"
    assert kwargs["split_buckets"] == "split"
    assert kwargs["progress"] is None  # --no-progress
    assert json.loads(r.stdout) == Result.summary


def test_score_defaults(monkeypatch):
    from streamlm.jobs import score as score_module

    class Result:
        summary = {"tokens": 0, "oov": 0, "inputs": []}

    rec = Recorder(Result())
    monkeypatch.setattr(score_module, "score", rec)
    assert invoke("score", "m.npz", "a.txt", "--json").exit_code == 0
    assert rec.calls[0][0][2] == ScoreOptions()
    opts = rec.calls[0][0][2]
    assert opts.reset == Reset.auto and opts.checkpoint_every == "60s"
    assert opts.max_oov_rate == 0.05 and opts.column is None and opts.text_field == "text"


def test_score_dask_options_reach_score_dask(monkeypatch):
    from streamlm.jobs import distributed

    class Result:
        summary = {"tokens": 0, "oov": 0, "inputs": []}
        failed = []

    rec = Recorder(Result())
    monkeypatch.setattr(distributed, "score_dask", rec)
    r = invoke("score", "m.npz", "a.txt", "--dask", "local:2", "--reset", "line", "--output",
               "out/", "--json")
    assert r.exit_code == 0, r.output
    (args, kwargs), = rec.calls
    assert args[:3] == ("m.npz", ["a.txt"], "local:2")
    assert args[3] == ScoreOptions(reset=Reset.line)  # the level follows the reset there
    assert kwargs["output_dir"] == "out/"


def test_failed_dask_shards_exit_4(monkeypatch):
    from streamlm.jobs import distributed

    class Result:
        summary = {"tokens": 0, "oov": 0, "inputs": []}
        failed = [{"path": "b.txt", "error": "b.txt: no such file"}]

    monkeypatch.setattr(distributed, "score_dask", Recorder(Result()))
    r = invoke("score", "m.npz", "a.txt", "b.txt", "--dask", "local:1", "--json")
    assert r.exit_code == 4


def test_prepare_options_reach_prepare(monkeypatch):
    from streamlm.jobs import prepare as prepare_module

    manifest = {"num_tokens": 5, "shards": [], "vocab": {"size": 3}, "unk_tokens": 0}
    rec = Recorder(manifest)
    monkeypatch.setattr(prepare_module, "prepare", rec)
    r = invoke("prepare", "a.txt", "-", "--out", "d", "--vocab-size", "50", "--min-count",
               "2", "--shard-tokens", "1000", "--docs", "blank-line", "--errors", "replace",
               "--text-field", "meta.body", "--json")
    assert r.exit_code == 0, r.output
    (args, kwargs), = rec.calls
    assert args == (["a.txt", "-"], "d")
    assert kwargs == {"vocab_size": 50, "min_count": 2, "vocab_path": None,
                      "shard_tokens": 1000, "docs": Docs.blank_line, "errors": Errors.replace,
                      "text_field": "meta.body", "text_column": None, "column": None,
                      "tokenizer": None, "pieces": None, "piece_model": None,
                      "sample_lines": None}
    assert json.loads(r.stdout) == manifest


def test_prepare_tokenizer_options_reach_prepare(monkeypatch):
    from streamlm.jobs import prepare as prepare_module

    manifest = {"num_tokens": 5, "shards": [], "vocab": {"size": 3}, "unk_tokens": 0}
    rec = Recorder(manifest)
    monkeypatch.setattr(prepare_module, "prepare", rec)
    r = invoke("prepare", "a.txt", "--out", "d", "--tokenizer", "sentencepiece", "--pieces",
               "500", "--piece-model", "bpe", "--sample-lines", "1000")
    assert r.exit_code == 0, r.output
    (args, kwargs), = rec.calls
    assert {k: kwargs[k] for k in ("tokenizer", "pieces", "piece_model", "sample_lines")} == {
        "tokenizer": "sentencepiece", "pieces": 500, "piece_model": PieceModel.bpe,
        "sample_lines": 1000}


def test_train_options_reach_train(monkeypatch):
    from streamlm.jobs import train as train_module

    rec = Recorder({"model": "m.npz", "history": []})
    monkeypatch.setattr(train_module, "train", rec)
    r = invoke("train", "shards", "--out", "m.npz", "--valid", "v", "--vocab", "vocab.txt",
               "--embed", "8", "--hidden", "8", "--batch", "4", "--bptt", "5", "--epochs",
               "2", "--max-minutes", "1.5", "--optimizer", "sgd", "--lr", "0.5", "--clip",
               "0.25", "--seed", "3", "--dropout", "0.1", "--tie-weights", "--log-interval",
               "7", "--log", "l.jsonl", "--plot", "p.png", "--checkpoint-every", "11",
               "--resume", "--json")
    assert r.exit_code == 0, r.output
    (args, kwargs), = rec.calls
    cfg = args[0]
    assert (cfg.embed, cfg.hidden, cfg.batch, cfg.bptt, cfg.epochs, cfg.max_minutes) == (
        8, 8, 4, 5, 2, 1.5)
    assert (cfg.optimizer, cfg.lr, cfg.clip, cfg.seed, cfg.dropout, cfg.tie_weights) == (
        Optimizer.sgd, 0.5, 0.25, 3, 0.1, True)
    assert (cfg.log_interval, cfg.checkpoint_every) == (7, 11)
    assert args[1:] == (["shards"], "m.npz")
    assert {k: kwargs[k] for k in ("valid_paths", "vocab_path", "log_path", "plot_path",
                                   "resume")} == {"valid_paths": ["v"],
                                                  "vocab_path": "vocab.txt",
                                                  "log_path": "l.jsonl", "plot_path": "p.png",
                                                  "resume": True}
    assert json.loads(r.stdout) == {"model": "m.npz"}  # the history stays out of --json


def test_generate_options_reach_generate(monkeypatch):
    from streamlm.jobs import generate as generate_module

    rec = Recorder(iter(["a", " b", "\n"]))
    monkeypatch.setattr(generate_module, "sample_text", rec)
    r = invoke("generate", "m.npz", "--words", "3", "--temperature", "0.5", "--seed", "4",
               "--prompt", "the cat")
    assert r.exit_code == 0, r.output
    assert rec.calls == [(("m.npz",), {"words": 3, "temperature": 0.5, "seed": 4,
                                       "prompt": "the cat"})]
    assert r.stdout == "a b\n"


def test_query_options_reach_query(monkeypatch):
    from streamlm.cli import query as query_module

    rec = Recorder(iter(["the=2 2 -1\t", "Tokens:\t1\n"]))
    monkeypatch.setattr(query_module, "query", rec)
    r = invoke("query", "-v", "word", "-v", "summary", "-n", "--carry", "--engine", "numpy",
               "m.npz")
    assert r.exit_code == 0, r.output
    assert rec.calls == [(("m.npz", "-", ["word", "summary"], False, True, "numpy"), {})]
    assert r.stdout == "the=2 2 -1\tTokens:\t1\n"
    invoke("query", "m.npz")
    assert rec.calls[-1] == (("m.npz", "-", None, True, False, "auto"), {})


@pytest.mark.parametrize("command, option, choices", [
    ("score", "--reset", Reset), ("score", "--level", Level), ("score", "--errors", Errors),
    ("score", "--engine", Engine), ("prepare", "--docs", Docs),
    ("prepare", "--piece-model", PieceModel),
    ("train", "--optimizer", Optimizer)])
def test_help_lists_the_choices(command, option, choices):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    line = next(ln for ln in r.output.splitlines() if option + " " in ln)
    assert "|".join(c.value for c in choices) in line


def test_a_wrong_choice_is_a_usage_error():
    r = invoke("score", "m.npz", "a.txt", "--reset", "word")
    assert r.exit_code == 2


def test_help_texts_keep_their_brackets():
    """Rich markup must not swallow '[dask]' and the like."""
    assert "streamlm[dask]" in invoke("score", "--help").output
    assert "streamlm[sentencepiece]" in invoke("prepare", "--help").output


@pytest.mark.parametrize("argv, want", [
    (["score", "m.npz", "a.txt", "-q"], ["-q", "score", "m.npz", "a.txt"]),
    (["score", "-v", "m.npz", "--json"], ["-v", "score", "m.npz", "--json"]),
    (["-q", "score", "m.npz"], ["-q", "score", "m.npz"]),
    (["generate", "m.npz", "--prompt", "-q", "-q"], ["-q", "generate", "m.npz", "--prompt", "-q"]),
    (["score", "m.npz", "--", "-q"], ["score", "m.npz", "--", "-q"]),
    (["nosuchcommand", "-q"], ["nosuchcommand", "-q"]),
    (["query", "-v", "summary", "m.npz", "-q"], ["-q", "query", "-v", "summary", "m.npz"]),
])
def test_quiet_and_verbose_work_after_the_command(argv, want):
    from streamlm.cli.app import hoist_global_flags

    assert hoist_global_flags(argv) == want


def test_flags_show_no_type_in_help():
    """typer >= 0.29 shows "<bool>" after a flag unless console.flags_look_like_flags hides
    it; 0.27-0.28 show "<int>" for a value, older ones click's INTEGER (and no type for a
    flag)."""
    out = invoke("score", "--help").output
    line = next(ln for ln in out.splitlines() if "--json" in ln)
    batch = next(ln for ln in out.splitlines() if "--batch" in ln)
    assert "<bool>" not in line and "BOOLEAN" not in line
    assert "<int>" in batch or "INTEGER" in batch
    assert "<bool>" not in out and "BOOLEAN" not in out


def test_flags_look_like_flags_without_display_type_rich(monkeypatch):
    """typer < 0.29 has no TyperOption.display_type_rich: the patch does nothing there
    (it raised AttributeError at import with typer 0.16 and 0.27)."""
    import typer.core

    from streamlm.cli.console import flags_look_like_flags

    old_option = type("TyperOption", (), {"is_flag": True, "metavar": None})
    monkeypatch.setattr(typer.core, "TyperOption", old_option)
    flags_look_like_flags()
    assert not hasattr(old_option, "display_type_rich")


def test_flags_look_like_flags_twice_wraps_once():
    from typer.core import TyperOption

    from streamlm.cli.console import flags_look_like_flags

    before = getattr(TyperOption, "display_type_rich", None)
    flags_look_like_flags()
    assert getattr(TyperOption, "display_type_rich", None) is before


def _commands():
    import typer

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_of_every_command_in_a_subprocess(command):
    """The installed typer/click (CI also runs this file with the oldest typer that
    pyproject.toml allows): start-up and --help work, no traceback."""
    from helpers import run

    r = run(*([command] if command else []), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "Usage:" in r.stdout and "--help" in r.stdout
    assert "<bool>" not in r.stdout and "BOOLEAN" not in r.stdout


def test_progress_bars_draw_on_a_terminal():
    """The rich bars of score and train (the columns they use came with rich 12.3,
    pyproject.toml's bound; CI also runs this file with that rich): drawn on a
    terminal, the figures of the callbacks in them."""
    import io

    from rich.console import Console

    from streamlm.cli.progress import ScoreProgress, TrainProgress

    out = io.StringIO()
    con = Console(file=out, force_terminal=True, width=80)
    with ScoreProgress(True, tty=True, every_s=0.0, console=con) as update:
        assert update is not None
        update.__self__.last = float("-inf")  # (past the bar's 0.2 s between redraws)
        update({"tokens": 123456, "perplexity": 99.5, "scored_this_run": 123456,
                "seconds": 2.0, "fraction": 0.5})
        update.__self__.live.refresh()  # (drawn now, not by the refresh thread)
    with TrainProgress(tty=True, console=con) as progress:
        progress({"event": "start", "total_steps": 10, "step": 0, "iters_per_epoch": 5})
        progress({"event": "step", "step": 3, "epoch": 0.6, "tokens_per_s": 4321.0,
                  "train_ppl": 55.0, "lr": 0.01})
        progress({"event": "done"})
    text = out.getvalue()
    assert "123.5k tokens" in text and "ppl 99.50" in text and "61,728 tok/s" in text
    assert "epoch 0.60" in text and "4,321 tok/s" in text and "ppl 55.0" in text
