"""Reading text: open (compressed) files and streams, split them into lines and words.

* Lines are separated by ``b"\\n"`` only; a last line without a newline still counts.
* Words are ``line.split()`` (Python's whitespace split, so ``\\r``, tabs and Unicode
  spaces separate words too). A UTF-8 byte-order mark at the start is skipped.

How lines become tokens (``<eos>``, documents) is :mod:`streamlm.data.tokenizer`'s
rule; what counts as a text input at all is :mod:`streamlm.data.inputs`' decision.

Memory: text is read in blocks of ``block_size`` bytes (1 MiB). A line longer than a
block is handed out in several :class:`LinePiece` s, cut at ASCII whitespace, so
:func:`iter_pieces` uses memory bounded by a few blocks whatever the line length
(only a single *word* longer than a block is held whole). :func:`iter_lines` joins
the pieces back into one :class:`Line`, so its memory is that of the line's word list.

Speed: the whole lines of a block are decoded and checked in one call and handed
out together as a :class:`LineBatch` (:meth:`Pieces.batches`, which the tokeniser
takes); a line still open at a block's end, and the lines of a block with invalid
UTF-8 or a NUL byte, go line by line as before, so an error names the same line
and byte.
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
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from streamlm.data.formats import compression, compression_suffix
from streamlm.errors import InputError

BLOCK_SIZE = 1 << 20
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


class LineBatch:
    """Whole lines ``index`` .. ``index + count - 1`` of a block, starting at stream
    offset ``byte_offset``, decoded and checked at once: ``data``, their bytes (each
    line ends in ``b"\\n"``); ``text``, the same decoded; ``utf8``, the UTF-8 of
    ``text`` (``data`` itself unless ``errors="replace"`` replaced something)."""

    __slots__ = ("index", "byte_offset", "count", "data", "text", "utf8")

    def __init__(self, index: int, byte_offset: int, count: int, data: bytes, text: str,
                 utf8: bytes):
        self.index = index
        self.byte_offset = byte_offset
        self.count = count
        self.data = data
        self.text = text
        self.utf8 = utf8

    def lines(self) -> list[str]:
        """The text of each line, without its newline."""
        lines = self.text.split("\n")
        lines.pop()  # after the last newline
        return lines

    def words(self) -> list[str]:
        """The words of all the lines, in order (``str.split`` treats ``"\\n"`` as a space)."""
        return self.text.split()

    def pieces(self) -> Iterator[LinePiece]:
        """The lines as :class:`LinePiece` s (each one whole, so ``last``)."""
        off = self.byte_offset
        for i, (raw, line) in enumerate(zip(self.data.split(b"\n"), self.lines())):
            yield LinePiece(self.index + i, off, line.split(), True)
            off += len(raw) + 1


def display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if os.fspath(path) == "-" else os.fspath(path)


class Meter:
    """How far a reader has got through its input: ``done`` of ``total`` (bytes of
    the file on disk, rows, tokens: the reader's own unit; ``total`` None when
    unknown, as for a pipe). Progress bars read it; readers set ``done``. ``mark``
    is (tokens handed out, where in the input they end), set as each block of
    tokens is handed out (``Source.metered_blocks``): scoring runs behind reading."""

    __slots__ = ("done", "total", "mark")

    def __init__(self, total: float | None = None):
        self.done = 0
        self.total = total
        self.mark = (0, 0)

    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


def file_size(path: str | os.PathLike) -> int | None:
    """The size of a regular file, None for anything else (stdin, a pipe, a device)."""
    p = os.fspath(path)
    if p == "-":
        return None
    try:
        st = os.stat(p)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


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
        self.file = None  # the file on disk (compressed data: the compressed file)

    def raw_tell(self) -> int:
        """Bytes of the file on disk read so far (the decompressed count if unknown)."""
        try:
            return self.file.tell()
        except (AttributeError, OSError, ValueError):
            return self.pos

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


# streams read ahead by preread(): path -> (the bytes read, the stream to go on with)
_PREREAD: dict[str, tuple[bytes, BinaryIO | None]] = {}


class _Chain(io.RawIOBase):
    """The bytes a preread took, then the rest of the stream."""

    def __init__(self, head: bytes, rest: BinaryIO | None):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if len(self._head):
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        if self._rest is None:
            return 0
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._rest is not None and self._rest is not sys.stdin.buffer:
            self._rest.close()
        super().close()


def preread(path: str | os.PathLike, limit: int) -> tuple[bytes, bool]:
    """Read the first ``limit`` bytes of the stream ``path`` (stdin, a pipe) now, to
    judge its size; the next :func:`open_binary` of it gives them back first.
    Returns the bytes and whether the stream ended within them."""
    p = os.fspath(path)
    if p in _PREREAD:
        data, rest = _PREREAD[p]
        return data, rest is None
    if p == "-":
        src = sys.stdin.buffer
    else:
        try:
            src = open(p, "rb")  # noqa: SIM115 (kept for open_binary)
        except OSError as e:
            raise InputError(f"cannot open: {e.strerror or e}", path=display_name(p)) from None
    try:
        data = src.read(limit)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=display_name(p)) from None
    ended = len(data) < limit
    if ended and p != "-":
        src.close()
    _PREREAD[p] = (data, None if ended else src)
    return data, ended


def forget_preread() -> None:
    """Drop what preread() kept and nobody opened (a job that failed first)."""
    for _, rest in _PREREAD.values():
        if rest is not None and rest is not sys.stdin.buffer:
            rest.close()
    _PREREAD.clear()


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing ``.gz``/``.bz2``/``.xz``.

    The format is taken from the magic bytes (so a compressed file without the
    extension still works); a compression extension on a file without the matching
    magic bytes is an error. ``"-"`` reads stdin (also sniffed). Errors (missing
    file, directory, unreadable, corrupt data while reading) raise
    :class:`InputError` naming the path.
    """
    name = display_name(path)
    if os.fspath(path) in _PREREAD:
        data, rest = _PREREAD.pop(os.fspath(path))
        raw = io.BufferedReader(_Chain(data, rest))
        head = data[:6]
        ext = None if os.fspath(path) == "-" else compression_suffix(os.fspath(path))
    elif os.fspath(path) == "-":
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
        ext = compression_suffix(p)
    kind = compression(head)
    if ext is not None and kind != ext:
        raw.close()
        raise InputError(f"file name says .{ext} but the data is not {ext}-compressed",
                         path=name)
    if kind is None:
        out = _GuardedReader(raw, name)
    elif kind == "gz":
        out = _GuardedReader(gzip.GzipFile(fileobj=raw, mode="rb"), name)
    elif kind == "bz2":
        out = _GuardedReader(bz2.BZ2File(raw, mode="rb"), name)
    else:
        out = _GuardedReader(lzma.LZMAFile(raw, mode="rb"), name)  # noqa: SIM115
    out.file = raw
    return out  # type: ignore[return-value]


