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
* With a subword vocabulary (:class:`streamlm.data.subword.SubwordVocab`) a line's
  words become the SentencePiece pieces of its normalised text (the words
  joined by one space), then ``<eos>``, by the same rule.

Every token carries the 0-based index of its line in the input and, with
documents, of its document. The text is also counted, the same way for every
tokeniser, so that models with different tokens compare: a line that has tokens
counts its words plus one (its ``<eos>``) and the UTF-8 bytes of its normalised
text plus one (its newline), both on its last token (``Block.words``,
``Block.nbytes``).

From :func:`streamlm.data.text.iter_pieces`, whole lines come a block of text at a
time; a compiled kernel (``kernels.encode_lines``) splits them by the same rule
(its whitespace is ``str.isspace``'s) and looks each word up by its UTF-8 bytes,
without a Python string per word. ``tests/line_reference.py`` keeps the
line-by-line tokeniser that it must equal, block for block.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Iterator
from itertools import repeat

import numpy as np

from streamlm.data.text import LineBatch, LinePiece, Pieces
from streamlm.data.vocab import UNK, Vocab

BLOCK_TOKENS = 1 << 16  # tokens per block handed out (about; a block is never empty)
# Whole lines go through the compiled kernel (kernels.encode_lines) once Numba is loaded
# anyway (the scorer's model loads it), or after this much text of an input: loading
# it costs about 0.6 s, the kernel saves about 0.04 s a MB (bench/bench_tokenize.py),
# so a small input stays in Python.
COMPILED_AFTER_BYTES = 16 << 20


class Tally:
    """What the tokeniser notes beside the ids. ``unk``: the words of the text that are
    a literal ``<unk>`` (PTB's marker for its rare words; None: not counted). They map
    to ``<unk>`` and are OOVs, as KenLM counts them, but they are text normalised
    already, not words the model lacks (token ids cannot tell the two apart). ``at``:
    the stream offset the blocks handed out reach (about: a line), for progress."""

    __slots__ = ("unk", "at")

    def __init__(self, unk: int | None = 0):
        self.unk = unk
        self.at = 0


class Block:
    """A run of tokens of one input: ids, and the line and document index of each.

    ``i`` is the input's index in the job, ``pos`` the position of ``ids[0]`` in
    the input's token stream. ``doc`` is None when documents are not tracked.
    ``words`` and ``nbytes`` (int32, per token) count the text the tokens stand for,
    whatever the tokeniser (see :func:`encode`): summed over whole lines they give the
    lines' words (plus one ``<eos>`` each) and the UTF-8 bytes of their normalised
    text (plus one each). Text puts a line's counts on its last token.
    """

    __slots__ = ("i", "pos", "ids", "line", "doc", "words", "nbytes")

    def __init__(self, i: int, pos: int, ids: np.ndarray, line: np.ndarray,
                 doc: np.ndarray | None, words: np.ndarray | None = None,
                 nbytes: np.ndarray | None = None):
        self.i, self.pos, self.ids, self.line, self.doc = i, pos, ids, line, doc
        n = len(ids)
        self.words = np.zeros(n, np.int32) if words is None else words
        self.nbytes = np.zeros(n, np.int32) if nbytes is None else nbytes

    def __len__(self) -> int:
        return len(self.ids)

    def cut(self, a: int, b: int) -> Block:
        """Tokens ``[a, b)`` of this block."""
        return Block(self.i, self.pos + a, self.ids[a:b], self.line[a:b],
                     None if self.doc is None else self.doc[a:b], self.words[a:b],
                     self.nbytes[a:b])

    @staticmethod
    def join(parts: list[Block]) -> Block:
        """Consecutive blocks of one input as one."""
        if len(parts) == 1:
            return parts[0]
        p0 = parts[0]
        return Block(p0.i, p0.pos, np.concatenate([p.ids for p in parts]),
                     np.concatenate([p.line for p in parts]),
                     None if p0.doc is None else np.concatenate([p.doc for p in parts]),
                     np.concatenate([p.words for p in parts]),
                     np.concatenate([p.nbytes for p in parts]))

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
           block_tokens: int = BLOCK_TOKENS, tally: Tally | None = None) -> Iterator[Block]:
    """Blocks of about ``block_tokens`` tokens of ONE input, by the rule above.

    ``pieces``: the input's lines as :class:`~streamlm.data.text.LinePiece` s (a long
    line may come in several pieces; ``last`` ends it). ``index`` is stored in
    each block's ``i``. A block ends after the first line (or piece) that brings it
    to ``block_tokens``. From :func:`~streamlm.data.text.iter_pieces`, whole lines are
    taken a block of text at a time (:meth:`~streamlm.data.text.Pieces.batches`). A word
    vocabulary counts the literal ``<unk>`` words into ``tally`` (see :class:`Tally`).
    """
    enc = _Encoder(vocab, docs, index, block_tokens, tally)
    items = pieces.batches() if isinstance(pieces, Pieces) else pieces
    for item in items:
        if isinstance(item, LineBatch):
            yield from enc.add_lines(item)
        else:
            enc.add_piece(item)
            if enc.size() >= block_tokens:
                yield enc.block(at=item.byte_offset)
    if enc.size():
        yield enc.block(at=enc.end)


