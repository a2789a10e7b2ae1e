"""A word model against a subword model on tinyshakespeare, compared across tokenisers.

    python -m bench.bench_shakespeare [--vocab 8000] [--minutes 4] [--size 256]

tinyshakespeare's last 10% of lines are held out (both parts written to a temp
directory). Two models of the same size (D=H=``--size``, class softmax, V =
``--vocab`` words or pieces; dropout ``--dropout``, train's 0.25 by default)
are trained for the same wall time (``--max-minutes``), one after the other
(never at the same time: the machine is shared): a word model (``prepare
--vocab-size V``) and a SentencePiece unigram model (``prepare --tokenizer
sentencepiece --pieces V``). Both score the held-out text as raw text, and are
compared by ``bits_per_byte`` and ``word_perplexity``, the measures that do not
depend on the tokens.

Checked before anything is reported: both runs count the same words and bytes
of the held-out text, the subword model has no OOV, and the word model's
``word_perplexity`` is its ``perplexity``. Writes bench/results/shakespeare.json (with its
provenance).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, RESULTS, SHARED, provenance, this_command

TEXT = SHARED / "tinyshakespeare" / "input.txt"


def sl(*args) -> dict:
    """``python -m streamlm ARGS --json`` of this tree; its JSON object."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "streamlm", "-q", *map(str, args), "--json"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"streamlm {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr}")
    return json.loads(r.stdout)


def split(tmp: Path) -> tuple[Path, Path]:
    lines = TEXT.read_text(encoding="utf-8").splitlines(keepends=True)
    k = len(lines) - len(lines) // 10
    (tmp / "train.txt").write_text("".join(lines[:k]), encoding="utf-8")
    (tmp / "heldout.txt").write_text("".join(lines[k:]), encoding="utf-8")
    return tmp / "train.txt", tmp / "heldout.txt"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=8000, help="words, and pieces")
    ap.add_argument("--minutes", type=float, default=4.0, help="training time of each model")
    ap.add_argument("--size", type=int, default=256, help="D = H")
    ap.add_argument("--dropout", type=float, default=None, help="(default: train's, 0.25)")
    ap.add_argument("--out", default=str(RESULTS / "shakespeare.json"))
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shakespeare-"))
    train, held = split(tmp)
    print(f"data in {tmp}", file=sys.stderr)
    tok = {"word": ["--vocab-size", args.vocab],
           "subword": ["--tokenizer", "sentencepiece", "--pieces", args.vocab]}
    res: dict = {"text": str(TEXT), "heldout_lines": len(held.read_text().splitlines()),
                 "size": args.size, "vocab": args.vocab, "minutes": args.minutes,
                 "dropout": 0.25 if args.dropout is None else args.dropout,
                 "softmax": "class", "models": {},
                 "provenance": provenance(this_command("bench_shakespeare"), None)}
    for name, opts in tok.items():
        prep = sl("prepare", train, "--out", tmp / name, *opts)
        t0 = time.monotonic()
        tr = sl("train", tmp / name, "--out", tmp / f"{name}.npz", "--embed", args.size,
                "--hidden", args.size, "--softmax", "class", "--epochs", 1000,
                "--max-minutes", args.minutes,
                *([] if args.dropout is None else ["--dropout", args.dropout]))
        wall = time.monotonic() - t0
        s = sl("score", tmp / f"{name}.npz", held)
        res["models"][name] = {
            "V": prep["vocab"]["size"], "train_tokens": prep["num_tokens"],
            "train_unk": prep["unk_tokens"],
            "train_seconds": wall, "trained_tokens": tr.get("tokens_seen", tr.get("tokens")),
            "heldout_tokens": s["tokens"], "heldout_oov": s["oov"], "words": s["words"],
            "bytes": s["bytes"], "perplexity": s["perplexity"],
            "word_perplexity": s["word_perplexity"], "bits_per_byte": s["bits_per_byte"]}
        print(f"  {name:8s} V={prep['vocab']['size']:,} {s['tokens']:,} tokens "
              f"({s['oov']:,} OOV): ppl {s['perplexity']:.2f}, word ppl "
              f"{s['word_perplexity']:.2f}, {s['bits_per_byte']:.4f} bits/byte",
              file=sys.stderr, flush=True)

    w, sw = res["models"]["word"], res["models"]["subword"]
    if (w["words"], w["bytes"]) != (sw["words"], sw["bytes"]):
        raise SystemExit(f"the two runs count different text: {w['words']}/{sw['words']} "
                         f"words, {w['bytes']}/{sw['bytes']} bytes")
    if sw["heldout_oov"] != 0:
        raise SystemExit(f"the subword model has {sw['heldout_oov']} OOV tokens")
    if not math.isclose(w["word_perplexity"], w["perplexity"], rel_tol=1e-9):
        raise SystemExit(f"word model: word_perplexity {w['word_perplexity']} != "
                         f"perplexity {w['perplexity']}")
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as t:
        t.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
