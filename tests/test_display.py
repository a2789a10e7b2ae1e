"""What streamlm says while it works and when it is done: the compile notice of a cold
kernel cache, progress that follows the tokens scored (not read), bars that fit in 80
columns with no nan, log lines above a live bar, the summary's wall time, the literal
<unk> of normalised text (PTB's), and the grouped --help with shell completion."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest
from helpers import cli, command

from streamlm.data.vocab import Vocab
from streamlm.nn.params import ModelConfig, Params, save_model

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("display")
    vocab = Vocab.build(Counter(TEXT.split()))
    save_model(d / "m.npz", Params.init(ModelConfig(len(vocab), 4, 5), seed=1), vocab.words)
    (d / "a.txt").write_text(TEXT * 30)
    return d


def _run(*args, **env):
    e = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", **env}
    return subprocess.run(command(*args), env=e, capture_output=True, text=True, timeout=600)


def _screen(buf: io.StringIO) -> list[str]:
    """What a terminal shows of a rich console's output, one string per line drawn."""
    return [s for s in re.split(r"[\r\n]", ANSI.sub("", buf.getvalue())) if s.strip()]


# --------------------------------------------------------- the compile notice --
def test_a_cold_kernel_cache_says_it_compiles_once(env, tmp_path):
    """An empty NUMBA_CACHE_DIR: one line says the kernels compile; run again on the
    cache it filled: not a word."""
    cache = tmp_path / "numba"
    cache.mkdir()
    args = ("score", env / "m.npz", env / "a.txt", "--engine", "numba", "--json")
    r = _run(*args, NUMBA_CACHE_DIR=str(cache))
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if "compiling kernels" in ln]
    assert said == ["streamlm: compiling kernels (once per machine; about 20 s)"], r.stderr
    assert any(cache.rglob("*.nbi"))  # (it did compile, into the empty cache)
    r = _run(*args, NUMBA_CACHE_DIR=str(cache))
    assert r.returncode == 0, r.stderr
    assert "compiling" not in r.stderr


def test_a_compile_of_other_code_says_nothing(tmp_path):
    """The notice is about streamlm's kernels: a user's own kernel compiling beside them
    (streamlm imported as a library, INFO logging on) is not announced."""
    prog = ("import logging, sys\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(message)s')\n"
            "import streamlm.compute.kernels\n"
            "from numba import njit\n"
            "f = njit(lambda x: x + 1)\n"
            "assert f(1) == 2\n")
    e = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", prog], env=e, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "compiling" not in r.stderr


# ---------------------------------------------------------------- progress --
def test_progress_follows_the_tokens_scored_not_the_bytes_read(env, tmp_path):
    """Reading runs ahead of scoring (a reader thread, 1 MB reads): the share done is the
    share of the tokens scored (here the text repeats, so tokens and bytes go together),
    and it is below 1 until the last call."""
    from streamlm.jobs.score import score

    big = tmp_path / "big.txt"
    big.write_text(TEXT * 25_000)  # 1.7 MB, 525k tokens
    seen: list[dict] = []
    res = score(env / "m.npz", [big], engine="numba", batch=1, chunk_tokens=4096,
                progress=seen.append)
    total = res.summary["tokens"]
    assert len(seen) > 20
    for d in seen[:-1]:
        assert d["fraction"] < 1.0
    for d in seen:
        assert d["fraction"] == pytest.approx(d["tokens"] / total, abs=0.01), d
    assert seen[-1]["fraction"] == 1.0


def _score_bar(info: dict) -> str:
    from rich.console import Console

    from streamlm.cli.progress import ScoreProgress

    buf = io.StringIO()
    con = Console(file=buf, width=80, force_terminal=True, color_system=None)
    p = ScoreProgress(True, tty=True, console=con)
    cb = p.__enter__()
    try:
        p.last = -1e9  # (the bar takes one update per 0.2 s)
        cb(info)
        p.live.refresh()
    finally:
        p.__exit__(None, None, None)
    return [ln for ln in _screen(buf) if "tokens" in ln][-1]


def test_the_score_bar_fits_in_80_columns():
    line = _score_bar({"tokens": 123_456_789, "logprob": -1.0, "perplexity": 12345.678,
                       "seconds": 125.0, "scored_this_run": 123_456_789, "fraction": 0.45})
    assert len(line) <= 80, line
    assert "…" not in line
    assert re.search(r" 45% .* ETA (-:--:--|\d+:\d\d:\d\d)$", line), line
    assert "123.5M tokens" in line and "987.7k tok/s" in line  # 123,456,789 / 125 s


