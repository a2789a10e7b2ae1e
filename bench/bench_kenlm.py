"""streamlm against KenLM's ``query`` on the same text: tokens/s per core and PTB test
perplexity, and the chart of one against the other.

    python -m bench.bench_kenlm MODEL.npz [MODEL.npz ...] [--ptb-times 3] [--reps 3]

- KenLM: ``query -v summary`` of the PTB KN5 model (``../shared/anchors/kenlm``,
  made binary here with its ``build_binary``) pinned to one core; its PTB test
  perplexity must come out 141.19 first.
- streamlm: ``streamlm score MODEL TEXT --reset line --batch 64`` (every line
  alone, as ``query`` scores them, many lines as parallel rows: the filtering
  mode), pinned to one core with one thread, and on two cores with two.
  Perplexity: PTB test with ``--reset line`` (comparable with KenLM's) and with
  ``--reset none`` (the state carried across sentences, as RNN LM papers
  report it). Each model's CLI result must agree with the numpy engine first.
- Speed: whole processes (start-up, reading, tokenising included) on PTB train
  repeated ``--ptb-times`` times; the peers in turn, median of ``--reps``.

Writes bench/results/kenlm.json (with its provenance) and the chart
bench/figures/kenlm_chart.png (tokens/s
per core, log scale, against PTB test perplexity). Skips with a message when
the KenLM files are absent.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    CACHE,
    FIGURES,
    PTB_TRAIN,
    REPO,
    RESULTS,
    provenance,
    ptb_text,
    this_command,
    thread_env,
)

KENLM = Path(os.environ.get("STREAMLM_KENLM", REPO.parent / "shared" / "anchors" / "kenlm"))
PTB_TEST = PTB_TRAIN.parent / "ptb.test.txt"
PTB_TOKENS = 929_589


def kn5_binary() -> Path:
    f = CACHE / "ptb.kn5.bin"
    if not f.exists():
        arpa = CACHE / "ptb.kn5.arpa"
        with gzip.open(KENLM / "ptb.kn5.arpa.gz", "rb") as src, open(arpa, "wb") as dst:
            dst.write(src.read())
        subprocess.run([str(KENLM / "bin" / "build_binary"), str(arpa), str(f)], check=True,
                       capture_output=True)
        arpa.unlink()
    return f


def timed(cmd: list[str], threads: int, stdin: Path | None = None) -> tuple[str, float]:
    cores = "0" if threads == 1 else ",".join(str(i) for i in range(threads))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
        try:
            t0 = time.perf_counter()
            r = subprocess.run(["taskset", "-c", cores, *cmd], stdin=fin, stdout=out,
                               stderr=err, env=thread_env(threads))
            wall = time.perf_counter() - t0
        finally:
            if stdin:
                fin.close()
        out.seek(0)
        err.seek(0)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd} failed: {err.read()}")
        return out.read(), wall


def kenlm_ppl(text: str) -> tuple[float, int]:
    ppl = float(re.search(r"Perplexity including OOVs:\s*([0-9.]+)", text).group(1))
    tokens = int(re.search(r"Tokens:\s*(\d+)", text).group(1))
    return ppl, tokens


def streamlm_cmd(model: Path, text: Path, reset: str, extra=()) -> list[str]:
    return [sys.executable, "-m", "streamlm", "-q", "score", str(model), str(text), "--json",
            "--reset", reset, *extra]


def describe(model: Path) -> dict:
    from streamlm.nn.params import load_model

    m = load_model(model)
    c = m.config
    d = {"softmax": c.softmax, "H": c.H, "D": c.D, "C": c.C, "tied": c.tied,
         "cell": c.cell, "layers": c.layers}
    return {**d, "label": "streamlm " + _label(d)}


def _label(p: dict) -> str:
    """'class H=256 C=100' for the tanh RNN, 'lstm 2x200 full' for the others."""
    classes = f" C={p['C']}" if p.get("C") else ""
    if p.get("cell", "rnn") == "rnn" and p.get("layers", 1) == 1:
        return f"{p['softmax']} H={p['H']}{classes}"
    return f"{p['cell']} {p['layers']}x{p['H']} {p['softmax']}{classes}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--ptb-times", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=str(RESULTS / "kenlm.json"))
    ap.add_argument("--chart", default=str(FIGURES / "kenlm_chart.png"))
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="an earlier results file whose models the chart shows too (hollow "
                         "markers), each at its ratio to KenLM in its own run")
    args = ap.parse_args(argv)
    if not (KENLM / "bin" / "query").exists():
        print(f"KenLM not found under {KENLM}: skipped", file=sys.stderr)
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    binary = kn5_binary()
    query = [str(KENLM / "bin" / "query"), "-v", "summary", str(binary)]
    out, _ = timed(query, 1, PTB_TEST)
    kn_ppl, kn_tokens = kenlm_ppl(out)
    if not math.isclose(kn_ppl, 141.19, abs_tol=0.01):
        raise SystemExit(f"KenLM's PTB test perplexity is {kn_ppl}, expected 141.19")
    text = ptb_text(args.ptb_times)
    tokens = PTB_TOKENS * args.ptb_times

    from streamlm.jobs.score import score

    peers = {"KenLM KN5": {"cmd": query, "stdin": text, "threads": [1], "ppl_line": kn_ppl,
                           "ppl_stream": None, "kind": "kenlm"}}
    for m in args.models:
        d = describe(m)
        ppl = {}
        for reset in ("line", "none"):
            got = json.loads(timed(streamlm_cmd(m, PTB_TEST, reset, ["--engine", "numba"]),
                                   2)[0])
            ref = score(str(m), [str(PTB_TEST)], reset=reset, engine="numpy").summary
            if not math.isclose(got["logprob"], ref["logprob"], rel_tol=1e-5):
                raise SystemExit(f"{m}: CLI {got['logprob']} != numpy engine {ref['logprob']}")
            if got["tokens"] != kn_tokens:
                raise SystemExit(f"{m}: {got['tokens']} tokens, KenLM counts {kn_tokens}")
            ppl[reset] = got["perplexity"]
        peers[d["label"]] = {"cmd": streamlm_cmd(m, text, "line", ["--batch", str(args.batch)]),
                             "stdin": None, "threads": [1, 2], "ppl_line": ppl["line"],
                             "ppl_stream": ppl["none"], "kind": d["softmax"], "model": str(m),
                             **d}
    runs = [(name, t) for name, p in peers.items() for t in p["threads"]]
    walls = {r: [] for r in runs}
    for rep in range(args.reps):
        k = rep % len(runs)
        for name, t in runs[k:] + runs[:k]:
            time.sleep(0.3)
            p = peers[name]
            out, wall = timed(p["cmd"], t, p["stdin"])
            n = kenlm_ppl(out)[1] if p["kind"] == "kenlm" else json.loads(out)["tokens"]
            if n != tokens:
                raise SystemExit(f"{name}: {n} tokens, expected {tokens}")
            walls[(name, t)].append(wall)
    res = {"tokens": tokens, "ptb_times": args.ptb_times, "kenlm_test_ppl": kn_ppl,
           "peers": [], "provenance": provenance(this_command("bench_kenlm"), None)}
    kn_rate = tokens / float(np.median(walls[("KenLM KN5", 1)]))
    for name, p in peers.items():
        row = {k: v for k, v in p.items() if k not in ("cmd", "stdin")}
        row["name"] = name
        for t in p["threads"]:
            rate = tokens / float(np.median(walls[(name, t)]))
            row[f"tokens_per_s_{t}t"] = rate
            row[f"tokens_per_s_per_core_{t}t"] = rate / t
            row[f"per_core_vs_kenlm_{t}t"] = rate / t / kn_rate
        res["peers"].append(row)
        print(f"{name:32s} ppl line {p['ppl_line']:7.2f}  " + "  ".join(
            f"{t}t {row[f'tokens_per_s_{t}t']:10,.0f} tok/s ({row[f'per_core_vs_kenlm_{t}t']:.3f}"
            f"x KenLM/core)" for t in p["threads"]), file=sys.stderr)
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(res, indent=1))
    chart(res, args.chart, [json.loads(f.read_text()) for f in args.also])
    print(f"wrote {args.out} and {args.chart}", file=sys.stderr)


def _machine(res: dict) -> str:
    prov = res.get("provenance") or {}
    cpu = str(prov.get("cpu") or "?").split(",")[0].replace("(R)", "")
    return f"{cpu}, {str(prov.get('date') or '?')[:10]}"


def chart(res: dict, path: str, earlier: list[dict] = ()) -> None:
    """Per-core speed as a ratio to KenLM's ``query`` in the same run (log scale)
    against PTB test perplexity, line by line. Models of ``earlier`` results files
    are drawn hollow, each at its ratio to KenLM in its own run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    style = {"kenlm": ("s", "tab:gray"), "full": ("o", "tab:red"), "class": ("D", "tab:blue")}
    gated = "^"
    for k, r in enumerate([res, *earlier]):
        for p in r["peers"]:
            if k and p["kind"] == "kenlm":
                continue
            m, col = style[p["kind"]]
            if p.get("cell", "rnn") != "rnn":
                m = gated
            x, y = p["ppl_line"], p["per_core_vs_kenlm_1t"]
            face = col if k == 0 else "none"
            ax.scatter([x], [y], marker=m, s=60, color=face, edgecolors=col, zorder=3)
            name = p["name"] if p["kind"] == "kenlm" else _label(p)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4),
                        fontsize=8, color="black" if k == 0 else "dimgray")
    ax.axhline(0.1, color="tab:gray", lw=0.8, ls="--")
    ax.text(ax.get_xlim()[0], 0.1, " 0.1x KenLM", fontsize=7, va="bottom", color="tab:gray")
    ax.axvline(next(p for p in res["peers"] if p["kind"] == "kenlm")["ppl_line"],
               color="tab:gray", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("PTB test perplexity (every sentence alone, as KenLM query scores it)")
    ax.set_ylabel("scoring speed per core / KenLM query's (same run, one thread each)")
    title = f"Speed against quality: {res['tokens']:,} PTB tokens, --reset line ({_machine(res)})"
    if earlier:
        title += "\nhollow: " + "; ".join(_machine(r) for r in earlier)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    from streamlm.data.atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
