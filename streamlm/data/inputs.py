"""What an input is, decided in one place, and the blocks of token ids it yields.

An input path is one of:

* text: a file (plain, ``.gz``, ``.bz2``, ``.xz``, by magic bytes), stdin
  (``"-"``) or a pipe such as ``<(cmd)`` (read once, never sniffed);
* token shards: a directory made by ``streamlm prepare``, a directory of
  Parquet / Arrow files, or one such file (by suffix or magic bytes).

:func:`open_source` returns a :class:`Source` whose :meth:`~Source.blocks`
yields :class:`~streamlm.data.tokenizer.Block` s: ids with the line and document
index of each token, the same for every kind of input. Text is tokenised by
:mod:`streamlm.data.tokenizer`; in shards a line ends at each ``<eos>`` and a
document at each ``doc_start`` (or ``list<int>`` row).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from streamlm.data.formats import (
    MANIFEST,
    compression,
    fingerprint,
    has_table_suffix,
    is_jsonl_name,
    is_prepared_dir,
    is_stream,
    is_table_input,
)
from streamlm.data.text import (
    Meter,
    Pieces,
    display_name,
    file_size,
    iter_pieces,
    open_binary,
    preread,
)
from streamlm.data.tokenizer import BLOCK_TOKENS, Block, Tally, encode, id_counts
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError, VocabularyMismatch

STREAM_PREREAD = 1 << 16  # bytes of a stream read ahead to judge its size (engine auto)


class RowCounts(Protocol):
    """Where a source of rows (:class:`DocSource`) notes its rows once it has read them
    all: in a scoring job the input's :class:`~streamlm.jobs.records.Totals`, their owner."""

    rows: int  # the rows of the input
    skipped: list[int]  # the numbers of the rows skipped as bad (errors="skip")
    why: str | None  # where the first of them is and what is wrong with it


def check_readable(path: str | os.PathLike) -> None:
    """Raise InputError now if the text input ``path`` cannot be opened. A stream
    (see is_stream) is only checked for permission: opening it would consume it."""
    if not is_stream(path):
        open_binary(path).close()
    elif os.fspath(path) != "-" and not os.access(path, os.R_OK):
        raise InputError("cannot open: permission denied", path=display_name(path))


class Source:
    """One input of a job: its position ``index`` among the inputs, its path, and
    the name errors and summaries give it."""

    kind = "?"

    def __init__(self, index: int, path: str, name: str | None = None):
        self.index = index
        self.path = os.fspath(path)
        self.name = name or display_name(self.path)
        self.meter = Meter()  # how far blocks() has read (see progress())
        self.size = file_size(self.path)  # bytes on disk (None: a stream)
        self.tally: Tally | None = None  # what blocks() noted of the text (see unk_literal)
        # token id files with no vocabulary beside them to check against the model's
        # (streamlm.data.manifest.check_id_files): (file, why), for one warning of the job
        self.unchecked: list[tuple[str, str]] = []

    def progress(self, scored: int | None = None) -> tuple[float, float] | None:
        """(the share of the input read and handed out, weight: its bytes on disk), or
        None when its size is unknown. With ``scored`` (its tokens scored), the share
        scored: reading runs ahead of scoring (a reader thread, whole blocks), so it
        is where the tokens handed out end (``mark``: (tokens, position)) times the
        part of them scored (as many bytes a token in each)."""
        f = self.meter.fraction()
        if f is None or self.size is None:
            return None
        if scored is not None:
            tokens, at = self.meter.mark  # (one tuple: set at once by the reader)
            f = min(1.0, at / self.meter.total * min(1.0, scored / tokens)) if tokens else 0.0
        return f, float(self.size)

    def blocks(self, counts: RowCounts | None = None) -> Iterator[Block]:
        """Blocks of about BLOCK_TOKENS tokens, in order, from the input's start;
        a source of rows notes them in ``counts`` once it has read every row."""
        raise NotImplementedError

    @property
    def unk_literal(self) -> int | None:
        """The words that are a literal ``<unk>`` in the text :meth:`blocks` read (OOVs
        that are not words the model lacks); None when not counted: token ids cannot
        tell, and subword pieces do not map it to ``<unk>``."""
        return None if self.tally is None else self.tally.unk

    def _tally(self, vocab) -> Tally:
        """A new tally for blocks(); literal ``<unk>`` words counted with a word vocabulary."""
        words = getattr(vocab, "tokenizer", None) == "word"
        self.tally = Tally(0 if words else None)
        return self.tally

    def metered_blocks(self, counts: RowCounts | None = None) -> Iterator[Block]:
        """:meth:`blocks`, each noted on the meter as it is handed out (``mark``)."""
        m = self.meter
        for b in self.blocks(counts):
            m.mark = (b.pos + len(b), self._reached())
            yield b

    def _reached(self) -> float:
        """Where in the input (the meter's unit) the blocks handed out end, about."""
        return self.meter.done

    def fingerprint(self) -> dict:
        return fingerprint(self.path)

    def estimate_tokens(self) -> float:
        """A rough upper estimate of the input's tokens (inf when unknown)."""
        raise NotImplementedError


