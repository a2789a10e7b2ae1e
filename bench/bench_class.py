"""The class-factored softmax against the full softmax, end to end.

    python -m bench.bench_class [--reps 5] [--hidden 100,650] [--ptb-times 3]
                                [--zipf] [--train]

Every figure is a whole ``streamlm`` process as a user runs it: ``streamlm
score MODEL TEXT`` on PTB train repeated ``--ptb-times`` times (start-up,
reading and tokenising included), V=10,000 (PTB's vocabulary), the same H and
the same weights for both softmaxes (class_W added; C=100 classes by
Mikolov's frequency binning of PTB train), 2 threads. Modes:

- ``1 stream``: ``--reset none`` (one stream with carried state);
- ``20 streams``: ``--reset line --batch 20`` (lines as parallel rows);
- ``train``: ``streamlm train`` for ``--train-minutes`` on PTB train shards,
  steady-state tokens/s (the median of the log's interval records).

Before any timing, each model scores PTB test through the CLI and must agree
with the numpy engine (an independent implementation) to 1e-5. The peers of
a comparison run in turn (A B A B ...), and the ratio is the median of the
pairwise ratios. ``--zipf`` adds V=100,000, H=256 on a synthetic Zipf corpus
(streamlm.jobs.demo.zipf_corpus), with peak RSS. Writes bench/results/class.json (with its
provenance).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    CACHE,
    PTB_TRAIN,
    RESULTS,
    provenance,
    ptb_ids,
    ptb_text,
    ptb_vocab,
    this_command,
    thread_env,
)

PTB_TEST = PTB_TRAIN.parent / "ptb.test.txt"
PTB_TOKENS = 929_589


def env(threads: int = 2) -> dict:
    e = thread_env(threads)
    e["STREAMLM_BLAS"] = e.get("STREAMLM_BLAS", "numpy")
    return e


def models(H: int, V_vocab: list[str], counts: np.ndarray, C: int, tag: str) -> dict:
    """{"full": path, "class": path}: the same seeded weights, class_W added."""
    from streamlm.nn.classes import WordClasses, frequency_classes
    from streamlm.nn.params import ModelConfig, Params, save_model

    V = len(V_vocab)
    out = {}
    for kind in ("full", "class"):
        f = CACHE / f"class_bench_{tag}_{kind}_H{H}.npz"
        if not f.exists():
            if kind == "full":
                p = Params.init(ModelConfig(V=V, D=H, H=H), seed=0)
            else:
                cl = WordClasses(frequency_classes(counts, C))
                p = Params.init(ModelConfig(V=V, D=H, H=H, softmax="class", C=cl.C), seed=0,
                                classes=cl)
            a = p.file_arrays()  # a trained-looking spread: biases from the log counts
            a["affine_b"] = np.log(counts + 1.0).astype(np.float32) - 5
            p.set_file_arrays(a)
            save_model(f, p, V_vocab)
        out[kind] = f
    return out


# The command runs as the child of a small launcher (a fresh python), which reports
# the child's wall time and peak RSS. ru_maxrss of a direct child of this process
# would be wrong: Linux carries the forking process's resident set into the
# child's high-water mark (at fork, and through exec), so every child of a bench
# that holds a big model would "peak" at the bench's own size.
_LAUNCH = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "rc = subprocess.call(sys.argv[1:]); w = time.perf_counter() - t; "
           "sys.stderr.write('\\nBENCH %d %r\\n' % "
           "(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, w)); sys.exit(rc)")


def run(cmd: list[str], threads: int = 2) -> tuple[dict | None, float, float]:
    """(the --json summary or None, wall s, peak RSS MB) of a fresh process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.run([sys.executable, "-c", _LAUNCH, *cmd], stdout=out, stderr=err,
                           text=True, env=env(threads))
        out.seek(0)
        err.seek(0)
        text = out.read().strip()
        errs = err.read()
        if p.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{errs}")
    rss_kb, wall = errs.rstrip().rsplit("\n", 1)[-1].split()[1:]
    return (json.loads(text) if text.startswith("{") else None), float(wall), int(rss_kb) / 1024


def score_cmd(model: Path, text: Path, mode: list[str]) -> list[str]:
    return [sys.executable, "-m", "streamlm", "-q", "score", str(model), str(text), "--json",
            *mode]


def check(model: Path, text: Path) -> float:
    """The CLI's logprob of text equals the numpy engine's (1e-5): returns it."""
    from streamlm.jobs.score import score

    cli, _, _ = run(score_cmd(model, text, ["--engine", "numba"]))
    ref = score(str(model), [str(text)], engine="numpy").summary
    if not math.isclose(cli["logprob"], ref["logprob"], rel_tol=1e-5):
        raise SystemExit(f"{model}: CLI logprob {cli['logprob']} != numpy {ref['logprob']}")
    return cli["logprob"]


def interleave(cmds: dict[str, list[str]], reps: int, tokens: int) -> dict:
    """Run the commands in turn reps times; tokens/s (whole process) per rep."""
    walls = {k: [] for k in cmds}
    rss = {k: 0.0 for k in cmds}
    names = list(cmds)
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(0.3)
            summary, wall, peak = run(cmds[k])
            if summary["tokens"] != tokens:
                raise SystemExit(f"{k}: scored {summary['tokens']} tokens, expected {tokens}")
            walls[k].append(wall)
            rss[k] = max(rss[k], peak)
    return {k: {"tokens_per_s": [tokens / w for w in walls[k]],
                "median_tokens_per_s": float(np.median([tokens / w for w in walls[k]])),
                "median_wall_s": float(np.median(walls[k])), "peak_rss_mb": rss[k]}
            for k in cmds} | {
        "ratio_class_over_full": float(np.median(np.array(walls["full"]) /
                                                 np.array(walls["class"])))}


