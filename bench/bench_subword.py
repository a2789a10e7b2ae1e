"""The share of ``streamlm score`` time that SentencePiece encoding takes.

    python -m bench.bench_subword [TEXT] [--pieces 10000] [--size 256] [--reps 3]

The model: a SentencePiece unigram model of ``--pieces`` pieces trained by
``streamlm prepare`` on PTB train, and an RNN of D=H=``--size`` with the class
softmax trained on its shards for a few seconds (its weights do not matter to
the time; cached in /tmp/streamlm_bench). TEXT (default: PTB train, raw text)
is scored as raw text, so the scorer tokenises it itself.

Each repetition is one in-process ``score(model, [TEXT], engine="numba")`` with
the subword path timed from inside: ``SubwordVocab.encode_texts`` (the one
batch call of SentencePiece per line batch, ``num_threads`` = the cores) and
``tokenizer._subword_lines`` (all of the tokenising: splitting, joining, the
word and byte counts, the ``<eos>``). The share is their time over the whole
call's wall time (model loading and the output of the summary included). It
is done with SentencePiece on all cores and on one thread. A whole ``python -m
streamlm score`` process is timed too, for the end-to-end wall.

Checked first: the batch encoding gives each line's ``sp.encode`` ids, the
in-process and the CLI summaries agree (tokens, log-probability to 1e-9) and
there is no OOV. Prints medians; writes bench/results/subword.json (with its provenance).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import CACHE, REPO, RESULTS, provenance, ptb_text, this_command
from streamlm.data import subword, tokenizer
from streamlm.jobs.score import score
from streamlm.nn.params import load_model

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def sl(*args) -> dict:
    r = subprocess.run([sys.executable, "-m", "streamlm", "-q", *map(str, args), "--json"],
                       capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        raise SystemExit(f"streamlm {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr}")
    return json.loads(r.stdout)


def the_model(pieces: int, size: int) -> Path:
    m = CACHE / f"ptb_sp{pieces}_class_D{size}.npz"
    if not m.exists():
        d = CACHE / f"ptb_sp{pieces}"
        sl("prepare", ptb_text(1), "--out", d, "--tokenizer", "sentencepiece",
           "--pieces", pieces)
        sl("train", d, "--out", m, "--embed", size, "--hidden", size, "--softmax", "class",
           "--epochs", 1, "--max-minutes", 0.1)
    return m


class Timed:
    """Wraps ``owner.name`` with a wall-clock sum (the calls run in this thread)."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.orig = owner, name, getattr(owner, name)
        self.seconds, self.calls = 0.0, 0

    def __enter__(self):
        orig = self.orig

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.orig)


def one_run(model: Path, text: Path, threads: int | None) -> dict:
    orig_init = subword.SubwordVocab.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        if threads is not None:
            self.threads = threads

    subword.SubwordVocab.__init__ = init
    try:
        with Timed(subword.SubwordVocab, "encode_texts") as enc, \
                Timed(tokenizer, "_subword_lines") as tok:
            t0 = time.perf_counter()
            s = score(model, [str(text)], engine="numba").summary
            wall = time.perf_counter() - t0
    finally:
        subword.SubwordVocab.__init__ = orig_init
    return {"summary": s, "wall": wall, "encode": enc.seconds, "tokenise": tok.seconds,
            "calls": enc.calls}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", nargs="?")
    ap.add_argument("--pieces", type=int, default=10000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "subword.json"))
    args = ap.parse_args(argv)
    text = Path(args.text) if args.text else ptb_text(1)
    model = the_model(args.pieces, args.size)

    # the answers first
    vocab = load_model(model).vocabulary()
    lines = text.read_text(encoding="utf-8").splitlines()
    norm = [" ".join(ln.split()) for ln in lines[:5000]]
    ids, cnt = vocab.encode_texts(norm)
    want = [vocab.sp.encode(t, out_type=int) for t in norm]
    if ids.tolist() != [i for w in want for i in w] or cnt.tolist() != list(map(len, want)):
        raise SystemExit("the batch encoding differs from sp.encode line by line")
    warm = one_run(model, text, None)  # also compiles / loads the kernels' cache
    cli = sl("score", model, text, "--engine", "numba")
    s = warm["summary"]
    if s["oov"] != 0 or cli["tokens"] != s["tokens"] or not math.isclose(
            cli["logprob"], s["logprob"], rel_tol=1e-9):
        raise SystemExit(f"in-process {s['tokens']} tokens / {s['logprob']}, CLI "
                         f"{cli['tokens']} / {cli['logprob']}, {s['oov']} OOV")

    runs: dict[str, list] = {"all_threads": [], "one_thread": []}
    cli_walls = []
    for r in range(args.reps):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            time.sleep(0.3)
            x = one_run(model, text, 1 if k == "one_thread" else None)
            assert x["summary"]["tokens"] == s["tokens"]
            runs[k].append(x)
            print(f"  {k:11s} wall {x['wall']:.2f}s, encode {x['encode']:.2f}s "
                  f"({100 * x['encode'] / x['wall']:.1f}%), tokenise {x['tokenise']:.2f}s "
                  f"({100 * x['tokenise'] / x['wall']:.1f}%)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        sl("score", model, text, "--engine", "numba")
        cli_walls.append(time.perf_counter() - t0)

    def med(xs, key):
        return statistics.median(x[key] for x in xs)

    res = {"text": str(text), "lines": len(lines), "tokens": s["tokens"], "words": s["words"],
           "bytes": s["bytes"], "model": f"sentencepiece unigram {len(vocab)} pieces, class "
           f"softmax, D=H={args.size}", "threads": subword._threads(),
           "cli_wall_s": cli_walls, "median_cli_wall_s": statistics.median(cli_walls),
           "provenance": provenance(this_command("bench_subword"), None)}
    for k, xs in runs.items():
        res[k] = {"wall_s": [x["wall"] for x in xs], "encode_s": [x["encode"] for x in xs],
                  "tokenise_s": [x["tokenise"] for x in xs],
                  "median_wall_s": med(xs, "wall"), "median_encode_s": med(xs, "encode"),
                  "median_tokenise_s": med(xs, "tokenise"),
                  "encode_share": statistics.median(x["encode"] / x["wall"] for x in xs),
                  "tokenise_share": statistics.median(x["tokenise"] / x["wall"] for x in xs)}
    a = res["all_threads"]
    print(f"{s['tokens']:,} pieces of {s['words']:,} words: score {a['median_wall_s']:.2f}s "
          f"in-process ({res['median_cli_wall_s']:.2f}s as a process); SentencePiece encoding "
          f"{100 * a['encode_share']:.1f}% of it on {res['threads']} threads "
          f"({100 * res['one_thread']['encode_share']:.1f}% on one), all of the tokenising "
          f"{100 * a['tokenise_share']:.1f}% (target < 20%)", file=sys.stderr)
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as t:
        t.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