def _last_ascii_ws(buf: bytes | bytearray, start: int) -> int:
    """Index of the last ASCII whitespace byte in ``buf[start:]``, or -1."""
    return max(buf.rfind(c, start) for c in _ASCII_WS)


def _words(data: bytes, off: int, index: int, name: str, errors: str) -> list[str]:
    """The words of ``data`` (part of line ``index``, at stream offset ``off``)."""
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


def _decode(chunk: bytes, errors: str) -> tuple[str, bytes] | None:
    """``chunk`` decoded as :func:`_words` would decode each of its lines, and the
    UTF-8 of that text; None where :func:`_words` would raise. One call for many
    lines: ``b"\\n"`` is ASCII, so it never belongs to a multi-byte or malformed
    sequence, and a whole-chunk decode agrees with the line-by-line one."""
    if b"\x00" not in chunk:
        try:
            return chunk.decode("utf-8"), chunk
        except UnicodeDecodeError:
            pass
    if errors == "strict":
        return None
    text = chunk.decode("utf-8", "replace").replace("\x00", "\ufffd")
    return text, text.encode("utf-8")


def _whole_lines(chunk: bytes, count: int, index: int, off: int, name: str,
                 errors: str) -> Iterator[LinePiece | LineBatch]:
    """``chunk`` (``count`` whole lines, each ending in ``b"\\n"``) as one :class:`LineBatch`; where
    it is invalid, line by line, so that the error names the line and byte."""
    decoded = _decode(chunk, errors)
    if decoded is not None:
        yield LineBatch(index, off, count, chunk, *decoded)
        return
    for raw in chunk.split(b"\n")[:-1]:
        yield LinePiece(index, off, _words(raw, off, index, name, errors), True)
        index += 1
        off += len(raw) + 1