def train_rate(model_kind: str, H: int, shards: Path, minutes: float, C: int) -> float:
    """Steady-state tokens/s of ``streamlm train`` (median of its log intervals)."""
    d = Path(tempfile.mkdtemp(prefix="bench-train-"))
    log = d / "log.jsonl"
    cmd = [sys.executable, "-m", "streamlm", "-q", "train", str(shards), "--out",
           str(d / "m.npz"), "--embed", str(H), "--hidden", str(H), "--batch", "20",
           "--bptt", "35", "--dropout", "0", "--max-minutes", str(minutes),
           "--log-interval", "20", "--log", str(log), "--checkpoint-every", "0",
           "--softmax", model_kind] + (["--classes", str(C)] if model_kind == "class" else [])
    run(cmd)
    rates = [json.loads(x)["tokens_per_s"] for x in log.read_text().splitlines()]
    rates = [r for r in rates if r]
    return float(np.median(rates[1:] or rates))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hidden", default="100,650")
    ap.add_argument("--ptb-times", type=int, default=3)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--train", action="store_true", help="Also the training rates.")
    ap.add_argument("--train-minutes", type=float, default=0.75)
    ap.add_argument("--zipf", action="store_true", help="Also V=100k, H=256 (Zipf corpus).")
    ap.add_argument("--zipf-tokens", type=int, default=200_000,
                    help="Tokens of the Zipf test text to score (the full softmax at V=100k "
                         "scores a few thousand tokens/s).")
    ap.add_argument("--out", default=str(RESULTS / "class.json"))
    args = ap.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    vocab = ptb_vocab()
    counts = np.bincount(ptb_ids(), minlength=len(vocab))
    text = ptb_text(args.ptb_times)
    tokens = PTB_TOKENS * args.ptb_times
    res = {"ptb_times": args.ptb_times, "tokens": tokens, "classes": args.classes, "runs": [],
           "provenance": provenance(this_command("bench_class"), 2)}
    modes = {"1 stream": [], "20 streams": ["--reset", "line", "--batch", "20"]}

    def save() -> None:  # after every size, so that a stopped run keeps what it measured
        from streamlm.data.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(res, indent=1))
    for H in [int(h) for h in args.hidden.split(",") if h.strip()]:  # "" with --zipf: V=100k only
        m = models(H, vocab, counts, args.classes, "ptb")
        for kind in m:
            check(m[kind], PTB_TEST)
        for mode, flags in modes.items():
            r = interleave({k: score_cmd(m[k], text, flags) for k in m}, args.reps, tokens)
            r.update(H=H, mode=mode, tokens=tokens)
            res["runs"].append(r)
            print(f"H={H} {mode:10s}: full {r['full']['median_tokens_per_s']:9,.0f}  class "
                  f"{r['class']['median_tokens_per_s']:9,.0f} tok/s  class/full "
                  f"{r['ratio_class_over_full']:.2f}x", file=sys.stderr, flush=True)
        if args.train:
            shards = CACHE / "ptb_train_shards"
            if not (shards / "manifest.json").exists():
                subprocess.run([sys.executable, "-m", "streamlm", "-q", "prepare",
                                str(PTB_TRAIN), "--out", str(shards)], check=True)
            rates = {k: [] for k in ("full", "class")}
            for _ in range(max(1, args.reps // 2)):
                for k in rates:
                    rates[k].append(train_rate(k, H, shards, args.train_minutes, args.classes))
            r = {"H": H, "mode": "train", "full": {"tokens_per_s": rates["full"]},
                 "class": {"tokens_per_s": rates["class"]},
                 "ratio_class_over_full": float(np.median(np.array(rates["class"])
                                                          / np.array(rates["full"])))}
            res["runs"].append(r)
            print(f"H={H} train     : full {np.median(rates['full']):9,.0f}  class "
                  f"{np.median(rates['class']):9,.0f} tok/s  class/full "
                  f"{r['ratio_class_over_full']:.2f}x", file=sys.stderr, flush=True)
        save()
    if args.zipf:
        from streamlm.jobs.demo import zipf_corpus

        zdir = CACHE / "zipf100k"
        info = zipf_corpus(zdir, V=100_000, tokens=2_000_000, seed=0)
        zvocab = (zdir / "vocab.txt").read_text().split("\n")[:-1]
        zcounts = np.array(info["counts"])
        m = models(256, zvocab, zcounts, round(math.sqrt(len(zvocab))), "zipf")
        def head(n: int) -> tuple[Path, int]:  # the first lines of the test text, n tokens
            out, got = zdir / f"test_{n}.txt", 0
            with open(zdir / "test.txt", encoding="utf-8") as f, \
                    open(out, "w", encoding="utf-8") as g:
                for line in f:
                    if got >= n:
                        break
                    g.write(line)
                    got += len(line.split()) + 1
            return out, got

        ztext, ztok = head(args.zipf_tokens)
        for kind in m:  # (the check on a part: the numpy engine's full softmax is slow here)
            check(m[kind], head(20_000)[0])
        r = interleave({k: score_cmd(m[k], ztext, []) for k in m},
                       max(2, args.reps // 2), ztok)
        r.update(H=256, V=len(zvocab), mode="1 stream, Zipf", tokens=ztok)
        res["runs"].append(r)
        print(f"V=100k H=256: full {r['full']['median_tokens_per_s']:9,.0f}  class "
              f"{r['class']['median_tokens_per_s']:9,.0f} tok/s  class/full "
              f"{r['ratio_class_over_full']:.1f}x", file=sys.stderr, flush=True)
    save()
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
