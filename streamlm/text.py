"""Streaming text input: open (compressed) files, split into lines and words, encode to ids.

Token accounting rule (shared by ``prepare`` and the scorer)
------------------------------------------------------------
* Lines are separated by ``b"\\n"`` only; a last line without a newline still counts.
* Words are ``line.split()`` (Python's whitespace split, so ``\\r``, tabs and Unicode
  spaces separate words too).
* ``docs="none"``: every line contributes its words plus one ``<eos>``; a blank
  (whitespace-only) line contributes just ``<eos>``.
* ``docs="blank-line"``: blank lines are document separators and contribute nothing;
  a run of blank lines is one boundary. Every other line contributes its words plus
  ``<eos>``. The first token of every document (and of every input file) is marked
  with ``doc_start=True``.

Memory: text is read in blocks of ``block_size`` bytes (1 MiB). A line longer than a
block is handed out in several :class:`LinePiece` s, cut at ASCII whitespace, so
:func:`iter_pieces` and :func:`encode_lines` use memory bounded by a few blocks
whatever the line length (only a single *word* longer than a block is held whole).
:func:`iter_lines` joins the pieces back into one :class:`Line`, so its memory is
that of the line's word list.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import sys
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

import numpy as np

from streamlm.errors import InputError

BLOCK_SIZE = 1 << 20
DOCS_MODES = ("none", "blank-line")
ERRORS_MODES = ("strict", "replace")

_MAGIC = {
    b"\x1f\x8b": "gz",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
}
_EXT = {".gz": "gz", ".gzip": "gz", ".bz2": "bz2", ".xz": "xz"}
# ASCII bytes that str.split() treats as whitespace. They never occur inside a
# multi-byte UTF-8 sequence, so cutting a line right after one gives the same words.
_ASCII_WS = (b" ", b"\t", b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\x1f")
_BOM = b"\xef\xbb\xbf"


class Line(NamedTuple):
    """One input line: 0-based ``index``, ``byte_offset`` of its start in the
    decompressed stream, and its ``words`` (``line.split()``)."""

    index: int
    byte_offset: int
    words: list[str]


class LinePiece(NamedTuple):
    """Part of a line (see module doc). ``last`` is True on the line's final piece;
    ``byte_offset`` is the offset of the *line* start."""

    index: int
    byte_offset: int
    words: list[str]
    last: bool


def display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if os.fspath(path) == "-" else os.fspath(path)


class _CorruptStream(InputError):
    def __init__(self, path: str, offset: int, reason: str):
        self.offset = offset
        self.reason = reason
        super().__init__(f"corrupt or truncated compressed data ({reason})", path=path,
                         position=f"byte {offset} of decompressed data")


class _GuardedReader(io.RawIOBase):
    """Wraps a decompressor; turns its exceptions into :class:`InputError`."""

    def __init__(self, raw: BinaryIO, name: str):
        self._raw = raw
        # read1: hand out what decompressed cleanly before a corrupt spot, so the error
        # names the line where the damage is (read(n) would drop the whole block)
        self._read = getattr(raw, "read1", raw.read)
        self.name = name
        self.pos = 0  # decompressed bytes handed out so far

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._read(n)
        except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as e:
            reason = str(e) or type(e).__name__
            raise _CorruptStream(self.name, self.pos, reason) from None
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


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
    """Raise InputError now if ``path`` cannot be opened for reading. A stream
    (see is_stream) is only checked for existence: opening it would consume it."""
    if not is_stream(path):
        open_binary(path).close()
    elif os.fspath(path) != "-" and not os.access(path, os.R_OK):
        raise InputError("cannot open: permission denied", path=display_name(path))


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing ``.gz``/``.bz2``/``.xz``.

    The format is taken from the magic bytes (so a compressed file without the
    extension still works); a compression extension on a file without the matching
    magic bytes is an error. ``"-"`` reads stdin (also sniffed). Errors (missing
    file, directory, unreadable, corrupt data while reading) raise
    :class:`InputError` naming the path.
    """
    name = display_name(path)
    if os.fspath(path) == "-":
        raw = sys.stdin.buffer
        if not hasattr(raw, "peek"):
            raw = io.BufferedReader(raw)  # type: ignore[arg-type]
        head = raw.peek(6)[:6]
        ext = None
    else:
        p = os.fspath(path)
        if os.path.isdir(p):
            raise InputError("is a directory, not a text file", path=name)
        try:
            raw = open(p, "rb")  # noqa: SIM115 (returned to the caller)
        except FileNotFoundError:
            raise InputError("no such file", path=name) from None
        except OSError as e:
            raise InputError(f"cannot open: {e.strerror or e}", path=name) from None
        try:
            if raw.seekable():
                head = raw.read(6)
                raw.seek(0)
            else:  # a pipe: look without consuming
                head = raw.peek(6)[:6]
        except OSError as e:
            raw.close()
            raise InputError(f"cannot read: {e.strerror or e}", path=name) from None
        ext = _EXT.get(os.path.splitext(p)[1].lower())
    kind = None
    for magic, k in _MAGIC.items():
        if head.startswith(magic):
            kind = k
            break
    if ext is not None and kind != ext:
        raw.close()
        raise InputError(f"file name says .{ext} but the data is not {ext}-compressed",
                         path=name)
    if kind is None:
        return _GuardedReader(raw, name)  # type: ignore[return-value]
    if kind == "gz":
        dec = gzip.GzipFile(fileobj=raw, mode="rb")
    elif kind == "bz2":
        dec = bz2.BZ2File(raw, mode="rb")
    else:
        dec = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115
    return _GuardedReader(dec, name)  # type: ignore[return-value]


