"""Per-unit score records, from the spool to the output: Parquet, JSONL or CSV.

Line and document records: ``input``, ``path``, ``index`` (the 0-based line or
document of a text input) or ``row`` (the row of a JSONL / Parquet document
input), ``tokens``, ``oov``, ``logprob``, ``log10prob``, ``perplexity``,
``perplexity_excl_oov``, ``oov_rate``, ``words``, ``word_perplexity``, ``bytes``,
``bits_per_byte`` (see :mod:`streamlm.jobs.metrics`); with cut-offs, ``bucket``; then the
columns or fields kept from the input (``--keep``). A document input has one
record per row, in row order, an empty document included (0 tokens, null
perplexity); a skipped bad row has none. Word records: ``input``, ``path``,
``line`` (and ``doc``), ``position`` (in the input's token stream),
``position_in_line`` (or ``_in_doc``), ``token`` (the vocabulary's word),
``word`` (the text's own, an OOV's too), ``oov``, ``logprob``, ``log10prob``; in
a mix with an n-gram model (``--mix``) also ``rnn_log10prob`` and
``ngram_log10prob``, each model's own (``logprob`` and ``oov`` are the mix's).
With a subword model a record is a piece: ``token`` is the piece, ``word`` the
text it covers in the input (its space included; for shards, the piece), and
``word_start`` whether it starts a word (``▁`` first, or ``<eos>``).

Where they go: ``-`` is stdout (JSONL); a path that is not a regular file
(``/dev/stdout``, a FIFO, ``>(cmd)``) is opened and written, never replaced;
a regular file is written to a temp file and renamed over, once the whole
run succeeded. The suffix says the format (``.parquet``, ``.jsonl``,
``.ndjson``, ``.json``, ``.csv``).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from streamlm.data.atomic import atomic_path
from streamlm.data.inputs import DocSource, Source
from streamlm.data.vocab import Vocab
from streamlm.errors import UsageError
from streamlm.jobs.buckets import assign, bucket_labels, buckets
from streamlm.jobs.metrics import LN2, LN10
from streamlm.jobs.records import UNIT_DTYPE, Spool, Totals

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".csv": "csv"}


def output_format(path: str) -> str:
    """'parquet', 'jsonl' or 'csv' by the suffix (``-``: jsonl); UsageError otherwise."""
    if path == "-":
        return "jsonl"
    ext = os.path.splitext(path)[1].lower()
    if ext in FORMATS:
        return FORMATS[ext]
    if is_special(path):  # /dev/stdout, a FIFO: no suffix to go by
        return "jsonl"
    raise UsageError(f"{path}: --output must end in .parquet, .jsonl, .ndjson, .json or "
                     ".csv (or be -, stdout)")


def is_special(path: str) -> bool:
    """Whether path exists and is not a regular file (a device, a FIFO, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output(path: str, inputs: list[str]) -> None:
    """Refuse an output that is a directory or one of the inputs."""
    if path == "-":
        return
    if os.path.isdir(path):
        raise UsageError(f"{path}: --output is a directory")
    for p in inputs:
        if p != "-" and os.path.exists(p) and os.path.exists(path) and os.path.samefile(p, path):
            raise UsageError(f"{path}: --output is also an input; write the scores elsewhere")
    output_format(path)


@contextlib.contextmanager
def open_output(path: str) -> Iterator[object]:
    """A binary file to write the output to (see the module doc for where)."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    if is_special(path):
        with open(path, "wb") as f:
            yield f
        return
    with atomic_path(os.path.realpath(path)) as tmp:  # a symlink: its file is replaced
        with open(tmp, "wb") as f:
            yield f


ROW_BLOCK = 1 << 16  # rows per block of the records of rows with none


def write_records(path: str, level: str, spool: Spool, sources: list[Source],
                  totals: list[Totals], vocab: Vocab, docs: bool, keep: Sequence[str] = (),
                  cutoffs: tuple[Sequence[float], str] | None = None) -> int:
    """Convert the spooled records into ``path``; returns the number of records.
    ``totals``: the sources' (their rows, for a record of every row);
    ``cutoffs``: (values, field) of the buckets, for a ``bucket`` column."""
    fmt = output_format(path)
    n = 0
    with open_output(path) as f, _Writer(f, fmt) as w:
        for s, t in zip(sources, totals):
            for cols in _records(s, t, level, spool, vocab, docs, keep, cutoffs):
                w.write(cols)
                n += len(next(iter(cols.values())))
        if n == 0 and fmt == "parquet":  # no records: an empty table that has the schema
            w.write(_unit_columns(np.zeros(0, UNIT_DTYPE), "", "index", None)
                    if level != "word" else _word_columns(np.zeros(0, spool.dtype), "",
                                                          vocab, docs, None, None))
    return n


class _Writer:
    """One output's writer: batches of columns (dicts of equal-length lists/arrays)."""

    def __init__(self, f, fmt: str):
        self.f, self.fmt = f, fmt
        self.pq = None
        self.csv = None

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc) -> None:
        if self.pq is not None:
            self.pq.close()
        if self.csv is not None:
            self.csv.close()

    def write(self, cols: dict) -> None:
        if self.fmt == "jsonl":
            keys = list(cols)
            vals = [c.tolist() if isinstance(c, np.ndarray) else
                    c.to_pylist() if hasattr(c, "to_pylist") else list(c) for c in cols.values()]
            out = []
            for rec in zip(*vals):
                d = {k: (None if isinstance(v, float) and v != v else v)
                     for k, v in zip(keys, rec)}  # NaN (no tokens) -> null
                out.append(json.dumps(d, allow_nan=False, ensure_ascii=False, default=str))
            if out:
                self.f.write(("\n".join(out) + "\n").encode("utf-8"))
            return
        import pyarrow as pa

        table = pa.table({k: _arrow(v) for k, v in cols.items()})
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            if self.pq is None:
                self.schema = table.schema
                self.pq = pq.ParquetWriter(self.f, table.schema, compression="zstd")
            self.pq.write_table(table.cast(self.schema))
        else:
            from pyarrow import csv

            if self.csv is None:
                self.schema = table.schema
                self.csv = csv.CSVWriter(self.f, table.schema)
            self.csv.write_table(table.cast(self.schema))


