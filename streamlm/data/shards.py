"""Token shards read back: Parquet / Arrow IPC files of token ids, one block at a time.

:func:`open_dataset` opens a prepared directory (``streamlm prepare``: its
manifest, vocabulary and shards are checked against each other) or Parquet /
Arrow IPC (Feather v2) files whose column is integers (one token stream) or
``list<integer>`` (one document per row). Files are kept in the order given;
a directory's files are taken in sorted name order.

Every block (row group / record batch) is validated before it is handed out:
no nulls, ids in ``[0, V)``. Numba kernels do no bounds checking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import ipc

from streamlm.data.atomic import sha256_file
from streamlm.data.formats import (
    ARROW_STREAM_MAGIC,
    FEATHER_V1_MAGIC,
    MANIFEST,
    SHARD_GLOB,
    TABLE_SUFFIXES,
    VOCAB_FILE,
    table_kind,
)
from streamlm.data.manifest import _manifest_vocab, _read_manifest, _safe_name, vocab_differs
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError, VocabularyMismatch

log = logging.getLogger("streamlm.data.shards")

_INT32_MAX = np.iinfo(np.int32).max


class Chunk(NamedTuple):
    """A contiguous run of the token stream (never crosses a row group)."""

    ids: np.ndarray  # (n,) int32
    doc_start: np.ndarray | None  # (n,) bool, or None when the data has no documents
    start: int  # global position of ids[0]
    source: str  # file name


@dataclass
class _File:
    path: str
    kind: str  # "parquet" | "ipc"
    column: str
    is_list: bool
    doc_column: str | None
    meta: object = None  # pq.FileMetaData for parquet
    blocks: list[int] = field(default_factory=list)  # tokens per row group / batch


def _sniff(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=path) from None
    kind = table_kind(head)
    if kind is not None:
        return kind
    if head.startswith(ARROW_STREAM_MAGIC):
        raise InputError("Arrow IPC *stream* format is not supported; write the IPC file "
                         "(Feather v2) format", path=path)
    if head.startswith(FEATHER_V1_MAGIC):
        raise InputError("Feather v1 is not supported; write Feather v2", path=path)
    raise InputError("not a Parquet or Arrow IPC (Feather v2) file (bad magic bytes)", path=path)


def _column_kind(path: str, schema: pa.Schema, column: str) -> bool:
    """True for list<int>, False for flat int; InputError otherwise."""
    if column not in schema.names:
        raise InputError(f"no column {column!r}; available columns: "
                         f"{', '.join(schema.names) or '(none)'}", path=path)
    t = schema.field(column).type
    if pa.types.is_integer(t):
        return False
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type):
        return True
    raise InputError(f"column {column!r} has type {t}, expected an integer type or "
                     f"list of integers; available columns: {', '.join(schema.names)}", path=path)


def _doc_column(schema: pa.Schema, is_list: bool) -> str | None:
    if is_list:
        return None
    if "doc_start" in schema.names and pa.types.is_boolean(schema.field("doc_start").type):
        return "doc_start"
    return None


def _open_file(path: str, column: str) -> _File:
    kind = _sniff(path)
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path)
            try:
                schema = pf.schema_arrow
                is_list = _column_kind(path, schema, column)
                f = _File(path, kind, column, is_list, _doc_column(schema, is_list), pf.metadata)
                md = pf.metadata
                if not is_list:
                    f.blocks = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
                else:  # list lengths are not in the metadata: one pass over the offsets
                    for i in range(md.num_row_groups):
                        col = pf.read_row_group(i, columns=[column]).column(column)
                        f.blocks.append(sum(len(c.flatten()) for c in col.chunks))
            finally:
                pf.close()
        else:
            with pa.memory_map(path) as src:
                reader = ipc.open_file(src)
                schema = reader.schema
                is_list = _column_kind(path, schema, column)
                f = _File(path, kind, column, is_list, _doc_column(schema, is_list))
                for i in range(reader.num_record_batches):
                    b = reader.get_batch(i)
                    if is_list:
                        f.blocks.append(len(b.column(schema.get_field_index(column)).flatten()))
                    else:
                        f.blocks.append(b.num_rows)
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        what = "Parquet" if kind == "parquet" else "Arrow IPC"
        raise InputError(f"cannot read {what} file (corrupt or truncated?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                         path=path) from None
    return f


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class TokenDataset:
    """A token stream over files, read one block (row group / record batch) at a time.

    ``num_tokens`` comes from metadata (for ``list<int>`` columns one pass over the
    list offsets at open). Ids are validated per block as they are read: no nulls,
    ``0 <= id < vocab_size`` (only ``0 <= id <= int32 max`` when the size is unknown).
    """

    def __init__(self, files: list[_File], *, vocab: Vocab | None, vocab_size: int | None,
                 fingerprint_extra: str = "", name: str | None = None,
                 allow_empty: bool = False):
        self.files = files
        self.vocab = vocab
        self.vocab_size = len(vocab) if vocab is not None else vocab_size
        kinds = {f.is_list for f in files}
        if len(kinds) > 1:
            raise InputError("some files hold flat integer columns and some list<int> "
                             "columns; use one kind", path=name)
        self.has_docs = all(f.is_list or f.doc_column for f in files)
        self._block_file: list[int] = []
        self._block_idx: list[int] = []
        counts = []
        for fi, f in enumerate(files):
            for bi, n in enumerate(f.blocks):
                if n:
                    self._block_file.append(fi)
                    self._block_idx.append(bi)
                    counts.append(n)
        self._starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._starts[1:])
        self.num_tokens = int(self._starts[-1])
        if self.num_tokens == 0 and not allow_empty:
            raise InputError("empty dataset: no tokens", path=name or ", ".join(
                f.path for f in files))
        h = hashlib.sha256(fingerprint_extra.encode())
        for f in files:
            h.update(json.dumps([os.path.basename(f.path), f.blocks]).encode())
        if vocab is not None:
            h.update(vocab.sha256().encode())
        self.fingerprint = h.hexdigest()
        self.manifest: dict | None = None  # set for a prepared directory
        self._cursor = Cursor(self)

    def __repr__(self) -> str:
        return (f"TokenDataset({self.num_tokens:,} tokens in {len(self.files)} files, "
                f"vocab_size={self.vocab_size}, has_docs={self.has_docs})")

    @property
    def num_blocks(self) -> int:
        return len(self._starts) - 1

    # -------------------------------------------------------------- blocks --
    def _load(self, b: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Validated (ids int32, doc_start bool | None) of global block ``b``."""
        f = self.files[self._block_file[b]]
        rg = self._block_idx[b]
        cols = [f.column] + ([f.doc_column] if f.doc_column else [])
        try:
            if f.kind == "parquet":
                with pq.ParquetFile(f.path, metadata=f.meta) as pf:
                    tbl = pf.read_row_group(rg, columns=cols)
                col = tbl.column(f.column).combine_chunks()
                dcol = tbl.column(f.doc_column).combine_chunks() if f.doc_column else None
            else:
                with pa.memory_map(f.path) as src:
                    batch = ipc.open_file(src).get_batch(rg)
                    col = batch.column(batch.schema.get_field_index(f.column))
                    dcol = (batch.column(batch.schema.get_field_index(f.doc_column))
                            if f.doc_column else None)
                    return self._validate(f, rg, col, dcol)
        except InputError:
            raise
        except (pa.ArrowException, OSError, ValueError, EOFError) as e:
            raise InputError(f"cannot read (corrupt or truncated?): "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                             path=f.path, position=f"row group {rg}") from None
        return self._validate(f, rg, col, dcol)

    def _row_before(self, f: _File, rg: int) -> int:
        return sum(f.meta.row_group(i).num_rows for i in range(rg)) if f.meta is not None else 0

    def _fail(self, f: _File, rg: int, row: int, msg: str) -> InputError:
        unit = "row group" if f.kind == "parquet" else "record batch"
        pos = f"{unit} {rg}, row {row}"
        if f.kind == "parquet":
            pos += f" (file row {self._row_before(f, rg) + row})"
        return InputError(msg, path=f.path, position=pos)

    def _validate(self, f: _File, rg: int, col: pa.Array, dcol: pa.Array | None):
        V = self.vocab_size
        hi = V if V is not None else _INT32_MAX + 1
        if f.is_list:
            if col.null_count:
                row = _first(col.is_null().to_numpy(zero_copy_only=False))
                raise self._fail(f, rg, row, f"null document in column {f.column!r}")
            values = col.flatten()
            parents = None
            if values.null_count:
                parents = pc.list_parent_indices(col).to_numpy()
                i = _first(values.is_null().to_numpy(zero_copy_only=False))
                raise self._fail(f, rg, int(parents[i]), f"null token id in column {f.column!r}")
            a = values.to_numpy()
        else:
            if col.null_count:
                row = _first(col.is_null().to_numpy(zero_copy_only=False))
                raise self._fail(f, rg, row, f"null token id in column {f.column!r}")
            a = col.to_numpy()
        if a.size:
            bad = (a < 0) | (a >= hi) if a.dtype.kind == "i" else (a >= hi)
            if bad.any():
                i = _first(bad)
                row = int(pc.list_parent_indices(col).to_numpy()[i]) if f.is_list else i
                limit = f"[0, {V})" if V is not None else "[0, 2**31)"
                what = f"vocabulary size {V}" if V is not None else "int32"
                raise self._fail(f, rg, row, f"token id {int(a[i])} outside {limit} "
                                             f"({what}) in column {f.column!r}")
        ids = np.ascontiguousarray(a, dtype=np.int32)
        ds = None
        if f.is_list:
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            ds = np.zeros(len(ids), dtype=np.bool_)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]
            ds[starts] = True
        elif dcol is not None:
            if dcol.null_count:
                row = _first(dcol.is_null().to_numpy(zero_copy_only=False))
                raise self._fail(f, rg, row, f"null in column {f.doc_column!r}")
            ds = dcol.to_numpy(zero_copy_only=False).astype(np.bool_, copy=False)
        return ids, ds

    def block_of(self, pos: int) -> int:
        return int(np.searchsorted(self._starts, pos, side="right")) - 1

    # ---------------------------------------------------------- streaming --
    def iter_chunks(self, chunk_tokens: int, start: int = 0) -> Iterator[Chunk]:
        """Stream tokens ``start..num_tokens`` in chunks of at most ``chunk_tokens``.

        One block is in memory at a time; chunks never cross a block (row group)
        boundary, so they may be shorter than ``chunk_tokens``.
        """
        if chunk_tokens < 1:
            raise UsageError(f"chunk size must be at least 1, got {chunk_tokens}")
        if not 0 <= start <= self.num_tokens:
            raise UsageError(f"start {start} outside [0, {self.num_tokens}]")
        if start == self.num_tokens:
            return
        for b in range(self.block_of(start), self.num_blocks):
            ids, ds = self._load(b)
            lo = int(self._starts[b])
            source = os.path.basename(self.files[self._block_file[b]].path)
            off = max(start - lo, 0)
            while off < len(ids):
                end = min(off + chunk_tokens, len(ids))
                yield Chunk(ids[off:end], None if ds is None else ds[off:end], lo + off, source)
                off = end

    def cursor(self) -> Cursor:
        """A new random-access reader with its own one-block cache."""
        return Cursor(self)

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens ``[start, start+count)`` as a new int32 array (one cached block)."""
        return self._cursor.read(start, count)

    def read_doc_start(self, start: int, count: int) -> np.ndarray:
        return self._cursor.read(start, count, docs=True)


class Cursor:
    """Random access into a :class:`TokenDataset`, caching the last block read."""

    def __init__(self, dataset: TokenDataset):
        self.ds = dataset
        self._b = -1
        self._lo = self._hi = 0
        self._ids: np.ndarray | None = None
        self._docs: np.ndarray | None = None

    def _seek(self, pos: int) -> None:
        if not self._lo <= pos < self._hi:
            b = self.ds.block_of(pos)
            self._ids, self._docs = self.ds._load(b)
            self._b = b
            self._lo, self._hi = int(self.ds._starts[b]), int(self.ds._starts[b + 1])

    def read(self, start: int, count: int, out: np.ndarray | None = None,
             docs: bool = False) -> np.ndarray:
        """Tokens (or, with ``docs=True``, doc_start flags) ``[start, start+count)``."""
        if start < 0 or count < 0 or start + count > self.ds.num_tokens:
            raise IndexError(f"read [{start}, {start + count}) outside "
                             f"[0, {self.ds.num_tokens})")
        if docs and not self.ds.has_docs:
            raise UsageError("this dataset has no document boundaries")
        if out is None:
            out = np.empty(count, dtype=np.bool_ if docs else np.int32)
        pos, done = start, 0
        while done < count:
            self._seek(pos)
            n = min(count - done, self._hi - pos)
            src = self._docs if docs else self._ids
            out[done:done + n] = src[pos - self._lo:pos - self._lo + n]
            done += n
            pos += n
        return out


# ------------------------------------------------------------ open_dataset --
def _open_prepared(d: Path, vocab: Vocab | None, vocab_size: int | None,
                   verify: bool) -> TokenDataset:
    mpath = d / MANIFEST
    m = _read_manifest(mpath)
    try:
        shards = m["shards"]
        column = m.get("column", "token_id")
        docs = m.get("docs", "none")
        if not isinstance(shards, list):
            raise TypeError("shards is not a list")
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed manifest: {e!r}", path=mpath) from None
    dvocab, vpath = _manifest_vocab(d, m)
    differs = None if vocab is None else vocab_differs(vocab, dvocab)
    if differs:
        raise VocabularyMismatch(differs, path=vpath)
    if vocab_size is not None and vocab_size != len(dvocab):
        raise InputError(f"vocabulary size {vocab_size} differs from the dataset's "
                         f"{len(dvocab)}", path=vpath)
    files = []
    for s in shards:
        try:
            sp = _safe_name(d, s["file"], "shard", mpath)
            tokens, size = int(s["tokens"]), int(s["bytes"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"malformed shard entry: {e!r}", path=mpath) from None
        if not sp.is_file():
            raise InputError("shard listed in the manifest is missing", path=sp)
        f = _open_file(str(sp), column)
        if f.is_list:
            raise InputError(f"column {column!r} should be flat int32", path=sp)
        if sum(f.blocks) != tokens or sp.stat().st_size != size:
            raise InputError(f"shard has {sum(f.blocks)} tokens / {sp.stat().st_size} bytes, "
                             f"the manifest says {tokens} / {size} (replaced or incomplete "
                             f"file)", path=sp)
        if docs in ("blank-line", "rows") and f.doc_column is None:
            raise InputError(f"manifest says docs={docs} but the shard has no doc_start "
                             "column", path=sp)
        if verify and sha256_file(sp) != s.get("sha256"):
            raise InputError("shard sha256 differs from the manifest", path=sp)
        files.append(f)
    extra = json.dumps([s.get("sha256") for s in shards])
    ds = TokenDataset(files, vocab=dvocab, vocab_size=None, fingerprint_extra=extra,
                      name=str(d))
    if ds.num_tokens != m.get("num_tokens", ds.num_tokens):
        raise InputError(f"shards hold {ds.num_tokens} tokens, the manifest says "
                         f"{m.get('num_tokens')}", path=mpath)
    ds.manifest = m
    return ds


def _expand(paths: list[str]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            d = Path(p)
            if (d / MANIFEST).exists():
                raise UsageError(f"{p}: a prepared directory must be given on its own")
            if any(d.glob(SHARD_GLOB)) and (d / VOCAB_FILE).exists():
                raise InputError("looks like an incomplete `prepare` output (no "
                                 "manifest.json); re-run prepare", path=p)
            found = sorted(str(x) for x in d.iterdir()
                           if x.is_file() and x.suffix.lower() in TABLE_SUFFIXES
                           and not x.name.startswith("."))
            if not found:
                raise InputError(f"no {'/'.join(TABLE_SUFFIXES)} files in the directory", path=p)
            files.extend(found)
        elif not os.path.exists(p):
            raise InputError("no such file or directory", path=p)
        else:
            files.append(p)
    return files


def open_dataset(paths: Sequence[str | os.PathLike] | str | os.PathLike, *,
                 column: str = "token_id", vocab_size: int | None = None,
                 vocab: Vocab | None = None, verify: bool = False,
                 allow_empty: bool = False) -> TokenDataset:
    """Open a prepared directory, or Parquet / Arrow IPC files, as a :class:`TokenDataset`.

    * a single directory containing ``manifest.json``: the prepared dataset; its
      ``vocab.txt`` must match the manifest (and ``vocab``/``vocab_size`` if given);
      shard token counts and sizes are checked against the manifest (``verify=True``
      also checks every shard's sha256);
    * otherwise each path is a file (kept in the given order) or a directory (its
      ``*.parquet``/``*.arrow``/``*.feather``/``*.ipc`` files in sorted name order).

    Ids are bounded by ``len(vocab)`` or ``vocab_size``; with neither (raw files),
    only ``0 <= id < 2**31`` is checked, and the caller must pass the model's size
    before ids reach a kernel. Files with no tokens at all are an error (training
    needs tokens) unless ``allow_empty`` (scoring: 0 tokens, like empty text).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise UsageError("no dataset paths given")
    if vocab is not None and vocab_size is not None and vocab_size != len(vocab):
        raise UsageError(f"vocab_size {vocab_size} != len(vocab) {len(vocab)}")
    if len(paths) == 1 and os.path.isdir(paths[0]) and (Path(paths[0]) / MANIFEST).exists():
        return _open_prepared(Path(paths[0]), vocab, vocab_size, verify)
    files = [_open_file(p, column) for p in _expand(paths)]
    return TokenDataset(files, vocab=vocab, vocab_size=vocab_size,
                        name=", ".join(paths), allow_empty=allow_empty)
