"""Documents as rows: JSONL records and Parquet / Arrow rows, read in batches.

A row is one document. In JSONL every non-blank line is a row, a JSON object
whose text is the field ``text_field`` (a dotted path such as
``meta.content`` reaches into nested objects); in a Parquet or Arrow file
every row is one, its text the string column ``text_column``. Rows are
numbered from 0 in file order; a JSONL row's number is its record's, not its
line's (blank lines are not rows), and error messages give the line.

Files are read a batch of rows at a time (a Parquet row group at most), so
memory does not grow with the file. A bad row (invalid JSON, no such field, a
null or a non-string text) is an error naming the file and the line or row;
with ``errors="skip"`` it is skipped and counted, and its number stays unused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from streamlm.data.formats import table_kind
from streamlm.data.text import Meter, display_name, open_binary
from streamlm.errors import InputError

BATCH_ROWS = 4096
BATCH_BYTES = 1 << 20


@dataclass
class RowBatch:
    """Rows ``rows`` (their numbers, int64) and their texts (a pyarrow string array,
    no nulls) or, for a column of token ids, ``ids`` (int32, every row's ids back
    to back) and ``lengths`` (ids per row); ``skipped``: the numbers of the bad
    rows skipped among them, and ``why`` where the first is and what is wrong with
    it ("line 7: invalid JSON (...)")."""

    rows: np.ndarray
    texts: object  # pa.Array of strings, or None
    skipped: list[int]
    ids: np.ndarray | None = None
    lengths: np.ndarray | None = None
    why: str | None = None


def field(obj, path: str):
    """``obj[a][b]...`` for the dotted ``path`` "a.b...": KeyError when a part is missing."""
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(part)
        obj = obj[part]
    return obj


def _open_jsonl(path: str):
    """(file, tell): the decompressed bytes of a JSONL file (gz/bz2/xz by
    text.open_binary, zstd by pyarrow's codec: the ``.zst`` form of JSONL corpora),
    and a function giving the bytes of the file on disk read so far."""
    p = os.fspath(path)
    if p != "-" and os.path.splitext(p)[1].lower() == ".zst":
        import pyarrow as pa

        try:
            raw = pa.OSFile(p, "rb")
            return pa.CompressedInputStream(raw, "zstd"), raw.tell
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"cannot open: {e}", path=p) from None
    f = open_binary(path)
    return f, f.raw_tell


def _lines(f, name: str, meter: Meter | None = None, tell=None) -> Iterator[bytes]:
    """The lines of a binary file object (without their newline), read 1 MiB at a time;
    ``meter.done`` follows ``tell()``."""
    import pyarrow as pa

    rest = b""
    while True:
        if meter is not None:  # what was read before this block is handed out
            meter.done = tell()
        try:
            block = f.read(1 << 20)
        except pa.ArrowException as e:
            raise InputError(f"corrupt or truncated compressed data ({e})", path=name) from None
        if not block:
            break
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def jsonl_batches(path: str, text_field: str, errors: str = "strict",
                  batch_rows: int = BATCH_ROWS, meter: Meter | None = None
                  ) -> Iterator[RowBatch]:
    """The documents of a JSONL file, ``batch_rows`` at a time (see the module doc);
    ``meter.done`` follows the bytes of the file read."""
    import pyarrow as pa

    name = display_name(path)
    f, tell = _open_jsonl(path)
    rows: list[int] = []
    texts: list[str] = []
    size = 0
    row = 0
    skipped: list[int] = []
    why: list[str] = []  # of the batch's first skipped row

    def bad(msg: str, line: int) -> None:
        if errors != "skip":
            raise InputError(msg, path=name, position=f"line {line}")
        skipped.append(row - 1)
        if not why:
            why.append(f"line {line}: {msg}")

    try:
        for lineno, raw in enumerate(_lines(f, name, meter, tell), 1):
            if not raw.strip():
                continue
            r = row
            row += 1
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                bad(f"invalid JSON ({getattr(e, 'msg', e)})", lineno)
                continue
            try:
                text = field(obj, text_field)
            except KeyError as e:
                bad(f"no field {text_field!r} (missing {e.args[0]!r}); use --text-field",
                    lineno)
                continue
            if not isinstance(text, str):
                got = "null" if text is None else type(text).__name__
                bad(f"field {text_field!r} is {got}, not a string", lineno)
                continue
            if "\x00" in text:
                bad("NUL character in the text", lineno)
                continue
            rows.append(r)
            texts.append(text)
            size += len(text)
            if len(rows) >= batch_rows or size >= BATCH_BYTES:
                yield RowBatch(np.array(rows, dtype=np.int64), pa.array(texts, pa.string()),
                               skipped, why=why[0] if why else None)
                rows, texts, size, skipped = [], [], 0, []
                why.clear()
    finally:
        if os.fspath(path) != "-":
            f.close()
    if rows or skipped:
        yield RowBatch(np.array(rows, dtype=np.int64), pa.array(texts, pa.string()), skipped,
                       why=why[0] if why else None)


def table_schema(path: str):
    """(kind, pyarrow schema) of a Parquet or Arrow IPC file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import ipc

    with open(path, "rb") as fh:
        kind = table_kind(fh.read(8))
    try:
        if kind == "parquet":
            return kind, pq.read_schema(path)
        with pa.memory_map(path) as src:
            return kind, ipc.open_file(src).schema
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read {'Parquet' if kind == 'parquet' else 'Arrow IPC'} file "
                         f"(corrupt or truncated?): {str(e).splitlines()[0]}", path=path) from None