class _Encoder:
    """The state of :func:`encode`: document count, the open line's counts, and tokens
    not yet in a block (array parts from whole lines, then lists from pieces)."""

    def __init__(self, vocab: Vocab, docs: bool, index: int, block_tokens: int,
                 tally: Tally | None = None):
        self.vocab = vocab
        self.subword = vocab.tokenizer != "word"
        self.tally = tally
        self.count_unk = tally is not None and tally.unk is not None and not self.subword
        self.end = 0  # stream offset of the end of the text seen (about, for pieces)
        self.table, self.unk, self.eos = vocab.index, vocab.unk_id, vocab.eos_id
        self.docs, self.index, self.block_tokens = docs, index, block_tokens
        self.pos = 0  # position of the next block
        self.doc = -1
        self.new_doc = True
        self.line_has_words = False  # the open line (pieces) has words already
        self.line_words = self.line_bytes = 0  # of the open line so far (pieces)
        self.parts: list[tuple] = []  # (ids, line, doc, words, nbytes)
        self.parted = 0  # tokens in parts
        self.text_bytes = 0  # of the batches so far
        self._lists()

    def _lists(self) -> None:
        self.ids: list[int] = []
        self.runs_line: list[int] = []  # one entry per run of tokens of one line
        self.runs_doc: list[int] = []
        self.runs_n: list[int] = []
        self.runs_words: list[int] = []  # the counts on a run's last token
        self.runs_bytes: list[int] = []

    def size(self) -> int:
        return self.parted + len(self.ids)

    def add_piece(self, piece: LinePiece) -> None:
        words = piece.words
        k = 0
        self.end = max(self.end, piece.byte_offset)
        if words:
            if self.docs and self.new_doc:
                self.doc += 1
                self.new_doc = False
            if self.subword:
                ids = self.vocab.encode(words).tolist()
                self.ids.extend(ids)
                k = len(ids)
            else:
                self.ids.extend(map(self.table.get, words, repeat(self.unk)))
                k = len(words)
                if self.count_unk:
                    self.tally.unk += words.count(UNK)
            self.line_has_words = True
            self.line_words += len(words)  # each word's bytes and its space (or newline)
            self.line_bytes += sum(len(w.encode("utf-8", "surrogatepass")) for w in words)
            self.line_bytes += len(words)
        n_words = n_bytes = 0
        if piece.last:
            if self.line_has_words or not self.docs:
                self.ids.append(self.eos)
                k += 1
                n_words, n_bytes = self.line_words + 1, max(self.line_bytes, 1)
            else:
                self.new_doc = True
            self.line_has_words = False
            self.line_words = self.line_bytes = 0
        if k:
            self.runs_line.append(piece.index)
            self.runs_doc.append(self.doc)
            self.runs_n.append(k)
            self.runs_words.append(n_words)
            self.runs_bytes.append(n_bytes)

    def _flush_lists(self) -> None:
        if not self.ids:
            return
        n = np.array(self.runs_n, dtype=np.int64)
        last = np.cumsum(n) - 1
        words = np.zeros(len(self.ids), dtype=np.int32)
        nbytes = np.zeros(len(self.ids), dtype=np.int32)
        words[last] = self.runs_words
        nbytes[last] = self.runs_bytes
        self.parts.append((np.array(self.ids, dtype=np.int32),
                           np.repeat(np.array(self.runs_line, dtype=np.int64), n),
                           np.repeat(np.array(self.runs_doc, dtype=np.int64), n)
                           if self.docs else None, words, nbytes))
        self.parted += len(self.ids)
        self._lists()

    def block(self, at: int | None = None) -> Block:
        """All tokens not yet handed out, as one block (``at``: the stream offset its
        text ends at, for the tally)."""
        if at is not None and self.tally is not None:
            self.tally.at = at
        self._flush_lists()
        ps = self.parts
        b = Block(self.index, self.pos, *(np.concatenate([p[j] for p in ps])
                                          if ps[0][j] is not None else None
                                          for j in range(5)))
        self.pos += len(b)
        self.parts, self.parted = [], 0
        return b

    def add_lines(self, batch: LineBatch) -> Iterator[Block]:
        """A batch of whole lines; the blocks they complete."""
        self.text_bytes += len(batch.data)
        self.end = batch.byte_offset + len(batch.data)
        if self.subword:
            ids, k, words, nbytes = _subword_lines(self.vocab, batch.lines(), self.docs)
        elif self.text_bytes < COMPILED_AFTER_BYTES and not _kernels_loaded():
            for piece in batch.pieces():
                self.add_piece(piece)
                if self.size() >= self.block_tokens:
                    yield self.block(at=piece.byte_offset)
            return
        else:
            ids, k = word_table(self.vocab).encode_lines(batch.utf8, batch.count, self.docs,
                                                          self.tally if self.count_unk else None)
            words, nbytes = _counts(k, _norm_bytes(batch.lines()), k)
        line = np.repeat(np.arange(batch.index, batch.index + batch.count, dtype=np.int64), k)
        doc = None
        if self.docs:
            has = k > 0  # blank lines have no token
            starts = has.copy()  # lines that start a document
            starts[1:] &= ~has[:-1]
            starts[0] &= self.new_doc
            line_doc = self.doc + np.cumsum(starts)
            self.doc = int(line_doc[-1])
            self.new_doc = not has[-1]
            doc = np.repeat(line_doc, k)
        yield from self._add_part(ids, line, doc, words, nbytes, np.cumsum(k), batch)

    def _add_part(self, ids: np.ndarray, line: np.ndarray, doc: np.ndarray | None,
                  words: np.ndarray, nbytes: np.ndarray, ends: np.ndarray,
                  batch: LineBatch) -> Iterator[Block]:
        """Append tokens (``ends``: token count after each of ``batch``'s lines), cutting a
        block after each line that fills one, as :meth:`add_piece` + :meth:`size` would."""
        self._flush_lists()
        a = 0  # tokens of ids already appended
        nl = None  # where the batch's lines end (for the tally)
        while True:
            j = int(np.searchsorted(ends, a + self.block_tokens - self.parted))
            if j == len(ends):
                break
            b = int(ends[j])
            self.parts.append((ids[a:b], line[a:b], None if doc is None else doc[a:b],
                               words[a:b], nbytes[a:b]))
            self.parted += b - a
            if nl is None and self.tally is not None:
                nl = np.flatnonzero(np.frombuffer(batch.data, dtype=np.uint8) == 10)
            yield self.block(at=None if nl is None else batch.byte_offset + int(nl[j]) + 1)
            a = b
        if a < len(ids):
            self.parts.append((ids[a:], line[a:], None if doc is None else doc[a:],
                               words[a:], nbytes[a:]))
            self.parted += len(ids) - a


