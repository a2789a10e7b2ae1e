"""The token accounting rule: lines of words -> ids, with their line and document index.

This is the one tokeniser of streamlm: ``prepare`` writes its ids into shards
and the scorer scores them, so both count the same tokens.

* Every line contributes its words (``line.split()``) plus one ``<eos>``; a
  blank (whitespace-only) line contributes just ``<eos>``.
* With documents (``docs=True``: ``prepare --docs blank-line``, ``score --reset
  doc`` or ``--level doc``) blank lines separate documents and contribute no
  token; a run of blank lines is one boundary, and the input's first token
  starts its first document.
* A word not in the vocabulary becomes ``<unk>`` (and counts as an OOV).

Every token carries the 0-based index of its line in the input and, with
documents, of its document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import repeat

import numpy as np

from streamlm.text import LinePiece
from streamlm.vocab import Vocab

BLOCK_TOKENS = 1 << 16  # tokens per block handed out (about; a block is never empty)


class Block:
    """A run of tokens of one input: ids, and the line and document index of each.

    ``i`` is the input's index in the job, ``pos`` the position of ``ids[0]`` in
    the input's token stream. ``doc`` is None when documents are not tracked.
    """

    __slots__ = ("i", "pos", "ids", "line", "doc")

    def __init__(self, i: int, pos: int, ids: np.ndarray, line: np.ndarray,
                 doc: np.ndarray | None):
        self.i, self.pos, self.ids, self.line, self.doc = i, pos, ids, line, doc

    def __len__(self) -> int:
        return len(self.ids)

    def cut(self, a: int, b: int) -> Block:
        """Tokens ``[a, b)`` of this block."""
        return Block(self.i, self.pos + a, self.ids[a:b], self.line[a:b],
                     None if self.doc is None else self.doc[a:b])

    @staticmethod
    def join(parts: list[Block]) -> Block:
        """Consecutive blocks of one input as one."""
        if len(parts) == 1:
            return parts[0]
        p0 = parts[0]
        return Block(p0.i, p0.pos, np.concatenate([p.ids for p in parts]),
                     np.concatenate([p.line for p in parts]),
                     None if p0.doc is None else np.concatenate([p.doc for p in parts]))

    def doc_starts(self, prev_doc: int) -> np.ndarray:
        """True on each token that starts a document (``prev_doc``: the document of
        the token before this block, -1 at the input's start)."""
        d = self.doc
        out = np.empty(len(d), dtype=np.bool_)
        if len(d):
            out[0] = d[0] != prev_doc
            np.not_equal(d[1:], d[:-1], out=out[1:])
        return out


def encode(pieces: Iterable[LinePiece], vocab: Vocab, *, docs: bool, index: int = 0,
           block_tokens: int = BLOCK_TOKENS) -> Iterator[Block]:
    """Blocks of about ``block_tokens`` tokens of ONE input, by the rule above.

    ``pieces``: the input's lines as :class:`~streamlm.text.LinePiece` s (a long
    line may come in several pieces; ``last`` ends it). ``index`` is stored in
    each block's ``i``.
    """
    table, unk, eos = vocab.index, vocab.unk_id, vocab.eos_id
    ids: list[int] = []
    runs_line: list[int] = []  # one entry per run of tokens of one line
    runs_doc: list[int] = []
    runs_n: list[int] = []
    pos = 0
    doc = -1
    new_doc = True
    line_has_words = False

    def block() -> Block:
        n = np.array(runs_n, dtype=np.int64)
        return Block(index, pos, np.array(ids, dtype=np.int32),
                     np.repeat(np.array(runs_line, dtype=np.int64), n),
                     np.repeat(np.array(runs_doc, dtype=np.int64), n) if docs else None)

    for piece in pieces:
        words = piece.words
        k = 0
        if words:
            if docs and new_doc:
                doc += 1
                new_doc = False
            ids.extend(map(table.get, words, repeat(unk)))
            k = len(words)
            line_has_words = True
        if piece.last:
            if line_has_words or not docs:
                ids.append(eos)
                k += 1
            else:
                new_doc = True
            line_has_words = False
        if k:
            runs_line.append(piece.index)
            runs_doc.append(doc)
            runs_n.append(k)
        if len(ids) >= block_tokens:
            b = block()
            yield b
            pos += len(b)
            ids, runs_line, runs_doc, runs_n = [], [], [], []
    if ids:
        yield block()