def test_the_train_bar_has_no_nan_and_epochs_are_plain_log_lines(caplog):
    from rich.console import Console

    from streamlm.cli.progress import TrainProgress

    buf = io.StringIO()
    con = Console(file=buf, width=80, force_terminal=True, color_system=None)
    rec = {"kind": "epoch", "epoch": 1.0, "step": 50, "tokens": 14000, "train_ppl": 100.5,
           "valid_ppl": 90.25, "lr": 0.002, "tokens_per_s": None, "elapsed_s": 3.0}
    with caplog.at_level(logging.INFO, logger="streamlm"), \
            TrainProgress(tty=True, console=con) as cb:
        cb({"event": "start", "total_steps": 100, "step": 0, "iters_per_epoch": 50,
            "tokens_per_step": 280, "train_tokens": 14000})
        cb._progress.refresh()
        before = _screen(buf)
        cb({"event": "step", "step": 1, "tokens": 280, "loss": 4.0, "train_ppl": 123.45,
            "lr": 0.002, "tokens_per_s": 12345.0, "epoch": 0.02})
        cb._progress.refresh()
        bar = _screen(buf)[-1]
        cb({"event": "epoch", "record": rec})
    assert before and not any("nan" in ln for ln in before), before
    assert "ppl 123.5" in bar and "12,345 tok/s" in bar and "lr 0.002" in bar, bar
    assert len(bar) <= 80 and re.search(r"ETA (-:--:--|\d+:\d\d:\d\d)$", bar), bar
    assert [r.getMessage() for r in caplog.records] == [
        "end of epoch 1.00, step 50, train ppl 100.50, valid ppl 90.25, lr 0.002, 3 s"]
    assert ".py:" not in buf.getvalue()  # (rich's console.log put progress.py:146 there)


def test_log_lines_go_above_a_live_bar():
    """The CLI's handler writes to the stderr of the moment: under a live bar, rich's
    proxy, which prints the line above the bar instead of through it."""
    from rich.console import Console

    from streamlm.cli.progress import ScoreProgress, StderrHandler

    buf = io.StringIO()
    con = Console(file=buf, width=80, force_terminal=True, color_system=None)
    logger = logging.getLogger("streamlm.test_display")
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with ScoreProgress(True, tty=True, console=con):
            logger.info("a line while the bar is live")
    finally:
        logger.removeHandler(handler)
    assert "a line while the bar is live" in _screen(buf)


# ----------------------------------------------------------------- summary --
def test_the_summary_gives_wall_time_and_tokens_per_second(env):
    from streamlm.jobs.metrics import format_summary, summarize

    s = summarize(1000, 0, -2000.0) | {"inputs": [{"path": "x.txt"}], "seconds": 2.5,
                                       "tokens_per_second": 400.0}
    s["inputs"][0].update(summarize(1000, 0, -2000.0))
    assert format_summary(s).splitlines()[-1] == "wall time                   2.50 s (400 tokens/s)"
    rc, out, err = cli("score", env / "m.npz", env / "a.txt")
    assert rc == 0, err
    m = re.fullmatch(r"wall time +(\d+\.\d\d) s \(([\d,]+) tokens/s\)", out.splitlines()[-1])
    assert m, out
    tokens = int(re.search(r"tokens +([\d,]+)", out)[1].replace(",", ""))
    seconds, rate = float(m[1]), int(m[2].replace(",", ""))
    assert tokens == 30 * (len(TEXT.split()) + TEXT.count("\n")) and seconds > 0
    assert rate == pytest.approx(tokens / seconds, rel=0.02 / seconds + 0.01)


# ----------------------------------------------------------- literal <unk> --
PTB_LIKE = ("the <unk> sat on the mat\n"  # PTB writes its rare words as <unk>
            "the dog <unk> on the <unk>\n"
            "a cat and a dog\n")


def _expected(text: str, vocab_words: set[str]) -> tuple[int, int, int]:
    """(tokens, OOVs as KenLM counts them, literal <unk>) of text, by the rule of the
    tokeniser: every line's words plus one <eos>."""
    words = text.split()
    oov = sum(w not in vocab_words or w == "<unk>" for w in words)
    return len(words) + text.count("\n"), oov, words.count("<unk>")


