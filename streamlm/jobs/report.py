"""Perplexity buckets as in CCNet, and the report on a corpus's per-document scores.

CCNet keeps the best part of a web corpus by the perplexity of each document
under a language model: ``head`` below the 30th percentile, ``middle`` up to
the 60th, ``tail`` above. :func:`report` reads the per-document (or per-line)
records that ``streamlm score --output`` wrote and gives the percentiles, the
mean, the token-weighted corpus perplexity, the OOV rate and the cut-offs;
:func:`save_cutoffs` writes them to a small JSON file that ``streamlm score
--cutoffs`` and ``--split-buckets`` read back (:func:`load_cutoffs`).

A value equal to a cut-off goes to the bucket above it (CCNet's
``perplexity < cutoff``). A document without tokens (an empty text) has no
perplexity: it goes to the last bucket, and percentiles leave it out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from streamlm.errors import InputError, UsageError

# the bucket names, the assignment and the cut-offs file live in streamlm.jobs.buckets
from streamlm.jobs.buckets import (
    FIELDS,
    Cutoffs,
    assign,
    bucket_labels,
    buckets,
    load_cutoffs,
    save_cutoffs,
)

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
BUCKET_PERCENTILES = (30, 60)  # CCNet's head / middle / tail

__all__ = ["Cutoffs", "FIELDS", "PERCENTILES", "BUCKET_PERCENTILES", "assign",
           "bucket_labels", "buckets", "load_cutoffs", "save_cutoffs", "report",
           "format_report", "read_scores"]


# ------------------------------------------------------------------ report --
def read_scores(paths: Sequence[str], field: str = "perplexity") -> dict[str, np.ndarray]:
    """The columns ``tokens``, ``oov``, ``logprob`` and ``field`` of the score files
    (Parquet, JSONL or CSV by suffix, as ``streamlm score --output`` writes them)."""
    import pyarrow as pa

    from streamlm.jobs.outputs import output_format

    if field not in FIELDS:
        raise UsageError(f"--field must be one of {', '.join(FIELDS)}, got {field!r}")
    want = ["tokens", "oov", "logprob", field]
    parts: dict[str, list] = {k: [] for k in want}
    for p in paths:
        if not os.path.isfile(p):
            raise UsageError(f"{p}: no such score file")
        try:
            fmt = output_format(p)
        except UsageError:
            raise UsageError(f"{p}: a score file ends in .parquet, .jsonl or .csv") from None
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                names = pq.read_schema(p).names
                _check_columns(p, names, want)
                t = pq.read_table(p, columns=want)
            elif fmt == "csv":
                from pyarrow import csv

                t = csv.read_csv(p)
                _check_columns(p, t.column_names, want)
            else:
                from pyarrow import json as pj

                t = pj.read_json(p)
                _check_columns(p, t.column_names, want)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"cannot read scores: {str(e).splitlines()[0]}", path=p) from None
        for k in want:
            col = t.column(k).cast(pa.float64())
            parts[k].append(col.to_numpy(zero_copy_only=False).astype(np.float64))
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}


def _check_columns(path: str, names: Sequence[str], want: Sequence[str]) -> None:
    missing = [k for k in want if k not in names]
    if missing:
        hint = (" (per-word records: score with --level doc or line)" if "token" in names
                else "")
        raise InputError(f"not a streamlm score file: no column {missing[0]!r}{hint}",
                         path=path)


def report(paths: Sequence[str], *, percentiles: Sequence[float] = PERCENTILES,
           bucket_percentiles: Sequence[float] = BUCKET_PERCENTILES,
           cutoffs: Cutoffs | None = None, field: str = "perplexity") -> dict:
    """Figures of the per-document (or per-line) scores in ``paths``.

    Cut-offs are the ``bucket_percentiles`` of the scores' ``field``, unless
    ``cutoffs`` (read from a file) are given. Returns a plain JSON-able dict.
    """
    if cutoffs is not None:
        field = cutoffs.field
    cols = read_scores(paths, field)
    tok, oov, lp, v = cols["tokens"], cols["oov"], cols["logprob"], cols[field]
    pct = sorted({float(x) for x in (*percentiles, *bucket_percentiles)})
    for x in pct:
        if not 0 <= x <= 100:
            raise UsageError(f"percentiles must be in [0, 100], got {x:g}")
    scored = ~np.isnan(v)
    vals = v[scored]
    T, n_oov = float(tok.sum()), float(oov.sum())
    if cutoffs is not None:
        cut = list(cutoffs.values)
        cut_pct = list(cutoffs.percentiles) if cutoffs.percentiles else None
    elif len(vals):
        cut = [float(x) for x in np.percentile(vals, list(bucket_percentiles))]
        cut_pct = [float(x) for x in bucket_percentiles]
        if any(b <= a for a, b in zip(cut, cut[1:])):  # ties: too few distinct values
            raise UsageError(f"the {', '.join(f'{x:g}' for x in bucket_percentiles)} "
                             "percentiles coincide; too few documents to cut")
    else:
        raise InputError("no scored documents (every record has 0 tokens)",
                         path=", ".join(paths))
    counts = np.bincount(assign(v, cut), minlength=len(cut) + 1)
    labels = bucket_labels(len(cut))
    key = {float(x): f"p{x:g}" for x in pct}
    return {
        "files": [os.fspath(p) for p in paths],
        "field": field,
        "documents": int(len(v)),
        "scored_documents": int(scored.sum()),
        "empty_documents": int((~scored).sum()),
        "tokens": int(T),
        "oov": int(n_oov),
        "oov_rate": (n_oov / T) if T else None,
        "perplexity": math.exp(-math.fsum(lp.tolist()) / T) if T else None,
        "mean": float(vals.mean()) if len(vals) else None,
        "percentiles": ({key[x]: float(y) for x, y in zip(pct, np.percentile(vals, pct))}
                        if len(vals) else {}),
        "cutoffs": {"percentiles": cut_pct, "values": cut},
        "buckets": {lab: int(n) for lab, n in zip(labels, counts)},
        "_values": vals,  # for the plot; dropped before printing
    }


def format_report(rep: dict) -> str:
    """The report as readable text."""
    def f(x, fmt=".2f"):
        return "n/a" if x is None else format(x, fmt)

    lines = [", ".join(rep["files"]),
             f"  documents                 {rep['documents']:,} ({rep['empty_documents']:,} "
             "without tokens)",
             f"  tokens                    {rep['tokens']:,}",
             f"  OOV rate                  {f(rep['oov_rate'] and 100 * rep['oov_rate'])}%",
             f"  corpus perplexity         {f(rep['perplexity'])}   (token-weighted)",
             f"  mean {rep['field']:<20} {f(rep['mean'])}   (per document)"]
    for k, x in rep["percentiles"].items():
        lines.append(f"  {k:<25} {f(x)}")
    c = rep["cutoffs"]
    pct = c["percentiles"]
    lines.append("  cut-offs                  " + ", ".join(
        f"{x:.2f}" + (f" (p{p:g})" if pct else "") for x, p in
        zip(c["values"], pct or [None] * len(c["values"]))))
    total = max(1, rep["documents"])
    for lab, n in rep["buckets"].items():
        lines.append(f"  {lab:<25} {n:,} ({100 * n / total:.1f}%)")
    return "\n".join(lines) + "\n"