def _check_modes(errors: str, docs: str | None = None) -> None:
    if errors not in ERRORS_MODES:
        raise ValueError(f"errors must be one of {ERRORS_MODES}, got {errors!r}")
    if docs is not None and docs not in DOCS_MODES:
        raise ValueError(f"docs must be one of {DOCS_MODES}, got {docs!r}")


def _last_ascii_ws(buf: bytes | bytearray, start: int) -> int:
    """Index of the last ASCII whitespace byte in ``buf[start:]``, or -1."""
    return max(buf.rfind(c, start) for c in _ASCII_WS)


def iter_pieces(path: str | os.PathLike, errors: str = "strict", *,
                block_size: int = BLOCK_SIZE) -> Iterator[LinePiece]:
    """Stream ``path`` as :class:`LinePiece` s (memory bounded by a few blocks)."""
    _check_modes(errors)
    name = display_name(path)
    f = open_binary(path)
    index = 0  # current line index
    line_off = 0  # stream offset of the current line's start
    piece_off = 0  # stream offset of pending[0]
    pending = bytearray()
    first = True
    line_open = False  # a piece of the current line was handed out already

    def words_of(data: bytes, off: int) -> list[str]:
        if errors == "strict":
            z = data.find(b"\x00")
            if z >= 0:
                raise InputError("NUL byte in text", path=name,
                                 position=f"line {index + 1}, byte {off + z}")
            try:
                return data.decode("utf-8").split()
            except UnicodeDecodeError as e:
                raise InputError(f"invalid UTF-8 ({e.reason})", path=name,
                                 position=f"line {index + 1}, byte {off + e.start}") from None
        return data.decode("utf-8", "replace").replace("\x00", "\ufffd").split()

    try:
        while True:
            try:
                block = f.read(block_size)
            except _CorruptStream as e:
                raise InputError(f"corrupt or truncated compressed data ({e.reason})",
                                 path=name,
                                 position=f"line {index + 1}, byte {e.offset}") from None
            if not block:
                break
            start = 0
            if first:
                first = False
                if block.startswith(_BOM):
                    start = len(_BOM)
                    line_off = piece_off = start
            while True:
                nl = block.find(b"\n", start)
                if nl < 0:
                    break
                if pending:
                    pending += block[start:nl]
                    data = bytes(pending)
                    pending.clear()
                else:
                    data = block[start:nl]
                yield LinePiece(index, line_off, words_of(data, piece_off), True)
                line_open = False
                index += 1
                line_off = piece_off = piece_off + len(data) + 1
                start = nl + 1
            if start < len(block):
                old = len(pending)
                pending += block[start:]
                if len(pending) > block_size:
                    cut = _last_ascii_ws(pending, old)
                    if cut >= 0:
                        data = bytes(pending[: cut + 1])
                        del pending[: cut + 1]
                        yield LinePiece(index, line_off, words_of(data, piece_off), False)
                        piece_off += len(data)
                        line_open = True
        if pending or line_open:
            data = bytes(pending)
            pending.clear()
            yield LinePiece(index, line_off, words_of(data, piece_off), True)
    finally:
        if os.fspath(path) != "-":
            f.close()


