"""Scoring on a shared machine: alone, beside a busy process, and two scorers side by side.

    python -m bench.bench_load [--reps 3] [--hidden 100,256] [--softmax full,class]
                               [--modes stream,line,docs,longline] [--seconds 4]
                               [--cell rnn|lstm|gru] [--layers 1]

Every figure is a whole ``streamlm score`` process as a user runs it. For each
model (the same seeded weights for the full and the class softmax, V=10,000,
PTB's vocabulary, D=H, the cell and layers of ``--cell`` and ``--layers``) and each
scoring mode:

- ``stream``: PTB train lines as one stream, the state carried (the default);
- ``line``: the same lines, every line alone, batched (``--reset line --batch 64``,
  the filter recipe);
- ``docs``: JSONL documents of 20 PTB lines each (``--reset doc``, the default);
- ``longline``: one line of many PTB lines joined (``--reset line``: one stream
  streamed in chunks, the state carried inside the line);

the input is sized to take about ``--seconds`` of scoring alone (start-up apart),
then these run in turn
(the order rotated every repetition; medians of ``--reps``):

- ``alone``: the command with its default threads (the CPUs it may use);
- ``busy``: the same while another process spins on one core;
- ``pair``: two copies of the command started together (the time until both end);
- ``pair_t1``: the same two with ``--threads 1``;
- ``alone_t1``: the command alone with ``--threads 1``.

Targets (issue 24): busy / alone <= 1.5; pair / pair_t1 <= 1.1.

Before any timing, each model's figures through the CLI on a prefix of the text
must equal the numpy engine's (an independent implementation) to 1e-5, and
every timed run's log-probability must equal the ``alone`` run's to 1e-9
relative. Writes bench/results/load.json (with the commit, date, CPU, threads
and command).
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

import numpy as np

from bench.common import CACHE, PTB_TRAIN, provenance, ptb_vocab

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "stream": [],
    "line": ["--reset", "line", "--batch", "64"],
    "docs": [],
    "longline": ["--reset", "line"],
}
TARGET_BUSY, TARGET_PAIR = 1.5, 1.1
_BUSY = "import time\nwhile True:\n    pass\n"


def models(H: int, vocab: list[str], counts: np.ndarray, cell: str = "rnn",
           layers: int = 1) -> dict[str, Path]:
    """{"full": path, "class": path}: the same seeded weights (class_W added, C=100)."""
    from streamlm.nn.classes import WordClasses, frequency_classes
    from streamlm.nn.params import ModelConfig, Params, save_model

    V = len(vocab)
    out = {}
    for kind in ("full", "class"):
        name = f"load_{kind}_H{H}" if cell == "rnn" and layers == 1 else \
            f"load_{kind}_{cell}{layers}_H{H}"
        f = CACHE / f"{name}.npz"
        if not f.exists():
            if kind == "full":
                p = Params.init(ModelConfig(V=V, D=H, H=H, cell=cell, layers=layers), seed=0)
            else:
                cl = WordClasses(frequency_classes(counts, 100))
                p = Params.init(ModelConfig(V=V, D=H, H=H, softmax="class", C=cl.C, cell=cell,
                                            layers=layers), seed=0, classes=cl)
            a = p.file_arrays()  # a trained-looking spread: biases from the log counts
            a["affine_b"] = np.log(counts + 1.0).astype(np.float32) - 5
            p.set_file_arrays(a)
            CACHE.mkdir(parents=True, exist_ok=True)
            save_model(f, p, vocab)
        out[kind] = f
    return out


def ptb_lines() -> list[str]:
    import gzip

    with gzip.open(PTB_TRAIN, "rt", encoding="utf-8") as fh:
        return [line.strip() for line in fh]


def text_for(mode: str, tokens: int, lines: list[str]) -> Path:
    """An input of about ``tokens`` tokens (words + one <eos> per line) for ``mode``."""
    f = CACHE / f"load_{mode}_{tokens}.{'jsonl' if mode == 'docs' else 'txt'}"
    if f.exists():
        return f
    out, n, i = [], 0, 0
    while n < tokens:
        line = lines[i % len(lines)]
        i += 1
        out.append(line)
        n += len(line.split()) + 1
    tmp = f.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        if mode == "docs":
            for k in range(0, len(out), 20):
                fh.write(json.dumps({"id": k // 20, "text": "\n".join(out[k:k + 20])}) + "\n")
        elif mode == "longline":
            fh.write(" ".join(out) + "\n")
        else:
            fh.write("\n".join(out) + "\n")
    os.replace(tmp, f)
    return f


def command(model: Path, text: Path, mode: str, threads: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "streamlm", "-q", "score", str(model), str(text), "--json",
           *MODES[mode]]
    return cmd + (["--threads", str(threads)] if threads else [])


CODE: str | None = None  # --code: another checkout's streamlm (PYTHONPATH), for a before/after
OTHER: str | None = None  # --idle-vs: the checkout timed alone beside this one


def _env(code: str | None = None) -> dict:
    e = dict(os.environ)
    e.pop("STREAMLM_THREADS", None)
    if code or CODE:
        e["PYTHONPATH"] = code or CODE
    return e


def start(cmd: list[str], code: str | None = None) -> tuple[subprocess.Popen, float, object]:
    out = tempfile.TemporaryFile("w+")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=_env(code))
    return p, time.perf_counter(), out


def finish(run) -> tuple[dict, float]:
    p, t0, out = run
    _, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {p.args}\n{err}")
    out.seek(0)
    return json.loads(out.read()), wall


def timed(cmds: list[list[str]], code: str | None = None) -> tuple[list[dict], float]:
    """Start the commands together; their summaries and the time until all ended."""
    t0 = time.perf_counter()
    runs = [start(c, code) for c in cmds]
    res = [finish(r)[0] for r in runs]
    return res, time.perf_counter() - t0


def condition(name: str, model: Path, text: Path, mode: str) -> tuple[list[dict], float]:
    if name == "alone":
        return timed([command(model, text, mode)])
    if name == "alone_other":
        return timed([command(model, text, mode)], OTHER)
    if name == "alone_t1":
        return timed([command(model, text, mode, 1)])
    if name == "pair":
        return timed([command(model, text, mode)] * 2)
    if name == "pair_t1":
        return timed([command(model, text, mode, 1)] * 2)
    if name == "busy":
        hog = subprocess.Popen([sys.executable, "-c", _BUSY])
        try:
            time.sleep(0.2)
            return timed([command(model, text, mode)])
        finally:
            hog.kill()
            hog.wait()
    raise ValueError(name)


CONDITIONS = ("alone", "busy", "pair", "pair_t1", "alone_t1")


def check(model: Path, text: Path, mode: str, lines: list[str]) -> None:
    """The CLI's figures on a 20k-token prefix equal the numpy engine's (1e-5)."""
    from streamlm.jobs.score import score

    small = text_for(mode, 20_000, lines)
    cli, _ = timed([command(model, small, mode) + ["--engine", "numba"]])
    ref = score(str(model), [str(small)], engine="numpy", reset=_reset(mode)).summary
    if cli[0]["tokens"] != ref["tokens"] or not math.isclose(
            cli[0]["logprob"], ref["logprob"], rel_tol=1e-5):
        raise SystemExit(f"{model} {mode}: CLI {cli[0]['tokens']} tokens logprob "
                         f"{cli[0]['logprob']} != numpy {ref['tokens']} {ref['logprob']}")


def _reset(mode: str) -> str:
    return {"stream": "none", "line": "line", "docs": "doc", "longline": "line"}[mode]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hidden", default="100,256")
    ap.add_argument("--softmax", default="full,class")
    ap.add_argument("--modes", default="stream,line,docs,longline")
    ap.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "load.json"))
    ap.add_argument("--code", default=None,
                    help="Run another checkout's streamlm (a directory put on PYTHONPATH), "
                         "e.g. a git worktree of the commit before a change.")
    ap.add_argument("--no-t1", action="store_true",
                    help="Skip the --threads 1 runs (code that has no --threads).")
    ap.add_argument("--idle-vs", default=None, metavar="DIR",
                    help="Only the idle machine: this checkout alone against DIR's streamlm "
                         "alone (PYTHONPATH), in turn: the before/after of a change.")
    a = ap.parse_args(argv)
    global CODE, CONDITIONS, OTHER
    CODE = a.code
    if a.no_t1:
        CONDITIONS = ("alone", "busy", "pair")
    if a.idle_vs:
        OTHER = a.idle_vs
        CONDITIONS = ("alone", "alone_other")
    vocab = ptb_vocab()
    lines = ptb_lines()
    from collections import Counter

    c = Counter(w for line in lines for w in line.split())
    c["<eos>"] = len(lines)
    counts = np.array([c.get(w, 0) for w in vocab], dtype=np.float64)
    configs = []
    for H in [int(h) for h in a.hidden.split(",")]:
        ms = models(H, vocab, counts, a.cell, a.layers)
        for kind in a.softmax.split(","):
            for mode in a.modes.split(","):
                configs.append((H, kind, mode, ms[kind]))
    rows = []
    for H, kind, mode, model in configs:
        check(model, text_for(mode, 20_000, lines), mode, lines)
        # the marginal rate (start-up apart): the time of 300k tokens less that of 100k
        res1, w1 = timed([command(model, text_for(mode, 100_000, lines), mode)])
        res3, w3 = timed([command(model, text_for(mode, 300_000, lines), mode)])
        rate = (res3[0]["tokens"] - res1[0]["tokens"]) / max(1e-3, w3 - w1)
        tokens = int(max(100_000, min(5_000_000, round(rate * a.seconds, -4))))
        rows.append({"H": H, "cell": a.cell, "layers": a.layers, "softmax": kind,
                     "mode": mode, "model": str(model),
                     "text": str(text_for(mode, tokens, lines)), "walls": {}})
        print(f"H={H} {kind} {mode}: {tokens:,} tokens (about {rate:,.0f} tokens/s alone)",
              file=sys.stderr)
    for rep in range(a.reps):
        for r in rows:
            conds = list(CONDITIONS)
            k = rep % len(conds)
            for cond in conds[k:] + conds[:k]:
                time.sleep(0.3)
                res, wall = condition(cond, Path(r["model"]), Path(r["text"]), r["mode"])
                lp = [x["logprob"] for x in res]
                ref = r.setdefault("logprob", lp[0])
                for x in lp:
                    if not math.isclose(x, ref, rel_tol=1e-9):
                        raise SystemExit(f"{r['mode']} H={r['H']} {r['softmax']} {cond}: "
                                         f"logprob {x} != {ref}")
                r["tokens"] = res[0]["tokens"]
                r["walls"].setdefault(cond, []).append(wall)
            print(f"rep {rep + 1}: H={r['H']} {r['softmax']} {r['mode']}: " + ", ".join(
                f"{c} {r['walls'][c][-1]:.2f}s" for c in CONDITIONS), file=sys.stderr)
        _save(a, rows)
    _table(rows)


def _summarise(r: dict) -> dict:
    med = {c: float(np.median(w)) for c, w in r["walls"].items()}
    if "alone_other" in med:  # --idle-vs
        return {"median_wall_s": med, "tokens_per_s_alone": r["tokens"] / med["alone"],
                "tokens_per_s_other": r["tokens"] / med["alone_other"],
                "speed_over_other": med["alone_other"] / med["alone"]}
    busy = med["busy"] / med["alone"]
    pair = med["pair"] / med["pair_t1"] if "pair_t1" in med else None
    return {"median_wall_s": med, "tokens_per_s_alone": r["tokens"] / med["alone"],
            "busy_over_alone": busy, "pair_over_pair_t1": pair,
            "pair_over_alone": med["pair"] / med["alone"],
            "alone_t1_over_alone": med["alone_t1"] / med["alone"] if "alone_t1" in med
            else None,
            "meets_targets": busy <= TARGET_BUSY and (pair or 9) <= TARGET_PAIR}


def _save(a, rows) -> None:
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**provenance(["python", "-m", "bench.bench_load", *sys.argv[1:]], threads=None),
            "targets": {"busy_over_alone": TARGET_BUSY, "pair_over_pair_t1": TARGET_PAIR},
            "code": CODE or "this checkout", "idle_vs": OTHER,
            "rows": [{k: v for k, v in r.items()} | _summarise(r) for r in rows
                     if all(c in r["walls"] for c in CONDITIONS)]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out)


def _table(rows) -> None:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    if OTHER:
        print(f"| H | softmax | mode | tokens | tok/s, this | tok/s, {OTHER} | this / that |")
        print("|---:|---|---|---:|---:|---:|---:|")
        for r in rows:
            s = _summarise(r)
            print(f"| {r['H']} | {r['softmax']} | {r['mode']} | {r['tokens']:,} | "
                  f"{s['tokens_per_s_alone']:,.0f} | {s['tokens_per_s_other']:,.0f} | "
                  f"{s['speed_over_other']:.3f} |")
        return

    print("| cell | H | softmax | mode | tokens | alone tok/s | busy/alone | pair/pair_t1 | "
          "pair/alone | alone_t1/alone |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = _summarise(r)
        cell = f"{r.get('cell', 'rnn')}×{r.get('layers', 1)}"
        print(f"| {cell} | {r['H']} | {r['softmax']} | {r['mode']} | {r['tokens']:,} | "
              f"{s['tokens_per_s_alone']:,.0f} | {f(s['busy_over_alone'])} | "
              f"{f(s['pair_over_pair_t1'])} | {f(s['pair_over_alone'])} | "
              f"{f(s['alone_t1_over_alone'])} |")


if __name__ == "__main__":
    main()