def _batches(path: str, kind: str, columns: list[str], batch_rows: int):
    """Record batches of ``columns`` (Parquet: row group by row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import ipc

    if kind == "parquet":
        pf = pq.ParquetFile(path)
        try:
            for g in range(pf.metadata.num_row_groups):
                yield from pf.read_row_group(g, columns=columns).to_batches(batch_rows)
        finally:
            pf.close()
    else:
        with pa.memory_map(path) as src:
            r = ipc.open_file(src)
            for i in range(r.num_record_batches):
                yield r.get_batch(i).select(columns)


def table_batches(path: str, column: str, errors: str = "strict",
                  batch_rows: int = BATCH_ROWS, meter: Meter | None = None
                  ) -> Iterator[RowBatch]:
    """The documents of the string column ``column`` of a Parquet / Arrow file;
    ``meter.done`` follows the rows read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind, schema = table_schema(path)
    if column not in schema.names:
        raise InputError(f"no column {column!r}; columns: {', '.join(schema.names)}; use "
                         "--text-column", path=path)
    t = schema.field(column).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise InputError(f"column {column!r} has type {t}, not a string", path=path)
    row = 0
    try:
        for b in _batches(path, kind, [column], batch_rows):
            col = b.column(0)
            rows = np.arange(row, row + len(col), dtype=np.int64)
            bad = col.is_null().to_numpy(zero_copy_only=False)
            nul = pc.match_substring(col, "\x00").to_numpy(zero_copy_only=False)
            bad |= np.nan_to_num(nul.astype(np.float64)).astype(bool)
            skipped: list[int] = []
            why = None
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                what = "null" if col.is_null().to_numpy(zero_copy_only=False)[k] else \
                    "a NUL character"
                if errors != "skip":
                    raise InputError(f"{what} in text column {column!r}", path=path,
                                     position=f"row {row + k}")
                skipped = rows[bad].tolist()
                why = f"row {row + k}: {what} in text column {column!r}"
                rows, col = rows[~bad], pc.filter(col, pa.array(~bad))
            if meter is not None:
                meter.done = row  # the rows before this batch are handed out
            row += len(b)
            yield RowBatch(rows, col.cast(pa.string()), skipped, why=why)
    except InputError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read (corrupt or truncated?): {str(e).splitlines()[0]}",
                         path=path) from None


