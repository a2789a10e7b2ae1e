"""Documents in Parquet against the same text as a plain file, and memory by rows.

    python -m bench.bench_documents [--rows 1000000] [--small-rows 100000] [--reps 3]

The corpus: PTB train's sentences, cycled, one sentence per document, as a
Parquet file (``id``, ``text``; row groups of 64k rows) and the same
sentences as a plain text file, one per line. Both are scored by whole
``streamlm score`` processes with the same class-softmax model (V=10,000,
D=H=100, C=100, PTB's vocabulary): the Parquet file with ``--reset doc``
(auto) and per-document records (``--output scores.parquet``), the text with
``--reset line`` and per-line records, which is the same computation.

Before any timing, the two totals must agree (tokens equal, log-probability to
1e-9). Speed: the runs alternate (text, Parquet, Parquet, text, ...), and the
ratio is the median of the pairwise ratios of tokens/s. Memory: peak RSS of
the 1M-row and of the 100k-row Parquet run, each a fresh process. Writes
bench/results/documents.json (with its provenance).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_class import models, run
from bench.common import CACHE, PTB_TRAIN, RESULTS, provenance, ptb_ids, ptb_vocab, this_command


def corpus(rows: int) -> tuple[Path, Path]:
    """(parquet, text) of ``rows`` one-sentence documents (PTB train, cycled)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf, tf = CACHE / f"docs_{rows}.parquet", CACHE / f"docs_{rows}.txt"
    if pf.exists() and tf.exists():
        return pf, tf
    with gzip.open(PTB_TRAIN, "rt", encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh if ln.strip()]
    texts = [lines[k % len(lines)] for k in range(rows)]
    tmp = tf.with_suffix(".tmp")
    tmp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    os.replace(tmp, tf)
    table = pa.table({"id": np.arange(rows, dtype=np.int64), "text": texts})
    tmp = pf.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=65536, compression="zstd")
    os.replace(tmp, pf)
    return pf, tf


def cmd(model: Path, src: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "streamlm", "-q", "score", str(model), str(src), "--json",
            "--output", str(out), "--engine", "numba", *extra]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small-rows", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "documents.json"))
    args = ap.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    vocab = ptb_vocab()
    counts = np.bincount(ptb_ids(), minlength=len(vocab))
    model = models(100, vocab, counts, 100, "ptb")["class"]
    pf, tf = corpus(args.rows)
    small, _ = corpus(args.small_rows)
    tmp = Path(tempfile.mkdtemp(prefix="bench-docs-"))
    peers = {"text": cmd(model, tf, tmp / "t.parquet", ["--reset", "line"]),
             "parquet": cmd(model, pf, tmp / "p.parquet", [])}

    # the answer first: the same tokens, the same log-probability
    got = {k: run(c)[0] for k, c in peers.items()}
    if got["text"]["tokens"] != got["parquet"]["tokens"] or not math.isclose(
            got["text"]["logprob"], got["parquet"]["logprob"], rel_tol=1e-9):
        raise SystemExit(f"text and Parquet disagree: {got['text']['tokens']} / "
                         f"{got['parquet']['tokens']} tokens, logprob "
                         f"{got['text']['logprob']} / {got['parquet']['logprob']}")
    if got["parquet"]["rows"] != args.rows:
        raise SystemExit(f"Parquet: {got['parquet']['rows']} rows, expected {args.rows}")
    tokens = got["text"]["tokens"]

    walls = {k: [] for k in peers}
    rss = {k: [] for k in peers}
    names = list(peers)
    for r in range(args.reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            time.sleep(0.3)
            s, wall, peak = run(peers[k])
            assert s["tokens"] == tokens
            walls[k].append(wall)
            rss[k].append(peak)
            print(f"  {k:8s} {tokens / wall:10,.0f} tok/s  {peak:7.1f} MB", file=sys.stderr,
                  flush=True)
    ratio = float(np.median(np.array(walls["text"]) / np.array(walls["parquet"])))

    mem = {}
    for label, src in (("small", small), ("large", pf)):
        peaks = []
        for _ in range(2):
            s, _, peak = run(cmd(model, src, tmp / f"m-{label}.parquet", []))
            peaks.append(peak)
        mem[label] = {"rows": s["rows"], "tokens": s["tokens"], "peak_rss_mb": max(peaks)}
    growth = mem["large"]["peak_rss_mb"] / mem["small"]["peak_rss_mb"] - 1

    res = {
        "rows": args.rows, "tokens": tokens, "model": "class C=100, V=10000, D=H=100",
        "text_tokens_per_s": [tokens / w for w in walls["text"]],
        "parquet_tokens_per_s": [tokens / w for w in walls["parquet"]],
        "median_text_tokens_per_s": float(np.median([tokens / w for w in walls["text"]])),
        "median_parquet_tokens_per_s": float(np.median([tokens / w for w in walls["parquet"]])),
        "ratio_parquet_over_text": ratio,
        "memory": mem, "rss_growth_small_to_large": growth,
        "provenance": provenance(this_command("bench_documents"), 2),
    }
    print(f"{args.rows:,} documents, {tokens:,} tokens: Parquet/text = {ratio:.3f} (target "
          f">= 0.8); peak RSS {mem['small']['peak_rss_mb']:.0f} MB at "
          f"{mem['small']['rows']:,} rows, {mem['large']['peak_rss_mb']:.0f} MB at "
          f"{mem['large']['rows']:,} rows ({100 * growth:+.1f}%, target within 10%)",
          file=sys.stderr)
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as t:
        t.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