def _norm_bytes(lines: list[str]) -> np.ndarray:
    """The UTF-8 bytes of each line's normalised text (its words joined by one space)."""
    return np.fromiter((len(" ".join(ln.split()).encode("utf-8", "surrogatepass"))
                        for ln in lines), dtype=np.int64, count=len(lines))


def _counts(k: np.ndarray, norm_bytes: np.ndarray, line_words: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per token, the counts of the module doc: on each line's last token (``k``: its
    tokens) its words plus one (``line_words``: that, for a line with tokens) and its
    normalised bytes plus one."""
    has = k > 0
    last = np.cumsum(k)[has] - 1
    n = int(k.sum())
    words = np.zeros(n, dtype=np.int32)
    nbytes = np.zeros(n, dtype=np.int32)
    words[last] = line_words[has]
    nbytes[last] = norm_bytes[has] + 1
    return words, nbytes


def _subword_lines(vocab, lines: list[str], docs: bool):
    """(ids, tokens per line, words, nbytes) of whole lines, by a subword vocabulary: the
    pieces of each line's normalised text (one batch call), then ``<eos>``."""
    split = [ln.split() for ln in lines]
    norm = [" ".join(w) for w in split]
    pieces, cnt = vocab.encode_texts(norm)
    W = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    ends_line = (W > 0) | (not docs)  # lines that end in <eos> (not a blank one in docs)
    k = cnt + ends_line
    ids = np.empty(int(k.sum()), dtype=np.int32)
    is_eos = np.zeros(len(ids), dtype=np.bool_)
    is_eos[np.cumsum(k)[ends_line] - 1] = True
    ids[is_eos] = vocab.eos_id
    ids[~is_eos] = pieces
    nb = np.fromiter((len(t.encode("utf-8", "surrogatepass")) for t in norm), dtype=np.int64,
                     count=len(norm))
    words, nbytes = _counts(k, nb, W + 1)
    return ids, k, words, nbytes