class TextSource(Source):
    """Text, tokenised by :mod:`streamlm.data.tokenizer` (documents at blank lines)."""

    kind = "text"

    def __init__(self, index: int, path: str, vocab: Vocab | None, *, docs: bool,
                 errors: str = "strict", name: str | None = None):
        super().__init__(index, path, name)
        self.vocab = vocab
        self.docs = docs
        self.errors = str(errors)
        check_readable(self.path)  # missing / unreadable: fail before any work

        self.meter.total = self.size
        self.plain = False  # not compressed: offsets in the text are offsets in the file

    def pieces(self, meter: Meter | None = None) -> Pieces:
        return iter_pieces(self.path, self.errors, meter=meter)

    def blocks(self, counts: RowCounts | None = None) -> Iterator[Block]:
        if self.size is not None:  # the tally's offsets are the file's own when not packed
            with open(self.path, "rb") as f:
                self.plain = compression(f.read(8)) is None
        return encode(self.pieces(self.meter), self.vocab, docs=self.docs, index=self.index,
                      tally=self._tally(self.vocab))

    def _reached(self) -> float:
        t = self.tally
        return t.at if t is not None and self.plain else self.meter.done

    def surface_words(self) -> Iterator[str]:
        """The text's own words (pieces: their surface), one per token (``<eos>`` ends a
        line), by a second read."""
        from streamlm.data.vocab import EOS

        line_has = False
        for piece in self.pieces():
            yield from self.vocab.surface_tokens(piece.words)
            line_has = line_has or bool(piece.words)
            if piece.last:
                if line_has or not self.docs:
                    yield EOS
                line_has = False

    def estimate_tokens(self) -> float:
        if is_stream(self.path):  # read ahead a little: a small stream starts fast too
            head, ended = preread(self.path, STREAM_PREREAD)
            if not ended:
                return math.inf
            return len(head) * (3.0 if compression(head[:8]) is not None else 0.5)
        with open(self.path, "rb") as f:
            packed = compression(f.read(8)) is not None
        return os.path.getsize(self.path) * (3.0 if packed else 0.5)  # >= 2 bytes a token


