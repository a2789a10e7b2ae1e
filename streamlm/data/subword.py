"""Subword tokens: a SentencePiece model as streamlm's vocabulary.

A subword vocabulary (:class:`SubwordVocab`) is the SentencePiece model's pieces
in id order: its unknown piece is ``<unk>`` and its end-of-sentence piece
``<eos>`` (a model without one, such as CCNet's, gets ``<eos>`` as one more id
after its pieces). A model that ``streamlm prepare`` trains (:func:`train_model`)
has exactly those names, ``<unk>`` = 0 and ``<eos>`` = 1, then its 256 byte
pieces (byte fallback: no text is ever out of vocabulary), then the rest.

The accounting rule is :mod:`streamlm.data.tokenizer`'s, with pieces for words: a
line's tokens are the pieces of its *normalised text*, its words
(``line.split()``) joined by one space, then one ``<eos>``. SentencePiece
applies its own normalisation on top; the models ``prepare`` trains use the
identity rule, so decoding a line's pieces gives back its normalised text
exactly. A long line read in several pieces (:class:`~streamlm.data.text.LinePiece`)
gets the same pieces as the whole line, because SentencePiece never lets a
piece cross a space.

The ``sentencepiece`` package is an optional extra (``pip install
'streamlm[sentencepiece]'``); nothing here imports it before it is needed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable, Iterator
from itertools import chain

import numpy as np

from streamlm.data.vocab import EOS, UNK, Vocab
from streamlm.errors import InputError, UsageError, read_small_file

log = logging.getLogger("streamlm.data.subword")

KIND = "sentencepiece"
SPACE = "\u2581"  # SentencePiece's visible space: a piece that starts with it starts a word
# Training runs on this many threads whatever the machine: SentencePiece's result
# depends on the thread count, and ``prepare`` gives the same model every time.
TRAIN_THREADS = 4
SAMPLE_LINES = 1_000_000  # lines SentencePiece trains on (a uniform sample of larger inputs)
MAX_TRAIN_BYTES = 4000  # SentencePiece skips longer sentences; longer lines go in parts


def sentencepiece():
    """The ``sentencepiece`` module, or UsageError saying how to install it."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise UsageError("subword tokens need the sentencepiece package: "
                         "pip install 'streamlm[sentencepiece]'") from None
    return spm


def _threads() -> int:
    from streamlm.compute import cpus

    return cpus.threads()


def normalise(words: Iterable[str]) -> str:
    """A line's normalised text: its words joined by one space."""
    return " ".join(words)