def encode_rows(texts, rows: np.ndarray, vocab: Vocab, *, index: int, pos: int,
                line0: int, tally: Tally | None = None) -> tuple[Block, np.ndarray, int]:
    """The tokens of a batch of documents (rows of JSONL or a table).

    ``texts``: a pyarrow string array, one document each, no nulls; ``rows``: their
    row numbers; a word vocabulary counts the literal ``<unk>`` words into ``tally``.
    A document's lines (its text split at ``"\\n"``) each contribute
    their words plus ``<eos>``; a blank line contributes nothing (as between the
    documents of a text file). Returns the block (``doc`` = the row number of each
    token, ``line`` = a running line number from ``line0``, position ``pos``), the
    tokens of each row (0 for an empty document) and the number of lines read.
    """
    n = len(texts)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Block(index, pos, np.zeros(0, np.int32), empty, empty), empty, 0
    import pyarrow.compute as pc

    nlines = pc.count_substring(texts, "\n").to_numpy(zero_copy_only=False) + 1
    if tally is not None and tally.unk is None:
        tally = None  # (nothing else of it is kept for documents)
    lines = "\n".join(texts.to_pylist()).split("\n")
    if vocab.tokenizer != "word":
        ids, k, words, nbytes = _subword_lines(vocab, lines, True)
    else:
        if _kernels_loaded():
            joined = pc.binary_join_element_wise(texts, "", "\n")  # every line ends in \n
            ids, k = word_table(vocab).encode_lines(_utf8(joined), int(nlines.sum()), True,
                                                     tally)
        else:
            table, unk, eos = vocab.index, vocab.unk_id, vocab.eos_id
            out: list[int] = []
            counts: list[int] = []
            for line in lines:
                words = line.split()
                if words:
                    out.extend(map(table.get, words, repeat(unk)))
                    out.append(eos)
                    if tally is not None:
                        tally.unk += words.count(UNK)
                counts.append(len(words) + 1 if words else 0)
            ids, k = np.array(out, dtype=np.int32), np.array(counts, dtype=np.int64)
        words, nbytes = _counts(k, _norm_bytes(lines), k)
    L = len(k)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(nlines[:-1], out=starts[1:])
    row_tokens = np.add.reduceat(k, starts)
    blk = Block(index, pos, ids, np.repeat(np.arange(line0, line0 + L, dtype=np.int64), k),
                np.repeat(np.asarray(rows, dtype=np.int64), row_tokens), words, nbytes)
    return blk, row_tokens, L


