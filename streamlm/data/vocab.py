"""The word vocabulary: a list of words in id order.

Id order of a built vocabulary (:meth:`Vocab.build`)
---------------------------------------------------
* id 0 is ``<unk>``, id 1 is ``<eos>`` (always present, whatever their counts);
* then every other word with ``count >= min_count``, most frequent first, ties broken
  by the word itself in ascending Unicode code-point order (Python ``str`` order);
* ``vocab_size`` (which includes the two specials) keeps the first ``vocab_size``.

A loaded vocabulary (:meth:`Vocab.load`, :meth:`Vocab.from_words`) keeps the given
order; ``<unk>`` and ``<eos>`` must be in it, anywhere.

The file format is UTF-8, one word per line, in id order, each line ending in
``\\n``. :meth:`Vocab.sha256` is the sha256 of ``"\\n".join(words)`` encoded as UTF-8.

A word vocabulary's ``tokenizer`` is ``"word"``: a token is a word of ``line.split()``
or ``<eos>``. A subword vocabulary (:class:`streamlm.data.subword.SubwordVocab`) has
``"sentencepiece"``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

import numpy as np

from streamlm.data.atomic import atomic_open
from streamlm.errors import InputError, UsageError, read_small_file

UNK = "<unk>"
EOS = "<eos>"


def _bad_word(w: object) -> str | None:
    if not isinstance(w, str):
        return f"not a string: {w!r}"
    if not w:
        return "empty word"
    if w.split() != [w]:
        return f"word contains whitespace: {w!r}"
    return None


def _all_good(words: list) -> bool:
    """Every word a non-empty string without whitespace (the words of one split)."""
    if not all(type(w) is str for w in words):
        return False
    toks = " ".join(words).split()
    return len(toks) == len(words) and sum(map(len, toks)) == sum(map(len, words))


class Vocab:
    """Words in id order. Build with :meth:`build`, :meth:`from_words` or :meth:`load`."""

    tokenizer = "word"

    def __init__(self, words: Iterable[str], *, source: str | None = None):
        words = list(words)
        where = source or "vocabulary"
        if not words:
            raise InputError("empty vocabulary", path=source)
        # a good vocabulary in one pass in C
        index: dict[str, int] = dict(zip(words, range(len(words)))) if _all_good(words) else {}
        if len(index) != len(words):  # a bad or repeated word: find the first, in order
            index = {}
            for i, w in enumerate(words):
                bad = _bad_word(w)
                if bad:
                    raise InputError(bad, path=source, position=f"line {i + 1}")
                if w in index:
                    raise InputError(f"duplicate word {w!r} (first on line {index[w] + 1})",
                                     path=source, position=f"line {i + 1}")
                index[w] = i
        for special in (UNK, EOS):
            if special not in index:
                raise InputError(f"{where} lacks the required word {special!r}", path=source)
        self.words: list[str] = words
        self.index: dict[str, int] = index
        self.unk_id: int = index[UNK]
        self.eos_id: int = index[EOS]
        self._sha: str | None = None
        self._word_table = None  # the tokenizer's compiled lookup of these words, when needed

    # ----------------------------------------------------------- builders --
    @classmethod
    def from_words(cls, words: Iterable[str]) -> Vocab:
        """A vocabulary with exactly these words in this order (validated)."""
        return cls(words)

    @classmethod
    def build(cls, counts: Mapping[str, int], vocab_size: int | None = None,
              min_count: int = 1) -> Vocab:
        """Most frequent words first; see the module doc for the exact order."""
        if vocab_size is not None and vocab_size < 2:
            raise UsageError(f"vocab size must be at least 2 (<unk> and <eos>), got {vocab_size}")
        if min_count < 1:
            raise UsageError(f"min count must be at least 1, got {min_count}")
        items = [(w, c) for w, c in counts.items() if c >= min_count and w not in (UNK, EOS)]
        items.sort(key=lambda wc: (-wc[1], wc[0]))
        words = [UNK, EOS] + [w for w, _ in items]
        if vocab_size is not None:
            words = words[:vocab_size]
        return cls(words)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Read a vocabulary file (one word per line, id order)."""
        p = os.fspath(path)
        data = read_small_file(p, "vocabulary file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise InputError(f"invalid UTF-8 ({e.reason})", path=p,
                             position=f"line {line}, byte {e.start}") from None
        text = text.removesuffix("\n")
        words = text.split("\n") if text else []
        words = [w.removesuffix("\r") for w in words]
        return cls(words, source=p)

    # ------------------------------------------------------------ methods --
    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.words == other.words

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words, sha256={self.sha256()[:12]})"

    def encode(self, words: Iterable[str]) -> np.ndarray:
        """Ids (int32) of ``words``; words not in the vocabulary become ``unk_id``."""
        words = list(words)
        get = self.index.get
        return np.fromiter(map(get, words, [self.unk_id] * len(words)), dtype=np.int32,
                           count=len(words))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids``; an id outside ``[0, len)`` raises :class:`InputError`."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.words)):
            bad = int(arr[(arr < 0) | (arr >= len(self.words))][0])
            raise InputError(f"id {bad} outside the vocabulary [0, {len(self.words)})")
        w = self.words
        return [w[i] for i in arr.tolist()]

    def surface_tokens(self, words: list[str]) -> list[str]:
        """The text of each token of a line's ``words`` (no ``<eos>``): the words."""
        return words

    def token_words(self) -> np.ndarray:
        """Per id, the words of the normalised text a token starts (int32, (V,)): 1 for
        every token of a word vocabulary, a word and ``<eos>`` alike (see
        :func:`token_bytes`)."""
        return np.ones(len(self.words), dtype=np.int32)

    def token_bytes(self) -> np.ndarray:
        """Per id, the UTF-8 bytes of the normalised text a token stands for (int32,
        (V,)), where a line's words are joined by one space and the line ends in one
        newline: a word's bytes plus one (its space or the newline), 0 for ``<eos>``
        (1 on a line of its own: the counter adds it). ``<unk>`` counts as its
        own 5 bytes: from ids alone the word it replaced is unknown."""
        out = np.fromiter((len(w.encode("utf-8", "surrogatepass")) + 1 for w in self.words),
                          dtype=np.int32, count=len(self.words))
        out[self.eos_id] = 0
        return out

    def sha256(self) -> str:
        if self._sha is None:
            self._sha = hashlib.sha256("\n".join(self.words).encode("utf-8")).hexdigest()
        return self._sha

    def save(self, path: str | os.PathLike) -> None:
        """Write one word per line (atomically)."""
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            for w in self.words:
                f.write(w)
                f.write("\n")