class ShardSource(Source):
    """Token shards: a prepared directory, or Parquet / Arrow files of ids. Their
    vocabulary is checked against ``vocab`` (``owner``'s: "the model m.npz"): a
    prepared directory's own, and for files the one beside them (``unchecked``
    lists the files with none)."""

    kind = "shards"

    def __init__(self, index: int, path: str, vocab: Vocab, *, docs: bool,
                 column: str = "token_id", owner: str = "the model"):
        super().__init__(index, path)
        # pyarrow: only when shards are read
        from streamlm.data.manifest import check_id_files, vocab_differs
        from streamlm.data.shards import open_dataset

        self.vocab = vocab
        self.docs = docs
        p = self.path
        if is_prepared_dir(p):
            ds = open_dataset(p)
            differs = vocab_differs(vocab, ds.vocab, f"{owner}'s vocabulary",
                                    os.path.join(p, MANIFEST))
            if differs:
                raise VocabularyMismatch(differs, path=p)
        else:  # 0 tokens scores like empty text
            ds = open_dataset(p, column=column, vocab_size=len(vocab), allow_empty=True)
            self.unchecked = check_id_files([f.path for f in ds.files], vocab, owner)
        self.size = 2 * ds.num_tokens  # weight for progress: about 2 bytes a token
        self.meter.total = ds.num_tokens
        if docs and not ds.has_docs:
            raise UsageError(f"{p}: no document boundaries in these shards (no doc_start "
                             "column or list<int> rows); use --reset none|line and a level "
                             "other than doc")
        self.dataset = ds

    def blocks(self, counts: RowCounts | None = None) -> Iterator[Block]:
        eos = self.vocab.eos_id
        lines = 0
        docs = -1
        first = True
        prev = -1
        for ch in self.dataset.iter_chunks(BLOCK_TOKENS):
            ids = ch.ids
            is_eos = ids == eos
            cs = np.cumsum(is_eos, dtype=np.int64)
            line = lines + cs - is_eos
            lines += int(cs[-1])
            doc = None
            if self.docs:
                ds = ch.doc_start.copy()
                if first:
                    ds[0] = True
                dcs = np.cumsum(ds, dtype=np.int64)
                doc = docs + dcs
                docs += int(dcs[-1])
            first = False
            self.meter.done = ch.start + len(ids)
            words, nbytes = id_counts(self.vocab, ids, prev)
            prev = int(ids[-1])
            yield Block(self.index, ch.start, ids, line, doc, words, nbytes)

    def estimate_tokens(self) -> float:
        return float(self.dataset.num_tokens)