@pytest.mark.parametrize("engine", ["numpy", "numba"])  # the Python and the compiled tokeniser
def test_a_literal_unk_is_counted_apart_and_does_not_warn(env, tmp_path, engine):
    vocab = set(Vocab.build(Counter(TEXT.split())).words)
    ptb = tmp_path / "ptb.txt"
    ptb.write_text(PTB_LIKE * 20)
    tokens, oov, literal = _expected(PTB_LIKE * 20, vocab)
    assert literal == oov and literal / tokens > 0.05  # all literal, above the 5% warning
    rc, out, err = cli("score", env / "m.npz", ptb, "--engine", engine, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert (s["tokens"], s["oov"], s["unk_literal"]) == (tokens, oov, literal)
    assert s["inputs"][0]["unk_literal"] == literal
    assert s["oov_rate"] == pytest.approx(oov / tokens)  # KenLM's figure, unchanged
    assert "warning" not in err

    # real OOVs too: the warning counts them alone and says how many were literal
    mixed = tmp_path / "mixed.txt"
    text = PTB_LIKE * 20 + "a zebra and a gnu\n" * 30  # 10% real OOVs
    mixed.write_text(text)
    tokens2, oov2, literal2 = _expected(text, vocab)
    rc, out, err = cli("score", env / "m.npz", mixed, ptb, "--engine", engine, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert [d["unk_literal"] for d in s["inputs"]] == [literal2, literal]
    assert s["unk_literal"] == literal2 + literal and s["oov"] == oov2 + oov
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    real = 100 * (oov2 - literal2) / tokens2
    assert len(warn) == 1 and "mixed.txt" in warn[0], err
    assert f"{real:.1f}%" in warn[0] and f"{literal2:,} more are a literal <unk>" in warn[0]


def test_literal_unk_in_documents_and_in_the_text_summary(env, tmp_path):
    vocab = set(Vocab.build(Counter(TEXT.split())).words)
    docs = [PTB_LIKE, "a <unk> and a zebra\n\nthe <unk>", "the cat"]
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    _, oov, literal = _expected("\n".join(docs) + "\n", vocab)
    rc, out, err = cli("score", env / "m.npz", jl, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert (s["oov"], s["unk_literal"]) == (oov, literal) and 0 < literal < oov
    rc, out, err = cli("score", env / "m.npz", jl)
    assert rc == 0, err
    assert f"  OOVs                      {oov} ({literal} a literal <unk> of the text)" in out


def test_token_ids_cannot_tell_a_literal_unk(env, tmp_path):
    """Shards hold ids only: unk_literal is null, the summary says nothing new."""
    (tmp_path / "t.txt").write_text(PTB_LIKE)
    rc, _, err = cli("prepare", tmp_path / "t.txt", "--out", tmp_path / "shards",
                     "--vocab", _vocab_file(env, tmp_path))
    assert rc == 0, err
    rc, out, err = cli("score", env / "m.npz", tmp_path / "shards", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["oov"] == 3 and s["unk_literal"] is None and s["inputs"][0]["unk_literal"] is None
    rc, out, err = cli("score", env / "m.npz", tmp_path / "shards")
    assert rc == 0, err
    assert "  OOVs                      3\n" in out and "literal" not in out + err


def _vocab_file(env, tmp_path):
    from streamlm.nn.params import load_model

    p = tmp_path / "vocab.txt"
    p.write_text("".join(w + "\n" for w in load_model(env / "m.npz").vocabulary().words))
    return p


# -------------------------------------------------------------------- help --
COMMANDS = ["prepare", "demo-corpus", "score", "query", "report", "train", "generate"]


def test_help_is_grouped_in_panels_and_fits_80_columns():
    """score --help at 80 columns was 211 lines (one panel, help texts repeating the
    README); grouped, it was 108 (typer 0.29; 122 with typer 0.16), and 129 with the
    dynamic-evaluation panel: the limit keeps each new option's help short."""
    out = {}
    for c in COMMANDS:
        r = _run(c, "--help", COLUMNS="80")
        assert r.returncode == 0, r.stderr
        out[c] = r.stdout
        assert max(map(len, r.stdout.splitlines())) <= 80, c
    assert len(out["score"].splitlines()) < 130
    for panel in ("Inputs", "Output records", "Resume", "Mixing with KenLM", "Cluster",
                  "Performance"):
        assert f"╭─ {panel} " in out["score"], panel
    for panel in ("Data", "Model", "Training", "Resume"):
        assert f"╭─ {panel} " in out["train"], panel
    for panel in ("Inputs", "Vocabulary", "Subword tokens"):
        assert f"╭─ {panel} " in out["prepare"], panel
    # every option of score sits under a panel's heading, none lost
    for opt in ("--reset", "--output", "--checkpoint", "--mix", "--dask", "--engine", "--json"):
        assert opt in out["score"], opt


def test_shell_completion_is_offered():
    exe = shutil.which("streamlm", path=os.path.dirname(sys.executable)) or \
        shutil.which("streamlm")
    if exe is None:
        pytest.skip("the streamlm script is not installed")
    e = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([exe, "--show-completion", "bash"], env=e, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "_STREAMLM_COMPLETE=complete_bash" in r.stdout
    e.update(_STREAMLM_COMPLETE="complete_bash", COMP_WORDS="streamlm sc", COMP_CWORD="1")
    r = subprocess.run([exe], env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["score"], (r.stdout, r.stderr)
    e.update(COMP_WORDS="streamlm score --chec", COMP_CWORD="2")
    r = subprocess.run([exe], env=e, capture_output=True, text=True, timeout=120)
    assert sorted(r.stdout.split()) == ["--checkpoint", "--checkpoint-every"], r.stdout