def _arrow(v):
    import pyarrow as pa

    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return pa.array(v, mask=np.isnan(v))  # NaN (no tokens) -> null
    return v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)


# --------------------------------------------------------------- records --
def _records(s: Source, t: Totals, level: str, spool: Spool, vocab: Vocab, docs: bool, keep,
             cutoffs):
    """Column batches of one input's records (``t``: its totals), in order."""
    recs = spool.read(s.index)
    if level == "word":
        surface = _Surface(s.surface_words()) if hasattr(s, "surface_words") else None
        unit_start = _UnitStart()
        for r in recs:
            yield _word_columns(r, s.name, vocab, docs, surface, unit_start)
        return
    rowwise = isinstance(s, DocSource) and level == "doc"
    if rowwise:
        recs = _every_row(recs, t, s.index)
    kept = _kept(s, t.skipped, keep) if keep else None
    for r in recs:
        cols = _unit_columns(r, s.name, "row" if rowwise else "index", cutoffs)
        if kept is not None:
            cols.update(kept(len(r)))
        yield cols


def _every_row(recs: Iterator[np.ndarray], t: Totals, i: int) -> Iterator[np.ndarray]:
    """The records of document input ``i`` (``t``: its totals, its rows) with a record
    for every row that has none (an empty document), skipped rows left out: one per
    row, in row order. Rows are made a block at a time: memory does not grow with the
    input's rows."""
    skipped = np.unique(np.asarray(t.skipped, dtype=np.int64))

    def rows(lo: int, hi: int) -> np.ndarray:  # the rows lo <= row < hi not skipped
        out = np.arange(lo, hi, dtype=np.int64)
        return out[~np.isin(out, skipped)] if len(skipped) else out

    at = 0  # the first row not given yet
    for r in recs:
        if not len(r):
            continue
        upto = int(r["index"][-1]) + 1
        yield _fill(rows(at, upto), r, i)
        at = upto
    for lo in range(at, t.rows, ROW_BLOCK):
        yield _fill(rows(lo, min(t.rows, lo + ROW_BLOCK)), np.zeros(0, UNIT_DTYPE), i)


def _fill(rows: np.ndarray, r: np.ndarray, i: int) -> np.ndarray:
    """Records for ``rows``: r's where it has one, zeros elsewhere."""
    out = np.zeros(len(rows), UNIT_DTYPE)
    out["input"] = i
    out["index"] = rows
    if len(r):
        out[np.searchsorted(rows, r["index"])] = r
    return out