def table_rows(path: str) -> int:
    """The number of rows of a Parquet / Arrow file, from its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import ipc

    kind, _ = table_schema(path)
    if kind == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with pa.memory_map(path) as src:
        r = ipc.open_file(src)
        return sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))


def table_id_batches(path: str, column: str, V: int, errors: str = "strict",
                     batch_rows: int = BATCH_ROWS, meter: Meter | None = None
                     ) -> Iterator[RowBatch]:
    """The documents of a ``list<integer>`` column (a tokenised dataset's
    ``input_ids``): a row is a document of ids, each in [0, V), checked here;
    ``meter.done`` follows the rows read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind, schema = table_schema(path)
    t = schema.field(column).type
    if not ((pa.types.is_list(t) or pa.types.is_large_list(t))
            and pa.types.is_integer(t.value_type)):
        raise InputError(f"column {column!r} has type {t}, not a list of integers",
                         path=path)
    row = 0
    try:
        for b in _batches(path, kind, [column], batch_rows):
            col = b.column(0)
            rows = np.arange(row, row + len(col), dtype=np.int64)
            lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
            values = col.flatten()
            parents = rows[0] + pc.list_parent_indices(col).to_numpy()
            a = values.to_numpy(zero_copy_only=False)
            bad = col.is_null().to_numpy(zero_copy_only=False).copy()
            why = {}
            if values.null_count:
                nul = parents[values.is_null().to_numpy(zero_copy_only=False)]
                bad[nul - row] = True
                why.update((int(r), "a null token id") for r in nul)
            if a.size:
                out = (np.nan_to_num(a.astype(np.float64), nan=0) < 0) | (
                    np.nan_to_num(a.astype(np.float64), nan=0) >= V)
                if out.any():
                    bad[parents[out] - row] = True
                    for r, v in zip(parents[out][:1], a[out][:1]):
                        why.setdefault(int(r), f"token id {int(v)} outside [0, {V})")
            skipped: list[int] = []
            first = None
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                msg = why.get(row + k, "a null document")
                if errors != "skip":
                    raise InputError(f"{msg} in column {column!r}", path=path,
                                     position=f"row {row + k}")
                skipped = rows[bad].tolist()
                first = f"row {row + k}: {msg} in column {column!r}"
                keep = ~bad[parents - row] if a.size else np.zeros(0, bool)
                a, lengths, rows = a[keep], lengths[~bad], rows[~bad]
            if meter is not None:
                meter.done = row
            row += len(col)
            yield RowBatch(rows, None, skipped, np.ascontiguousarray(a, dtype=np.int32),
                           lengths.astype(np.int64), why=first)
    except InputError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read (corrupt or truncated?): {str(e).splitlines()[0]}",
                         path=path) from None


def check_keep(path: str, fmt: str, keep: Sequence[str]) -> None:
    """Raise InputError naming the field and the file when some column or field of
    ``keep`` is in no row of the input (a table: its schema; JSONL: read until every
    field was seen in some record, to the end for one in none), before any output:
    a field missing only in some records is null in theirs (:func:`keep_batches`)."""
    if fmt != "jsonl":
        names = table_schema(path)[1].names
        missing = [k for k in keep if k not in names]
        if missing:
            raise InputError(f"no column {missing[0]!r} to keep; columns: {', '.join(names)}",
                             path=path)
        return
    want = list(keep)
    first: list[str] | None = None
    f, _ = _open_jsonl(path)
    try:
        for raw in _lines(f, display_name(path)):
            if not want:
                return
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue  # a bad row: the read that scores says so (or skips it)
            if not isinstance(obj, dict):
                continue
            if first is None:
                first = list(obj)
            want = [k for k in want if not _has(obj, k)]
    finally:
        f.close()
    if want:
        seen = "no record" if first is None else "fields of the first record: " + (
            ", ".join(first) or "none")
        raise InputError(f"no record has a field {want[0]!r} to keep ({seen})",
                         path=display_name(path))


def _has(obj, path: str) -> bool:
    try:
        field(obj, path)
    except KeyError:
        return False
    return True


def keep_batches(path: str, fmt: str, keep: list[str], column: str,
                 skipped: list[int], batch_rows: int = BATCH_ROWS):
    """The columns (tables) or fields (JSONL, dotted paths; a missing one is null)
    ``keep`` of every row but the skipped ones, in order: pyarrow tables of at most
    ``batch_rows`` rows. A second read of the input, for ``--keep``."""
    import pyarrow as pa

    skip = set(skipped)
    if fmt == "jsonl":
        f, _ = _open_jsonl(path)
        recs: list[dict] = []
        row = 0
        try:
            for raw in _lines(f, display_name(path)):
                if not raw.strip():
                    continue
                r, row = row, row + 1
                if r in skip:
                    continue
                obj = json.loads(raw)
                rec = {}
                for k in keep:
                    try:
                        rec[k] = field(obj, k)
                    except KeyError:
                        rec[k] = None
                recs.append(rec)
                if len(recs) >= batch_rows:
                    yield pa.Table.from_pylist(recs)
                    recs = []
        finally:
            f.close()
        if recs:
            yield pa.Table.from_pylist(recs)
        return
    kind, schema = table_schema(path)
    missing = [k for k in keep if k not in schema.names]
    if missing:
        raise InputError(f"no column {missing[0]!r} to keep; columns: {', '.join(schema.names)}",
                         path=path)
    row = 0
    for b in _batches(path, kind, list(keep), batch_rows):
        t = pa.Table.from_batches([b])
        if skip:
            rows = np.arange(row, row + t.num_rows)
            mask = ~np.isin(rows, np.fromiter(skip, dtype=np.int64))
            t = t.filter(pa.array(mask))
        row += b.num_rows
        yield t
