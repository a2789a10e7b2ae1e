"""Token shards: ``prepare`` text into Parquet shards, read shards back lazily, batch them.

Prepared directory layout (format version 1)
--------------------------------------------
``vocab.txt``            one word per line, id order (see :mod:`streamlm.vocab`)
``shard-00000.parquet``  column ``token_id`` (int32, no nulls), row groups of
                         ``row_group_tokens`` (65,536) tokens; with ``docs="blank-line"``
                         also a column ``doc_start`` (bool, True on a document's first
                         token). Shards are plain consecutive slices of the one token
                         stream; every input file starts a new document.
``manifest.json``        written last; a directory without it is not a dataset.

``prepare`` writes everything into a hidden staging directory inside ``out_dir``,
then removes any old ``manifest.json``, moves the files in, deletes stale shards
and finally writes the new manifest atomically. On any error the staging
directory is removed, so an interrupted run leaves no manifest (and an old
dataset in the same directory stops being accepted once its manifest is gone).

Reading (:func:`open_dataset`) accepts a prepared directory, or Parquet / Arrow IPC
(Feather v2) files whose column is integers or ``list<integer>`` (one document per
row). Every block (row group / record batch) is validated (nulls, ids in
``[0, V)``) before it is handed out: numba kernels do no bounds checking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import ipc

from streamlm import __version__
from streamlm.atomic import atomic_open, atomic_path, sha256_file, umask
from streamlm.errors import InputError, UsageError
from streamlm.text import (
    DOCS_MODES,
    ERRORS_MODES,
    check_readable,
    display_name,
    encode_lines,
    is_stream,
    iter_pieces,
)
from streamlm.vocab import Vocab

log = logging.getLogger("streamlm.data")

FORMAT = "streamlm-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB_FILE = "vocab.txt"
ROW_GROUP_TOKENS = 1 << 16
DATA_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
_INT32_MAX = np.iinfo(np.int32).max
_LOG_EVERY_S = 5.0


# ================================================================ prepare ==
class _ShardWriter:
    """Cuts one token stream into shards of ``shard_tokens`` and row groups."""

    def __init__(self, out_dir: Path, shard_tokens: int, row_group_tokens: int, docs: bool):
        self.out_dir = out_dir
        self.shard_tokens = shard_tokens
        self.rg = min(row_group_tokens, shard_tokens)
        self.docs = docs
        fields = [pa.field("token_id", pa.int32(), nullable=False)]
        if docs:
            fields.append(pa.field("doc_start", pa.bool_(), nullable=False))
        self.schema = pa.schema(fields)
        self.shards: list[dict] = []
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._in_shard = 0  # tokens written or buffered in the open shard
        self._buf: list[np.ndarray] = []
        self._dbuf: list[np.ndarray] = []
        self._nbuf = 0
        self.tokens = 0
        self.documents = 0

    def _open(self) -> None:
        name = f"shard-{len(self.shards):05d}.parquet"
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.out_dir / name))
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="snappy")
        self._name = name
        self._in_shard = 0

    def _flush(self) -> None:
        if not self._nbuf:
            return
        ids = np.concatenate(self._buf)
        cols = [pa.array(ids, type=pa.int32())]
        if self.docs:
            cols.append(pa.array(np.concatenate(self._dbuf), type=pa.bool_()))
        table = pa.Table.from_arrays(cols, schema=self.schema)
        self._writer.write_table(table, row_group_size=self.rg)
        self._buf, self._dbuf, self._nbuf = [], [], 0

    def _close_shard(self) -> None:
        self._flush()
        self._writer.close()
        self._writer = None
        size = os.path.getsize(self._tmp)
        sha = sha256_file(self._tmp)
        self._stack.close()  # fsync + rename into place
        self._stack = None
        self.shards.append({"file": self._name, "tokens": self._in_shard,
                            "bytes": size, "sha256": sha})
        log.info("wrote %s: %s tokens", self._name, f"{self._in_shard:,}")

    def add(self, ids: np.ndarray, doc_start: np.ndarray | None) -> None:
        pos = 0
        n = len(ids)
        while pos < n:
            if self._writer is None:
                self._open()
            take = min(n - pos, self.shard_tokens - self._in_shard, self.rg - self._nbuf)
            self._buf.append(ids[pos:pos + take])
            if self.docs:
                self._dbuf.append(doc_start[pos:pos + take])
            self._nbuf += take
            self._in_shard += take
            pos += take
            if self._nbuf == self.rg:
                self._flush()
            if self._in_shard == self.shard_tokens:
                self._close_shard()
        self.tokens += n
        if doc_start is not None:
            self.documents += int(np.count_nonzero(doc_start))

    def finish(self) -> list[dict]:
        if self._writer is not None:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._stack is not None:
            with contextlib.suppress(BaseException):
                self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _counted(pieces, counter: list[int]):
    for p in pieces:
        counter[0] += p.last
        yield p


def prepare(inputs: Sequence[str], out_dir: str | os.PathLike, *, vocab_size: int | None = None,
            min_count: int = 1, vocab_path: str | os.PathLike | None = None,
            shard_tokens: int = 1_000_000, docs: str = "none", errors: str = "strict",
            progress: Callable[[dict], None] | None = None,
            row_group_tokens: int = ROW_GROUP_TOKENS) -> dict:
    """Turn text ``inputs`` into ``out_dir`` (vocab.txt, shards, manifest); return the manifest.

    Pass 1 counts words (only when building the vocabulary), pass 2 encodes. Stdin
    (``"-"``, at most once) is spooled to a temp file inside ``out_dir`` when the
    vocabulary must be built from it (two passes), else streamed once. Memory is
    bounded by the vocabulary (the word counter), one row group and a few 1 MiB
    text blocks; it does not grow with the corpus. ``progress``, if given, is
    called with small dicts (``{"event": ...}``) as work proceeds; the same
    information is logged on logger ``streamlm.data``.
    """
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("no input files")
    if docs not in DOCS_MODES:
        raise UsageError(f"--docs must be one of {', '.join(DOCS_MODES)}, got {docs!r}")
    if errors not in ERRORS_MODES:
        raise UsageError(f"--errors must be one of {', '.join(ERRORS_MODES)}, got {errors!r}")
    if vocab_path is not None and (vocab_size is not None or min_count != 1):
        raise UsageError("--vocab cannot be combined with --vocab-size or --min-count")
    if shard_tokens < 1 or row_group_tokens < 1:
        raise UsageError("--shard-tokens must be at least 1")
    if inputs.count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    for p in inputs:  # fail on missing/unreadable inputs before creating anything
        check_readable(p)
    vocab = Vocab.load(vocab_path) if vocab_path is not None else None

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: output exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    writer: _ShardWriter | None = None

    def report(event: str, **kw) -> None:
        if progress is not None:
            progress({"event": event, **kw})

    try:
        sources = list(inputs)
        if vocab is None:  # stdin and pipes can be read once: spool them for two passes
            for k, p in enumerate(inputs):
                if not is_stream(p):
                    continue
                spool = staging / f"stream{k}.spool"
                log.info("spooling %s to %s (the vocabulary needs two passes)",
                         display_name(p), spool)
                with open(spool, "wb") as f:
                    if p == "-":
                        shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
                    else:
                        with open(p, "rb") as src:
                            shutil.copyfileobj(src, f, 1 << 20)
                sources[k] = str(spool)

        if vocab is None:
            counts: Counter = Counter()
            for name, src in zip(inputs, sources):
                log.info("counting words in %s", display_name(name))
                report("count", source=name)
                t0 = time.monotonic()
                lines = 0
                for piece in iter_pieces(src, errors):
                    counts.update(piece.words)
                    lines += piece.last
                    if piece.last and not lines % 4096 and time.monotonic() - t0 > _LOG_EVERY_S:
                        t0 = time.monotonic()
                        log.info("  %s: %s lines, %s distinct words", display_name(name),
                                 f"{lines:,}", f"{len(counts):,}")
            vocab = Vocab.build(counts, vocab_size=vocab_size, min_count=min_count)
            del counts
            log.info("vocabulary: %s words", f"{len(vocab):,}")
        vocab.save(staging / VOCAB_FILE)

        writer = _ShardWriter(staging, shard_tokens, row_group_tokens, docs == "blank-line")
        src_info = []
        unk_tokens = 0
        for name, src in zip(inputs, sources):
            log.info("encoding %s", display_name(name))
            report("encode", source=name)
            before = writer.tokens
            nlines = [0]
            pieces = _counted(iter_pieces(src, errors), nlines)
            for ids, ds in encode_lines(pieces, vocab, docs, chunk_tokens=ROW_GROUP_TOKENS):
                unk_tokens += int(np.count_nonzero(ids == vocab.unk_id))
                writer.add(ids, ds)
                report("tokens", source=name, tokens=writer.tokens)
            src_info.append({"path": display_name(name), "lines": nlines[0],
                             "tokens": writer.tokens - before})
        shards = writer.finish()
        if writer.tokens == 0:
            raise InputError("no tokens: the input is empty", path=", ".join(
                display_name(p) for p in inputs))

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"streamlm {__version__}",
            "column": "token_id",
            "docs": docs,
            "errors": errors,
            "num_tokens": writer.tokens,
            "num_documents": writer.documents if docs == "blank-line" else None,
            "unk_tokens": unk_tokens,
            "row_group_tokens": min(row_group_tokens, shard_tokens),
            "vocab": {"file": VOCAB_FILE, "size": len(vocab), "sha256": vocab.sha256()},
            "sources": src_info,
            "shards": shards,
        }
        # publish: old manifest first (invalidates an old dataset), files, manifest last
        with contextlib.suppress(FileNotFoundError):
            (out / MANIFEST).unlink()
        new_names = {VOCAB_FILE} | {s["file"] for s in shards}
        mode = 0o666 & ~umask()
        for name in sorted(new_names):
            os.chmod(staging / name, mode)
            os.replace(staging / name, out / name)
        for old in out.glob("shard-*.parquet"):
            if old.name not in new_names:
                old.unlink()
        with atomic_open(out / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
            os.chmod(f.name, mode)
        report("done", tokens=writer.tokens)
        return manifest
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds if we made it and it stayed empty


# ================================================================= reader ==
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
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1"):
        return "ipc"
    if head.startswith(b"\xff\xff\xff\xff"):
        raise InputError("Arrow IPC *stream* format is not supported; write the IPC file "
                         "(Feather v2) format", path=path)
    if head.startswith(b"FEA1"):
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
def _safe_name(d: Path, name: object, what: str, manifest: Path) -> Path:
    if (not isinstance(name, str) or not name or name != os.path.basename(name)
            or name in (".", "..") or "/" in name or "\\" in name):
        raise InputError(f"{what} {name!r} is not a plain file name inside the directory",
                         path=manifest)
    p = d / name
    if p.resolve().parent != d.resolve():
        raise InputError(f"{what} {name!r} escapes the directory", path=manifest)
    return p


def _open_prepared(d: Path, vocab: Vocab | None, vocab_size: int | None,
                   verify: bool) -> TokenDataset:
    mpath = d / MANIFEST
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(m, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"unreadable manifest: {e}", path=mpath) from None
    if m.get("format") != FORMAT:
        raise InputError(f"not a streamlm shard manifest (format {m.get('format')!r})",
                         path=mpath)
    if m.get("format_version") != FORMAT_VERSION:
        raise InputError(f"unsupported format version {m.get('format_version')!r} "
                         f"(this streamlm reads {FORMAT_VERSION})", path=mpath)
    try:
        vinfo = m["vocab"]
        shards = m["shards"]
        column = m.get("column", "token_id")
        docs = m.get("docs", "none")
        vpath = _safe_name(d, vinfo["file"], "vocab file", mpath)
        want_sha, want_size = vinfo["sha256"], int(vinfo["size"])
        if not isinstance(shards, list):
            raise TypeError("shards is not a list")
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed manifest: {e!r}", path=mpath) from None
    dvocab = Vocab.load(vpath)
    if dvocab.sha256() != want_sha or len(dvocab) != want_size:
        raise InputError(f"vocabulary does not match the manifest ({len(dvocab)} words, sha256 "
                         f"{dvocab.sha256()[:12]}…; manifest says {want_size} words, "
                         f"{str(want_sha)[:12]}…)", path=vpath)
    if vocab is not None and vocab.sha256() != dvocab.sha256():
        raise InputError(f"the given vocabulary ({len(vocab)} words, sha256 "
                         f"{vocab.sha256()[:12]}…) differs from the dataset's ({len(dvocab)} "
                         f"words, {dvocab.sha256()[:12]}…)", path=vpath)
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
        if docs == "blank-line" and f.doc_column is None:
            raise InputError("manifest says docs=blank-line but the shard has no doc_start "
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
            if any(d.glob("shard-*.parquet")) and (d / VOCAB_FILE).exists():
                raise InputError("looks like an incomplete `prepare` output (no "
                                 "manifest.json); re-run prepare", path=p)
            found = sorted(str(x) for x in d.iterdir()
                           if x.is_file() and x.suffix.lower() in DATA_SUFFIXES
                           and not x.name.startswith("."))
            if not found:
                raise InputError(f"no {'/'.join(DATA_SUFFIXES)} files in the directory", path=p)
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


# ================================================================ batcher ==
class Batcher:
    """Truncated-BPTT mini-batches, exactly as deep-learning-from-scratch-2 ch05.

    With ``L`` tokens, ``L' = L - 1`` and ``jump = L' // N``, row ``i`` reads
    ``xs[i, t] = corpus[(i*jump + time_idx) % L']`` and
    ``ts[i, t] = corpus[(i*jump + time_idx) % L' + 1]``, ``time_idx`` growing by one
    per ``t`` and never reset between epochs. ``iters_per_epoch = L' // (N*T)``.
    Each row has its own :class:`Cursor`, so memory is N blocks, whatever the
    dataset size. ``doc_start`` (read-only, aligned with ``xs``) is set by each
    :meth:`next_batch` when the dataset has documents.
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, bptt: int):
        if batch_size < 1 or bptt < 1:
            raise UsageError(f"batch size and bptt must be >= 1, got {batch_size}, {bptt}")
        self.dataset = dataset
        self.N, self.T = int(batch_size), int(bptt)
        self.L = dataset.num_tokens
        self.data_size = self.L - 1
        self.iters_per_epoch = self.data_size // (self.N * self.T)
        if self.iters_per_epoch < 1:
            raise InputError(f"dataset has {self.L:,} tokens; batch size {self.N} x bptt "
                             f"{self.T} needs at least {self.N * self.T + 1:,}")
        self.jump = self.data_size // self.N
        self.offsets = [i * self.jump for i in range(self.N)]
        self.time_idx = 0
        self._cursors = [dataset.cursor() for _ in range(self.N)]
        self.doc_start: np.ndarray | None = None

    @property
    def batches_done(self) -> int:
        return self.time_idx // self.T

    @property
    def epoch(self) -> float:
        return self.batches_done / self.iters_per_epoch

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """``(xs, ts)``: int32 ``(N, T)`` C-contiguous; advances ``time_idx`` by T."""
        N, T, Lp = self.N, self.T, self.data_size
        docs = self.dataset.has_docs
        xs = np.empty((N, T), dtype=np.int32)
        ts = np.empty((N, T), dtype=np.int32)
        dsb = np.empty((N, T), dtype=np.bool_) if docs else None
        buf = np.empty(T + 1, dtype=np.int32)
        for i, cur in enumerate(self._cursors):
            p = (self.offsets[i] + self.time_idx) % Lp
            t = 0
            while t < T:  # at most two runs: up to the wrap at L', then from 0
                n = min(T - t, Lp - p)
                cur.read(p, n + 1, out=buf[:n + 1])
                xs[i, t:t + n] = buf[:n]
                ts[i, t:t + n] = buf[1:n + 1]
                if docs:
                    cur.read(p, n, out=dsb[i, t:t + n], docs=True)
                t += n
                p = 0
        self.time_idx += T
        if docs:
            dsb.flags.writeable = False
        self.doc_start = dsb
        return xs, ts

    def __iter__(self):
        """One epoch: ``iters_per_epoch`` batches from the current position."""
        for _ in range(self.iters_per_epoch):
            yield self.next_batch()

    def state(self) -> dict:
        return {"time_idx": self.time_idx, "batch_size": self.N, "bptt": self.T,
                "num_tokens": self.L, "fingerprint": self.dataset.fingerprint}

    def restore(self, state: dict) -> None:
        want = {"batch_size": self.N, "bptt": self.T, "num_tokens": self.L,
                "fingerprint": self.dataset.fingerprint}
        for k, v in want.items():
            if state.get(k) != v:
                raise UsageError(f"cannot resume: saved batcher {k} {state.get(k)!r} differs "
                                 f"from the current {v!r}")
        t = state.get("time_idx")
        if not isinstance(t, int) or t < 0:
            raise UsageError(f"cannot resume: bad time_idx {t!r}")
        self.time_idx = t