def _kept(s: Source, skipped: list[int], keep: list[str]):
    """A function giving the kept columns of the next k rows (a second read of the input,
    the rows ``skipped`` left out)."""
    if not isinstance(s, DocSource):
        raise UsageError(f"{s.name}: --keep copies fields of JSONL or Parquet documents; "
                         "this input is text or token ids")
    import pyarrow as pa

    from streamlm.data import rows as R

    it = R.keep_batches(s.path, s.fmt, keep, s.text, skipped)
    buf: list = []
    have = 0

    def take(k: int) -> dict:
        nonlocal buf, have
        while have < k:
            t = next(it)
            buf.append(t)
            have += t.num_rows
        t = pa.concat_tables(buf) if len(buf) > 1 else buf[0]
        buf, have = [t.slice(k)], t.num_rows - k
        head = t.slice(0, k)
        return {c: head.column(c) for c in head.column_names}

    return take


def _figures(r: np.ndarray) -> dict[str, np.ndarray]:
    """Perplexity, perplexity excluding OOVs, OOV rate, perplexity per word and bits
    per byte of unit records (NaN: none)."""
    tok = r["tokens"].astype(np.float64)
    kept = tok - r["oov"]
    words, nbytes = r["words"].astype(np.float64), r["bytes"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ppl = np.where(tok > 0, np.exp(-r["logprob"] / tok), np.nan)
        ppl_x = np.where(kept > 0, np.exp(-(r["logprob"] - r["logprob_oov"]) / kept), np.nan)
        rate = np.where(tok > 0, r["oov"] / tok, np.nan)
        wppl = np.where(words > 0, np.exp(-r["logprob"] / words), np.nan)
        bpb = np.where(nbytes > 0, -r["logprob"] / nbytes / LN2, np.nan)
    return {"perplexity": ppl, "perplexity_excl_oov": ppl_x, "oov_rate": rate,
            "word_perplexity": wppl, "bits_per_byte": bpb}


def _unit_columns(r: np.ndarray, name: str, index_name: str,
                  cutoffs: tuple[Sequence[float], str] | None) -> dict:
    n = len(r)
    fig = _figures(r)
    ppl, ppl_x, rate = fig["perplexity"], fig["perplexity_excl_oov"], fig["oov_rate"]
    cols = {"input": r["input"].astype(np.int64), "path": [name] * n, index_name: r["index"],
            "tokens": r["tokens"], "oov": r["oov"], "logprob": r["logprob"],
            "log10prob": r["logprob"] / LN10, "perplexity": ppl, "perplexity_excl_oov": ppl_x,
            "oov_rate": rate, "words": r["words"], "word_perplexity": fig["word_perplexity"],
            "bytes": r["bytes"], "bits_per_byte": fig["bits_per_byte"]}
    if cutoffs is not None:
        cols["bucket"] = buckets(cols[cutoffs[1]], cutoffs[0])
    return cols


# ----------------------------------------------------------- split buckets --
def write_split(directory: str, spool: Spool, sources: list[Source], totals: list[Totals],
                cutoffs: tuple[Sequence[float], str]) -> dict[str, int]:
    """Copy every scored input row, unchanged (all its columns; a JSONL line as it
    was), into ``directory/<bucket>.parquet`` (or ``.jsonl``), one file per bucket,
    rows in input order; returns the rows per bucket. All the files are written to
    temp files and renamed at the end, together. Skipped bad rows (in ``totals``, the
    sources' own) go nowhere."""
    import pyarrow as pa

    from streamlm.data import rows as R

    values, field = cutoffs
    labels = bucket_labels(len(values))
    kinds = {"jsonl" if s.fmt == "jsonl" else "table" for s in sources}
    if len(kinds) > 1:
        raise UsageError("--split-buckets: the inputs mix JSONL and Parquet / Arrow; split "
                         "them in separate runs")
    jsonl = kinds == {"jsonl"}
    schema = None
    if not jsonl:
        for s in sources:
            sch = R.table_schema(s.path)[1]
            if schema is not None and not sch.equals(schema):
                raise UsageError(f"{s.name}: --split-buckets: its columns differ from "
                                 f"{sources[0].name}'s; split them in separate runs")
            schema = sch
    ext = ".jsonl" if jsonl else ".parquet"
    targets = {lab: os.path.join(directory, lab + ext) for lab in labels}
    for t in targets.values():
        check_output(t, [s.path for s in sources])
        if os.path.lexists(t) and not os.path.isfile(t):
            raise UsageError(f"{t}: exists and is not a regular file; not replacing it")
    os.makedirs(directory, exist_ok=True)
    counts = dict.fromkeys(labels, 0)
    with contextlib.ExitStack() as stack:
        outs = {lab: stack.enter_context(open_output(t)) for lab, t in targets.items()}
        writers = {}
        if not jsonl:
            import pyarrow.parquet as pq

            writers = {lab: stack.enter_context(pq.ParquetWriter(f, schema, compression="zstd"))
                       for lab, f in outs.items()}
        for s, tot in zip(sources, totals):
            bucket = np.full(tot.rows, -1, dtype=np.int16)  # -1: a skipped row
            for r in _every_row(spool.read(s.index), tot, s.index):
                bucket[r["index"]] = assign(_figures(r)[field], values)
            if jsonl:
                f, _ = R._open_jsonl(s.path)
                with contextlib.closing(f):
                    row = 0
                    for raw in R._lines(f, s.name):
                        if not raw.strip():
                            continue
                        b = bucket[row]
                        row += 1
                        if b >= 0:
                            outs[labels[b]].write(raw + b"\n")
                            counts[labels[b]] += 1
                continue
            kind = R.table_schema(s.path)[0]
            row = 0
            for batch in R._batches(s.path, kind, schema.names, R.BATCH_ROWS):
                t = pa.Table.from_batches([batch])
                b = bucket[row:row + t.num_rows]
                row += t.num_rows
                for k, lab in enumerate(labels):
                    mask = b == k
                    if mask.any():
                        writers[lab].write_table(t.filter(pa.array(mask)))
                        counts[lab] += int(mask.sum())
    return counts


class _Surface:
    """The text's own words, token by token (``<eos>`` for an end of line)."""

    def __init__(self, words: Iterator[str]):
        self.words = words

    def take(self, n: int) -> list[str]:
        out = [w for _, w in zip(range(n), self.words)]
        if len(out) < n:  # pragma: no cover - the second read disagrees: a bug
            raise RuntimeError("the input's words ran out before its tokens")
        return out


class _UnitStart:
    """Positions within the line (or document), across batches of word records."""

    def __init__(self):
        self.key = None
        self.start = 0

    def __call__(self, unit: np.ndarray, position: np.ndarray) -> np.ndarray:
        n = len(unit)
        new = np.r_[unit[0] != self.key, unit[1:] != unit[:-1]]
        last = np.maximum.accumulate(np.where(new, np.arange(n), -1))
        start = np.where(last >= 0, position[np.maximum(last, 0)], self.start)
        self.key, self.start = unit[-1], int(start[-1])
        return position - start


def _word_columns(r: np.ndarray, name: str, vocab: Vocab, docs: bool, surface,
                  unit_start: _UnitStart | None) -> dict:
    n = len(r)
    words = vocab.words
    cols = {"input": r["input"].astype(np.int64), "path": [name] * n, "line": r["line"]}
    if docs:
        cols["doc"] = r["doc"]
    cols["position"] = r["position"]
    unit = r["doc"] if docs else r["line"]
    cols["position_in_doc" if docs else "position_in_line"] = (
        unit_start(unit, r["position"]) if n and unit_start is not None else r["position"] * 0)
    tokens = [words[i] for i in r["id"].tolist()]
    cols["token"] = tokens
    cols["word"] = surface.take(n) if surface is not None else tokens
    if vocab.tokenizer != "word":
        cols["word_start"] = vocab.token_words()[r["id"]].astype(np.bool_)
    mixed = "ngram_logprob" in r.dtype.names  # a mix: the mix's OOVs, each model's own
    cols["oov"] = r["oov"] if mixed else r["id"] == vocab.unk_id
    cols["logprob"] = r["logprob"]
    cols["log10prob"] = r["logprob"] / LN10
    if mixed:
        cols["rnn_log10prob"] = r["rnn_logprob"] / LN10
        cols["ngram_log10prob"] = r["ngram_logprob"] / LN10
    return cols