class DocSource(Source):
    """Documents as rows (streamlm.data.rows): JSONL records, or a string column of a
    Parquet / Arrow file. Every row is a document; ``doc`` of a token is its row's
    number, and a document's lines each contribute their words plus ``<eos>``.

    Once :meth:`blocks` has read every row, its ``counts`` (:class:`RowCounts`: in a
    scoring job the input's Totals) hold the number of rows, the rows skipped as bad
    (``errors="skip"``) and why the first of them was.
    """

    kind = "docs"

    def __init__(self, index: int, path: str, vocab: Vocab, *, fmt: str, text: str,
                 errors: str = "strict", owner: str = "--vocab"):
        super().__init__(index, path)
        self.vocab = vocab
        self.fmt = fmt  # "jsonl" | "table" | "ids" (list<int>: checked as ShardSource's)
        self.text = text
        self.errors = str(errors)
        self.docs = True
        if fmt == "jsonl":
            check_readable(self.path)
            self.meter.total = self.size
        else:
            from streamlm.data import rows

            if fmt == "table":
                self._check_column()  # a missing or non-string column fails here, first
            self.meter.total = rows.table_rows(self.path)
            if fmt == "ids":
                from streamlm.data.manifest import check_id_files

                self.unchecked = check_id_files([self.path], vocab, owner)

    def _check_column(self) -> None:
        import pyarrow as pa

        from streamlm.data import rows

        _, schema = rows.table_schema(self.path)
        if self.text not in schema.names:
            raise InputError(f"no column {self.text!r}; columns: {', '.join(schema.names)}; "
                             "use --text-column (text) or --column (token ids)", path=self.path)
        t = schema.field(self.text).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(f"column {self.text!r} has type {t}, not a string",
                             path=self.path)

    def batches(self, meter: Meter | None = None):
        """The row batches of streamlm.data.rows, from the first row."""
        from streamlm.data import rows

        if self.fmt == "jsonl":
            return rows.jsonl_batches(self.path, self.text, self.errors, meter=meter)
        if self.fmt == "ids":
            return rows.table_id_batches(self.path, self.text, len(self.vocab), self.errors,
                                         meter=meter)
        return rows.table_batches(self.path, self.text, self.errors, meter=meter)

    def blocks(self, counts: RowCounts | None = None) -> Iterator[Block]:
        from streamlm.data.tokenizer import encode_rows

        pos = line = 0
        skipped: list[int] = []
        why = None
        last = -1
        tally = self._tally(self.vocab if self.fmt != "ids" else None)
        for batch in self.batches(self.meter):
            skipped.extend(batch.skipped)
            why = why or batch.why
            if len(batch.rows):
                last = int(batch.rows[-1])
            if batch.ids is not None:  # ids as they are: a row is a document and a line
                doc = np.repeat(batch.rows, batch.lengths)
                blk = Block(self.index, pos, batch.ids, doc, doc,
                            *id_counts(self.vocab, batch.ids, -1))
            else:
                blk, _, n_lines = encode_rows(batch.texts, batch.rows, self.vocab,
                                              index=self.index, pos=pos, line0=line,
                                              tally=tally)
                line += n_lines
            if len(blk):
                pos += len(blk)
                yield blk
        if counts is not None:  # (a reader thread's: three assignments, after its last block)
            counts.rows = max([last, *skipped], default=-1) + 1
            counts.skipped, counts.why = skipped, why

    def surface_words(self) -> Iterator[str]:
        """The documents' own words, one per token (ids: their vocabulary words)."""
        from streamlm.data.vocab import EOS

        for batch in self.batches():
            if batch.ids is not None:
                yield from self.vocab.decode(batch.ids)
                continue
            for text in batch.texts.to_pylist():
                for line in text.split("\n"):
                    words = line.split()
                    if words:
                        yield from self.vocab.surface_tokens(words)
                        yield EOS

    def estimate_tokens(self) -> float:
        if is_stream(self.path):
            return math.inf
        return os.path.getsize(self.path) * (3.0 if self.fmt == "table" else 0.5)


def text_column_of(path: str, text_column: str | None, column: str | None) -> str | None:
    """The text column of a Parquet / Arrow file, or None when it holds token ids: an
    explicit ``--text-column`` or ``--column`` decides; else a ``token_id`` column
    means ids, a string ``text`` column text, and an ``input_ids`` column ids."""
    import pyarrow as pa

    from streamlm.data import rows

    if text_column is not None:
        return text_column
    if column is not None:
        return None
    _, schema = rows.table_schema(path)
    if "token_id" in schema.names or "text" not in schema.names:
        return None
    t = schema.field("text").type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    # a "text" column that is not a string: documents of ids if there is an id list,
    # else the text column it looks meant to be (DocSource then names its type)
    return None if "input_ids" in schema.names else "text"


def open_source(index: int, path: str | os.PathLike, vocab: Vocab, *, docs: bool,
                errors: str = "strict", column: str | None = None,
                text_column: str | None = None, text_field: str = "text",
                owner: str = "the model") -> Source:
    """The :class:`Source` for ``path``, checked now (missing, unreadable, bad shards,
    a bad column, a vocabulary that does not match ``vocab``, ``owner``'s) so that a
    job fails first. Token ids with no vocabulary beside them to check are in the
    source's ``unchecked`` (for :func:`streamlm.data.manifest.warn_unchecked`).

    JSONL by name (``.jsonl``, ``.ndjson``, ``.json``, compressed too) is always
    parsed as JSON; a Parquet / Arrow file is documents when it has a text column
    (see :func:`text_column_of`) or a ``list<int>`` id column, token shards
    otherwise (``--column``: ``token_id``, else ``input_ids``); anything else is text.
    """
    p = os.fspath(path)
    src = open_documents(index, p, vocab, errors=errors, column=column,
                         text_column=text_column, text_field=text_field, owner=owner)
    if src is not None:
        return src
    if is_table_input(p):
        return ShardSource(index, p, vocab, docs=docs, column=column or _id_column(p),
                           owner=owner)
    return TextSource(index, p, vocab, docs=docs, errors=text_errors(errors))