class SubwordVocab(Vocab):
    """A SentencePiece model (``proto``: its serialised ``ModelProto``) as a vocabulary."""

    tokenizer = KIND

    def __init__(self, proto: bytes, *, source: str | None = None):
        spm = sentencepiece()
        where = source or "the SentencePiece model"
        proto = bytes(proto)
        if not proto:
            raise InputError("empty file, not a SentencePiece model", path=where)
        try:
            sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:
            raise InputError(f"not a SentencePiece model ({_reason(e)})", path=where) from None
        words = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        if not words:
            raise InputError("a SentencePiece model with no pieces", path=where)
        words[sp.unk_id()] = UNK
        if sp.eos_id() >= 0:
            words[sp.eos_id()] = EOS
        else:  # no end-of-sentence piece (CCNet's models): one more id
            words.append(EOS)
        try:
            super().__init__(words, source=source)
        except InputError as e:  # a piece streamlm cannot take as a token
            raise InputError(f"unusable SentencePiece pieces: {e}", path=where) from None
        self.proto = proto
        self.sp = sp
        self.threads = _threads()
        self._starts: np.ndarray | None = None
        self._byte = np.array([sp.is_byte(i) for i in range(sp.get_piece_size())]
                              + [False] * (len(words) - sp.get_piece_size()), dtype=np.bool_)

    @classmethod
    def load(cls, path: str | os.PathLike, *, sha256: str | None = None,
             words: Vocab | None = None) -> SubwordVocab:
        """A SentencePiece ``.model`` file; with ``sha256`` and ``words`` (a prepared
        directory's manifest and vocab.txt), checked against them."""
        p = os.fspath(path)
        data = read_small_file(p, "SentencePiece model file")
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise InputError("SentencePiece model differs from the one the manifest names "
                             "(sha256)", path=p)
        sv = cls(data, source=p)
        if words is not None and sv.words != words.words:
            raise InputError(f"the SentencePiece model's {len(sv)} pieces do not match the "
                             f"shards' vocabulary ({len(words)} words in vocab.txt)", path=p)
        return sv

    def __repr__(self) -> str:
        return f"SubwordVocab({len(self)} pieces, sha256={self.sha256()[:12]})"

    # ---------------------------------------------------------- encoding --
    def encode(self, words: Iterable[str]) -> np.ndarray:
        """Ids (int32) of the pieces of ``words`` (one line's, no ``<eos>``)."""
        return np.array(self.sp.encode(normalise(words), out_type=int), dtype=np.int32)

    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The pieces of each normalised text (no newline, no ``<eos>``), in one batch
        call on all the cores: (ids int32 back to back, pieces per text int64)."""
        if not texts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        out = self.sp.encode(texts, out_type=int, num_threads=self.threads)
        counts = np.fromiter(map(len, out), dtype=np.int64, count=len(out))
        ids = np.fromiter(chain.from_iterable(out), dtype=np.int32, count=int(counts.sum()))
        return ids, counts

    def surfaces(self, text: str) -> list[str]:
        """The text each piece of the normalised ``text`` covers (its space included: a
        word's first piece is ``" the"`` after another word). A byte piece covers the
        character it ends ("" for the first bytes of a character)."""
        if not text:
            return []
        try:
            om = self.sp.encode(text, return_type="offset_mapping")
        except (TypeError, ValueError):  # pragma: no cover - sentencepiece < 0.2.1
            return [self.sp.decode([i]) for i in self.sp.encode(text, out_type=int)]
        return [text[a:b] for a, b in om["offsets"]]

    def surface_tokens(self, words: list[str]) -> list[str]:
        """The text of each piece of a line's ``words`` (see :meth:`surfaces`)."""
        return self.surfaces(normalise(words))

    def detokenize(self, ids: Iterable[int]) -> str:
        """The text of pieces (no ``<eos>`` among them), as SentencePiece decodes it."""
        return self.sp.decode([int(i) for i in ids])

    # ------------------------------------------------ counts of the text --
    def token_words(self) -> np.ndarray:
        """1 for a piece that starts a word (it starts with ``▁``) and for ``<eos>``."""
        if self._starts is None:
            self._starts = np.array([w.startswith(SPACE) for w in self.words], dtype=np.int32)
            self._starts[self.eos_id] = 1
        return self._starts

    def token_bytes(self) -> np.ndarray:
        """The bytes of the text a piece stands for, ``▁`` as one space (a word's first
        piece brings its space, or, first in the line, the newline's byte); a byte
        piece 1, ``<eos>`` and the other control pieces 0, ``<unk>`` 1."""
        out = np.array([len(w.replace(SPACE, " ").encode("utf-8", "surrogatepass"))
                        for w in self.words], dtype=np.int32)
        out[self._byte] = 1
        for i in range(len(self.words)):
            if i < self.sp.get_piece_size() and self.sp.is_control(i):
                out[i] = 0
        out[self.unk_id] = 1
        out[self.eos_id] = 0
        return out


def _reason(e: Exception) -> str:
    """SentencePiece's message without its source location (``... [check] message``)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "] " in msg:
        msg = msg.rsplit("] ", 1)[1] or msg
    return msg.removeprefix("INTERNAL: ").strip() or "unreadable"


def train_model(sentences: Iterable[str], pieces: int, *, model_type: str = "unigram",
                sample_lines: int = SAMPLE_LINES, seed: int = 0) -> bytes:
    """Train a SentencePiece model on ``sentences`` (normalised lines, streamed: the
    trainer keeps a uniform sample of ``sample_lines`` of them, its own
    ``input_sentence_size`` and shuffle); returns the serialised model.

    Byte fallback, identity normalisation, ``<unk>`` = 0, ``<eos>`` = 1, no ``<s>``
    or padding. The same sentences, ``pieces`` and ``seed`` give the same model.
    An error the iterator raises (bad input) is raised as it is.
    """
    spm = sentencepiece()
    if pieces < 1:
        raise UsageError(f"--pieces must be positive, got {pieces}")
    if sample_lines < 1:
        raise UsageError(f"--sample-lines must be positive, got {sample_lines}")
    if model_type not in ("unigram", "bpe"):
        raise UsageError(f"the piece model must be unigram or bpe, got {model_type!r}")
    failed: list[BaseException] = []
    seen = [0]

    def feed() -> Iterator[str]:
        try:
            for s in sentences:
                for part in _parts(s):
                    seen[0] += 1
                    yield part
        except BaseException as e:  # SentencePiece would turn it into a RuntimeError
            failed.append(e)
            raise

    out = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=feed(), model_writer=out, vocab_size=pieces,
            model_type=model_type, byte_fallback=True, unk_id=0, eos_id=1, bos_id=-1,
            pad_id=-1, unk_piece=UNK, eos_piece=EOS, normalization_rule_name="identity",
            input_sentence_size=sample_lines, shuffle_input_sentence=True,
            hard_vocab_limit=False, num_threads=TRAIN_THREADS, minloglevel=2)
    except RuntimeError as e:
        if failed:
            raise failed[0] from None
        if not seen[0]:
            raise InputError("no text to train the SentencePiece model on: the input is "
                             "empty") from None
        reason = _reason(e).replace("vocab_size", "--pieces")
        raise UsageError(f"SentencePiece training failed: {reason}") from None
    if failed:  # pragma: no cover - the trainer stopped reading early
        raise failed[0]
    return out.getvalue()


def _parts(line: str) -> Iterator[str]:
    """A normalised line, in parts of at most about MAX_TRAIN_BYTES cut at spaces
    (SentencePiece leaves longer sentences out of training); blank lines, none."""
    if len(line) * 4 <= MAX_TRAIN_BYTES or len(line.encode("utf-8")) <= MAX_TRAIN_BYTES:
        if line:
            yield line
        return
    part: list[str] = []
    size = 0
    for w in line.split(" "):
        n = len(w.encode("utf-8")) + 1
        if part and size + n > MAX_TRAIN_BYTES:
            yield " ".join(part)
            part, size = [], 0
        part.append(w)
        size += n
    if part:
        yield " ".join(part)