def iter_lines(path: str | os.PathLike, errors: str = "strict") -> Iterator[Line]:
    """Stream ``path`` as :class:`Line` s (see the module doc for the rules).

    Invalid UTF-8 or a NUL byte raises :class:`InputError` naming the path, the
    1-based line number and the byte offset; ``errors="replace"`` substitutes U+FFFD.
    """
    words: list[str] = []
    for piece in iter_pieces(path, errors):
        if piece.last and not words:
            yield Line(piece.index, piece.byte_offset, piece.words)
            continue
        words.extend(piece.words)
        if piece.last:
            yield Line(piece.index, piece.byte_offset, words)
            words = []


def count_words(path: str | os.PathLike, counts: dict, errors: str = "strict") -> tuple[int, int]:
    """Add the word counts of ``path`` to the Counter ``counts``; return (lines, words)."""
    lines = 0
    nwords = 0
    for piece in iter_pieces(path, errors):
        counts.update(piece.words)
        nwords += len(piece.words)
        lines += piece.last
    return lines, nwords


def encode_lines(lines: Iterable[Line | LinePiece], vocab, docs: str = "none", *,
                 chunk_tokens: int = 1 << 16
                 ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Encode lines (or line pieces) of ONE input to id chunks by the accounting rule.

    Yields ``(ids, doc_start)``: ``ids`` int32 of about ``chunk_tokens`` tokens (the
    last chunk may be shorter, a chunk is never empty); ``doc_start`` is a bool
    array of the same length when ``docs="blank-line"`` (True on the first token of
    each document, including the first token of this input), else None.
    Out-of-vocabulary words become ``vocab.unk_id``.
    """
    _check_modes("strict", docs)
    blank_docs = docs == "blank-line"
    table = vocab.index
    unk = vocab.unk_id
    eos = vocab.eos_id
    ids: list[int] = []
    starts: list[int] = []  # positions in ids that start a document
    line_has_words = False
    new_doc = True
    for item in lines:
        words = item.words
        last = getattr(item, "last", True)
        if words:
            if new_doc and blank_docs:
                starts.append(len(ids))
                new_doc = False
            ids.extend(map(table.get, words, [unk] * len(words)))
            line_has_words = True
        if last:
            if line_has_words or not blank_docs:
                ids.append(eos)
            elif blank_docs:
                new_doc = True
            line_has_words = False
        if len(ids) >= chunk_tokens:
            yield _chunk(ids, starts, blank_docs)
            ids = []
            starts = []
    if ids:
        yield _chunk(ids, starts, blank_docs)


def _chunk(ids: list[int], starts: list[int], blank_docs: bool):
    arr = np.array(ids, dtype=np.int32)
    if not blank_docs:
        return arr, None
    ds = np.zeros(len(arr), dtype=np.bool_)
    ds[starts] = True
    return arr, ds