def text_errors(errors: str) -> str:
    """The ``errors`` of a text input: ``skip`` (bad rows of documents) is strict there."""
    return "strict" if str(errors) == "skip" else str(errors)


def open_documents(index: int, path: str, vocab: Vocab | None, *, errors: str = "strict",
                   column: str | None = None, text_column: str | None = None,
                   text_field: str = "text", owner: str = "--vocab"
                   ) -> DocSource | None:
    """A :class:`DocSource` when ``path`` is a file of documents (JSONL; Parquet / Arrow
    with a text or ``list<int>`` column: its ids checked against ``vocab``, ``owner``'s,
    as ShardSource's are), else None."""
    p = os.fspath(path)
    if is_stream(p):
        return None
    if is_jsonl_name(p):
        return DocSource(index, p, vocab, fmt="jsonl", text=text_field, errors=errors)
    if os.path.isfile(p) and is_table_input(p):
        text = text_column_of(p, text_column, column)
        if text is not None:
            return DocSource(index, p, vocab, fmt="table", text=text, errors=errors)
        col = column or _id_column(p)
        if _is_list_column(p, col):  # a tokenised dataset: a row is a document
            if vocab is None:
                raise UsageError(f"{p}: column {col!r} holds token ids; give the vocabulary "
                                 "they index (--vocab)")
            return DocSource(index, p, vocab, fmt="ids", text=col, errors=errors,
                             owner=owner)
    return None


def _is_list_column(path: str, column: str) -> bool:
    import pyarrow as pa

    from streamlm.data import rows

    schema = rows.table_schema(path)[1]
    if column not in schema.names:
        return False
    t = schema.field(column).type
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _id_column(path: str) -> str:
    """``token_id``, or ``input_ids`` for a file that has that and no ``token_id``."""
    if os.path.isfile(path):
        from streamlm.data import rows

        names = rows.table_schema(path)[1].names
        if "token_id" not in names and "input_ids" in names:
            return "input_ids"
    return "token_id"


def expand_inputs(paths: list[str], *, column: str | None = None,
                  text_column: str | None = None) -> list[str]:
    """The inputs of a job, each path as given, but: a quoted glob (``'docs/*.jsonl'``,
    which the shell did not expand) becomes its matches, and a directory of document
    files (JSONL, or Parquet / Arrow with a text or ``list<int>`` column) becomes its
    files; both in sorted order, so that the order is explicit and the same every
    time. A directory of token shards stays one input, as a dataset."""
    import glob

    out: list[str] = []
    for p in paths:
        if p != "-" and not os.path.exists(p) and glob.has_magic(p):
            found = sorted(glob.glob(p))
            if not found:
                raise UsageError(f"{p}: no file matches this pattern")
            for q in found:
                out.extend(_document_files(q, column, text_column) if os.path.isdir(q)
                           else [q])
        elif os.path.isdir(p) and not is_prepared_dir(p):
            out.extend(_document_files(p, column, text_column))
        else:
            out.append(p)
    return out


def _document_files(d: str, column: str | None, text_column: str | None) -> list[str]:
    """The files of directory ``d`` when they are documents, else ``[d]`` (shards)."""
    files = sorted(os.path.join(d, n) for n in os.listdir(d)
                   if not n.startswith(".") and os.path.isfile(os.path.join(d, n)))
    jsonl = [f for f in files if is_jsonl_name(f)]
    if jsonl:
        return jsonl
    tables = [f for f in files if has_table_suffix(f)]
    if tables and text_column_of(tables[0], text_column, column) is not None:
        return tables
    if tables and _is_list_column(tables[0], column or _id_column(tables[0])):
        return tables
    return [d]