def _read(path: str | os.PathLike, errors: str, block_size: int,
          meter: Meter | None = None) -> Iterator[LinePiece | LineBatch]:
    """The items of :meth:`Pieces.batches`: a block's whole lines as a :class:`LineBatch`,
    a line that is still open at a block's end in :class:`LinePiece` s."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be strict or replace, got {errors!r}")
    name = display_name(path)
    f = open_binary(path)
    index = 0  # current line index
    line_off = 0  # stream offset of the current line's start
    piece_off = 0  # stream offset of pending[0]
    pending = bytearray()
    first = True
    line_open = False  # a piece of the current line was handed out already

    try:
        while True:
            if meter is not None:  # what was read before this block is handed out
                meter.done = f.raw_tell()
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
            end = block.rfind(b"\n", start) + 1  # just after the block's last newline
            if end:
                if line_open:  # the end of a line handed out in pieces
                    nl = block.find(b"\n", start)
                    pending += block[start:nl]
                    data = bytes(pending)
                    pending.clear()
                    yield LinePiece(index, line_off, _words(data, piece_off, index, name, errors),
                                    True)
                    line_open = False
                    index += 1
                    line_off = piece_off = piece_off + len(data) + 1
                    start = nl + 1
                if start < end:
                    chunk = block[start:end]
                    if pending:  # the start of the chunk's first line, from the last block
                        chunk = bytes(pending) + chunk
                        pending.clear()
                    count = chunk.count(b"\n")
                    yield from _whole_lines(chunk, count, index, line_off, name, errors)
                    index += count
                    line_off = piece_off = line_off + len(chunk)
                start = end
            if start < len(block):
                old = len(pending)
                pending += block[start:]
                if len(pending) > block_size:
                    cut = _last_ascii_ws(pending, old)
                    if cut >= 0:
                        data = bytes(pending[: cut + 1])
                        del pending[: cut + 1]
                        yield LinePiece(index, line_off,
                                        _words(data, piece_off, index, name, errors), False)
                        piece_off += len(data)
                        line_open = True
        if pending or line_open:
            data = bytes(pending)
            pending.clear()
            yield LinePiece(index, line_off, _words(data, piece_off, index, name, errors), True)
    finally:
        if os.fspath(path) != "-":
            f.close()


class Pieces:
    """What :func:`iter_pieces` returns: an iterator of :class:`LinePiece` s that can
    also hand out the rest of its input a block of whole lines at a time
    (:meth:`batches`), for readers that take lines by the block."""

    def __init__(self, items: Iterator[LinePiece | LineBatch]):
        self._items = items
        self._rest: Iterator[LinePiece] = iter(())  # pieces of a batch being handed out
        self.lines = 0  # lines handed out completely so far

    def __iter__(self) -> Pieces:
        return self

    def __next__(self) -> LinePiece:
        piece = next(self._rest, None)
        if piece is None:
            item = next(self._items)
            if isinstance(item, LineBatch):
                self._rest = item.pieces()
                piece = next(self._rest)
            else:
                piece = item
        self.lines += piece.last
        return piece

    def batches(self) -> Iterator[LinePiece | LineBatch]:
        """The rest of the input as :class:`LineBatch` es of whole lines, and
        :class:`LinePiece` s where lines are cut (long lines; invalid input, up to
        its error)."""
        for piece in self._rest:
            self.lines += piece.last
            yield piece
        for item in self._items:
            self.lines += item.count if isinstance(item, LineBatch) else item.last
            yield item

    def close(self) -> None:
        self._items.close()


def iter_pieces(path: str | os.PathLike, errors: str = "strict", *,
                block_size: int = BLOCK_SIZE, meter: Meter | None = None) -> Pieces:
    """Stream ``path`` as :class:`LinePiece` s (memory bounded by a few blocks);
    ``meter.done`` follows the bytes of the file read (compressed bytes, if it is)."""
    return Pieces(_read(path, errors, block_size, meter))


def iter_lines(path: str | os.PathLike, errors: str = "strict") -> Iterator[Line]:
    """Stream ``path`` as :class:`Line` s (see the module doc for the rules).

    Invalid UTF-8 or a NUL byte raises :class:`InputError` naming the path, the
    1-based line number and the byte offset; ``errors="replace"`` substitutes U+FFFD.
    """
    words: list[str] = []
    for item in iter_pieces(path, errors).batches():
        if isinstance(item, LineBatch):
            for piece in item.pieces():
                yield Line(piece.index, piece.byte_offset, piece.words)
            continue
        if item.last and not words:
            yield Line(item.index, item.byte_offset, item.words)
            continue
        words.extend(item.words)
        if item.last:
            yield Line(item.index, item.byte_offset, words)
            words = []
