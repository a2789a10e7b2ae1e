"""The reader and tokeniser as streamlm had them before lines were taken a block at
a time (copies of ``streamlm.data.text.iter_pieces`` and ``streamlm.data.tokenizer.encode``):
every line decoded, split and looked up alone. Tests check that the batch paths
give exactly what these give: pieces, errors, ids, lines, documents and blocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import repeat

import numpy as np

from streamlm.data.text import (
    _BOM,
    LinePiece,
    _CorruptStream,
    _last_ascii_ws,
    display_name,
    open_binary,
)
from streamlm.data.tokenizer import Block
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError


def per_line_pieces(path: str | os.PathLike, errors: str = "strict", *,
                    block_size: int = 1 << 20) -> Iterator[LinePiece]:
    """streamlm.data.text.iter_pieces before batches: every line decoded and split alone."""
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


def per_line_encode(pieces: Iterable[LinePiece], vocab: Vocab, *, docs: bool, index: int = 0,
                    block_tokens: int = 1 << 16) -> Iterator[Block]:
    """streamlm.data.tokenizer.encode before batches: one piece at a time."""
    table, unk, eos = vocab.index, vocab.unk_id, vocab.eos_id
    ids: list[int] = []
    runs_line: list[int] = []  # one entry per run of tokens of one line
    runs_doc: list[int] = []
    runs_n: list[int] = []
    counts: list[tuple[int, int]] = []  # per token: (words, bytes), a line's on its <eos>
    pos = 0
    doc = -1
    new_doc = True
    line_has_words = False
    line_words: list[str] = []  # of the open line

    def block() -> Block:
        n = np.array(runs_n, dtype=np.int64)
        c = np.array(counts, dtype=np.int32).reshape(-1, 2)
        return Block(index, pos, np.array(ids, dtype=np.int32),
                     np.repeat(np.array(runs_line, dtype=np.int64), n),
                     np.repeat(np.array(runs_doc, dtype=np.int64), n) if docs else None,
                     c[:, 0].copy(), c[:, 1].copy())

    for piece in pieces:
        words = piece.words
        k = 0
        if words:
            if docs and new_doc:
                doc += 1
                new_doc = False
            ids.extend(map(table.get, words, repeat(unk)))
            counts.extend([(0, 0)] * len(words))
            k = len(words)
            line_has_words = True
            line_words.extend(words)
        if piece.last:
            if line_has_words or not docs:
                ids.append(eos)
                counts.append((len(line_words) + 1, len(" ".join(line_words).encode()) + 1))
                k += 1
            else:
                new_doc = True
            line_has_words = False
            line_words = []
        if k:
            runs_line.append(piece.index)
            runs_doc.append(doc)
            runs_n.append(k)
        if len(ids) >= block_tokens:
            b = block()
            yield b
            pos += len(b)
            ids, runs_line, runs_doc, runs_n, counts = [], [], [], [], []
    if ids:
        yield block()
