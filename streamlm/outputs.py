"""Per-unit score records, from the spool to the output file (JSONL or Parquet).

Line and document records: ``input``, ``path``, ``index`` (0-based line or
document of that input), ``tokens``, ``oov``, ``logprob``, ``log10prob``,
``perplexity``. Word records: ``input``, ``path``, ``line`` (and ``doc``),
``position`` (in the input's token stream), ``token``, ``oov``, ``logprob``,
``log10prob``. The file is written atomically, once the whole run succeeded.
"""

from __future__ import annotations

import json
import os

import numpy as np

from streamlm.atomic import atomic_path
from streamlm.inputs import Source
from streamlm.metrics import LN10
from streamlm.records import Spool
from streamlm.vocab import Vocab


def write_records(path: str, level: str, spool: Spool, sources: list[Source],
                  vocab: Vocab, docs: bool) -> int:
    """Convert the spooled records into ``path`` (JSONL or Parquet), atomically."""
    parquet = os.path.splitext(path)[1].lower() in (".parquet", ".pq")
    rows = 0
    words = np.array(vocab.words, dtype=object)
    unk = vocab.unk_id
    with atomic_path(path) as tmp:
        writer = None
        f = None
        try:
            if parquet:
                import pyarrow as pa
                import pyarrow.parquet as pq
            else:
                f = open(tmp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            for s in sources:
                for r in spool.read(s.index):
                    cols = _columns(r, level, s.name, words, unk, docs)
                    rows += len(r)
                    if parquet:
                        table = pa.table(cols)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                        writer.write_table(table)
                    else:
                        keys = list(cols)
                        vals = [c.tolist() if isinstance(c, np.ndarray) else c
                                for c in cols.values()]
                        for rec in zip(*vals):
                            f.write(json.dumps(dict(zip(keys, rec)), allow_nan=False))
                            f.write("\n")
            if parquet and writer is None:  # no records: an empty table with the schema
                import pyarrow as pa
                import pyarrow.parquet as pq

                empty = np.zeros(0, dtype=spool.dtype)
                pq.write_table(pa.table(_columns(empty, level, "", words, unk, docs)), tmp)
        finally:
            if writer is not None:
                writer.close()
            if f is not None:
                f.close()
    return rows


def _columns(r: np.ndarray, level: str, name: str, words, unk: int, docs: bool) -> dict:
    n = len(r)
    cols: dict = {"input": r["input"].astype(np.int64), "path": [name] * n}
    if level == "word":
        cols["line"] = r["line"]
        if docs:
            cols["doc"] = r["doc"]
        cols["position"] = r["position"]
        cols["token"] = words[r["id"]].tolist() if n else []
        cols["oov"] = r["id"] == unk
        cols["logprob"] = r["logprob"]
        cols["log10prob"] = r["logprob"] / LN10
    else:
        tok = r["tokens"].astype(np.float64)
        cols["index"] = r["index"]
        cols["tokens"] = r["tokens"]
        cols["oov"] = r["oov"]
        cols["logprob"] = r["logprob"]
        cols["log10prob"] = r["logprob"] / LN10
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["perplexity"] = np.exp(-r["logprob"] / tok)
    return cols
