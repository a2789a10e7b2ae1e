"""What an input is, decided in one place, and the blocks of token ids it yields.

An input path is one of:

* text: a file (plain, ``.gz``, ``.bz2``, ``.xz``, by magic bytes), stdin
  (``"-"``) or a pipe such as ``<(cmd)`` (read once, never sniffed);
* token shards: a directory made by ``streamlm prepare``, a directory of
  Parquet / Arrow files, or one such file (by suffix or magic bytes).

:func:`open_source` returns a :class:`Source` whose :meth:`~Source.blocks`
yields :class:`~streamlm.tokenizer.Block` s: ids with the line and document
index of each token, the same for every kind of input. Text is tokenised by
:mod:`streamlm.tokenizer`; in shards a line ends at each ``<eos>`` and a
document at each ``doc_start`` (or ``list<int>`` row).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator

import numpy as np

from streamlm.errors import InputError, UsageError
from streamlm.formats import (
    MANIFEST,
    compression,
    has_table_suffix,
    is_prepared_dir,
    table_kind,
)
from streamlm.text import Pieces, display_name, iter_pieces, open_binary
from streamlm.tokenizer import BLOCK_TOKENS, Block, encode
from streamlm.vocab import Vocab


def is_stream(path: str | os.PathLike) -> bool:
    """True for stdin (``"-"``) and for a path that is a pipe, socket or character
    device (``<(cmd)`` in a shell): data that can be read once, with no seeking."""
    p = os.fspath(path)
    if p == "-":
        return True
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def check_readable(path: str | os.PathLike) -> None:
    """Raise InputError now if the text input ``path`` cannot be opened. A stream
    (see is_stream) is only checked for permission: opening it would consume it."""
    if not is_stream(path):
        open_binary(path).close()
    elif os.fspath(path) != "-" and not os.access(path, os.R_OK):
        raise InputError("cannot open: permission denied", path=display_name(path))


def is_table_input(path: str | os.PathLike) -> bool:
    """True for a directory and for a Parquet / Arrow file (by suffix or magic bytes)."""
    p = os.fspath(path)
    if is_stream(p):  # a pipe is read as text: sniffing it would consume it
        return False
    if os.path.isdir(p) or has_table_suffix(p):
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return table_kind(head) is not None


def fingerprint(path: str | os.PathLike) -> dict:
    """What identifies an input's content for a resume: path, size and mtime (a
    prepared directory: its manifest's sha256; another directory: its files)."""
    import hashlib

    p = os.fspath(path)
    if is_stream(p):
        what = "stdin ('-')" if p == "-" else f"a pipe ({p})"
        raise UsageError(f"--checkpoint cannot be used with {what}: it cannot be read "
                         "again")
    fp: dict = {"path": os.path.abspath(p)}
    if is_prepared_dir(p):
        with open(os.path.join(p, MANIFEST), "rb") as f:
            fp["manifest_sha256"] = hashlib.sha256(f.read()).hexdigest()
    elif os.path.isdir(p):
        fp["files"] = sorted([e.name, e.stat().st_size, e.stat().st_mtime_ns]
                             for e in os.scandir(p) if e.is_file())
    else:
        st = os.stat(p)
        fp["size"], fp["mtime_ns"] = st.st_size, st.st_mtime_ns
    return fp


class Source:
    """One input of a job: its position ``index`` among the inputs, its path, and
    the name errors and summaries give it."""

    kind = "?"

    def __init__(self, index: int, path: str, name: str | None = None):
        self.index = index
        self.path = os.fspath(path)
        self.name = name or display_name(self.path)

    def blocks(self) -> Iterator[Block]:
        """Blocks of about BLOCK_TOKENS tokens, in order, from the input's start."""
        raise NotImplementedError

    def fingerprint(self) -> dict:
        return fingerprint(self.path)

    def estimate_tokens(self) -> float:
        """A rough upper estimate of the input's tokens (inf when unknown)."""
        raise NotImplementedError


class TextSource(Source):
    """Text, tokenised by :mod:`streamlm.tokenizer` (documents at blank lines)."""

    kind = "text"

    def __init__(self, index: int, path: str, vocab: Vocab | None, *, docs: bool,
                 errors: str = "strict", name: str | None = None):
        super().__init__(index, path, name)
        self.vocab = vocab
        self.docs = docs
        self.errors = str(errors)
        check_readable(self.path)  # missing / unreadable: fail before any work

    def pieces(self) -> Pieces:
        return iter_pieces(self.path, self.errors)

    def blocks(self) -> Iterator[Block]:
        return encode(self.pieces(), self.vocab, docs=self.docs, index=self.index)

    def estimate_tokens(self) -> float:
        if is_stream(self.path):
            return math.inf
        with open(self.path, "rb") as f:
            packed = compression(f.read(8)) is not None
        return os.path.getsize(self.path) * (3.0 if packed else 0.5)  # >= 2 bytes a token


class ShardSource(Source):
    """Token shards: a prepared directory, or Parquet / Arrow files of ids."""

    kind = "shards"

    def __init__(self, index: int, path: str, vocab: Vocab, *, docs: bool,
                 column: str = "token_id"):
        super().__init__(index, path)
        from streamlm.shards import open_dataset  # pyarrow: only when shards are read

        self.vocab = vocab
        self.docs = docs
        p = self.path
        prepared = is_prepared_dir(p)
        try:
            if prepared:
                ds = open_dataset(p, vocab=vocab)
            else:  # 0 tokens scores like empty text
                ds = open_dataset(p, column=column, vocab_size=len(vocab), allow_empty=True)
        except InputError as e:
            if prepared and "differs from the dataset" in str(e):
                raise InputError("the model's vocabulary does not match the shards' "
                                 "vocabulary (vocab.txt / manifest sha256); score them "
                                 "with the model trained on them", path=p) from None
            raise
        if docs and not ds.has_docs:
            raise UsageError(f"{p}: no document boundaries in these shards (no doc_start "
                             "column or list<int> rows); use --reset none|line and a level "
                             "other than doc")
        self.dataset = ds

    def blocks(self) -> Iterator[Block]:
        eos = self.vocab.eos_id
        lines = 0
        docs = -1
        first = True
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
            yield Block(self.index, ch.start, ids, line, doc)

    def estimate_tokens(self) -> float:
        return float(self.dataset.num_tokens)


def open_source(index: int, path: str | os.PathLike, vocab: Vocab, *, docs: bool,
                errors: str = "strict", column: str = "token_id") -> Source:
    """The :class:`Source` for ``path``, checked now (missing, unreadable, bad shards,
    a vocabulary that does not match) so that a job fails before it starts."""
    p = os.fspath(path)
    if is_table_input(p):
        return ShardSource(index, p, vocab, docs=docs, column=column)
    return TextSource(index, p, vocab, docs=docs, errors=errors)


def skip(blocks: Iterator[Block], start: int) -> Iterator[Block]:
    """Drop the first ``start`` tokens (read again but not scored: a resume)."""
    for b in blocks:
        end = b.pos + len(b)
        if end <= start:
            continue
        if b.pos < start:
            b = b.cut(start - b.pos, len(b))
        yield b


def rechunk(blocks: Iterator[Block], size: int) -> Iterator[Block]:
    """Chunks of exactly ``size`` tokens (the last may be shorter), in order."""
    buf: list[Block] = []
    have = 0
    for b in blocks:
        buf.append(b)
        have += len(b)
        while have >= size:
            whole = Block.join(buf)
            yield whole.cut(0, size)
            rest = whole.cut(size, len(whole))
            buf = [rest] if len(rest) else []
            have = len(rest)
    if have:
        yield Block.join(buf)