def id_counts(vocab: Vocab, ids: np.ndarray, prev: int) -> tuple[np.ndarray, np.ndarray]:
    """``Block.words`` and ``Block.nbytes`` of token ids alone (shards): per token the
    vocabulary's :meth:`~streamlm.data.vocab.Vocab.token_words` and
    :meth:`~streamlm.data.vocab.Vocab.token_bytes`, and one byte more on an ``<eos>`` that
    is a line of its own (``prev``: the id before ``ids[0]``, -1 at the start)."""
    tables = getattr(vocab, "_count_tables", None)
    if tables is None:
        tables = vocab._count_tables = (vocab.token_words(), vocab.token_bytes())
    words, nbytes = tables[0][ids], tables[1][ids]
    if len(ids):
        eos = ids == vocab.eos_id
        alone = np.empty(len(ids), dtype=np.bool_)
        alone[0] = prev in (-1, vocab.eos_id)
        alone[1:] = eos[:-1]
        nbytes[eos & alone] += 1
    return words, nbytes


def _utf8(arr) -> bytes:
    """The data bytes of a pyarrow string array (its values, back to back)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string()) if pa.types.is_large_string(arr.type) else arr
    off_t = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=off_t)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    return bytes(memoryview(data)[int(offsets[0]):int(offsets[-1])])


class WordTable:
    """A vocabulary as the compiled kernels see it: its words' UTF-8 bytes in id order
    and an open-addressing hash table of them (see ``kernels.word_table_fill``)."""

    def __init__(self, vocab: Vocab):
        from streamlm.compute import kernels  # Numba: only when a big batch comes

        # surrogatepass: a word that is not valid Unicode gets bytes no valid text has
        raw = [w.encode("utf-8", "surrogatepass") for w in vocab.words]
        self.keys = np.frombuffer(b"".join(raw), dtype=np.uint8)
        self.key_off = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, raw), dtype=np.int64, count=len(raw)),
                  out=self.key_off[1:])
        self.slots = np.empty(1 << (2 * len(raw)).bit_length(), dtype=np.int32)  # <= 1/2 full
        kernels.word_table_fill(self.slots, self.keys, self.key_off)
        self.unk, self.eos = vocab.unk_id, vocab.eos_id

    def encode_lines(self, utf8: bytes, lines: int, docs: bool, tally: Tally | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``lines`` whole lines (``utf8``: valid UTF-8, each line ending in
        ``b"\\n"``) and the number of tokens of each line, by the module doc's rule; the
        literal ``<unk>`` words counted into ``tally``."""
        from streamlm.compute import kernels

        b = np.frombuffer(utf8, dtype=np.uint8)
        ids = np.empty(len(b) // 2 + lines + 1, dtype=np.int32)
        counts = np.empty(lines, dtype=np.int64)
        nt, nl, literal = kernels.encode_lines(ids, counts, b, space_table(), self.slots,
                                               self.keys, self.key_off, self.unk, self.eos, docs)
        if tally is not None:
            tally.unk += literal
        if nl != lines:  # cannot happen on valid UTF-8
            raise RuntimeError(f"encode_lines found {nl} lines, not {lines}")
        return ids[:nt], counts


def _kernels_loaded() -> bool:
    return "streamlm.compute.kernels" in sys.modules


def word_table(vocab: Vocab) -> WordTable:
    """The vocabulary's :class:`WordTable`, built on first use and kept with it."""
    if vocab._word_table is None:
        vocab._word_table = WordTable(vocab)
    return vocab._word_table


@functools.cache
def space_table() -> np.ndarray:
    """``chr(c).isspace()`` for each code point ``c`` below U+10000: where ``str.split()``
    splits (no code point above is a space: tests check)."""
    return np.array([chr(c).isspace() for c in range(0x10000)], dtype=np.bool_)
