"""KenLM's Python API (``kenlm.Model``) for streamlm's RNN models, and a batch call.

>>> lm = streamlm.Model("model.npz")                   # streamlm.LanguageModel: the same
>>> lm.score("the cat sat", bos=True, eos=True)        # log10 p(the cat sat </s> | <s>)
>>> lm.perplexity("the cat sat")                       # 10 ** (-score / (words + 1))
>>> for log10p, ngram_length, oov in lm.full_scores("the cat sat"): ...
>>> s, out = streamlm.State(), streamlm.State()
>>> lm.BeginSentenceWrite(s)
>>> lm.BaseScore(s, "the", out)                        # log10 p(the | <s>); out: after "the"
>>> lm.score_batch(["the cat sat", "a dog"])           # many sentences, one model call
>>> s = lm.stream(); s.feed("the cat", eos=True)       # carried state across feeds

A sentence is ``sentence.split()``; a word not in the vocabulary is ``<unk>`` and
an OOV (a literal ``<unk>`` too), as in KenLM, and ``</s>`` is the end of
sentence, streamlm's ``<eos>`` (unless the vocabulary has a word ``</s>``).

**The start of a sentence.** ``bos=True`` / :meth:`Model.BeginSentenceWrite`
(KenLM's ``<s>``) is the zero hidden state with ``<eos>`` as the previous word:
how ``streamlm score`` starts a stream, a line or a document, and how the model
saw every sentence after the first in training. ``bos=False`` /
:meth:`Model.NullContextWrite` is a context-free start: the zero hidden state
with no previous word. The first word is then predicted from the zero state
itself, ``p(w) = softmax(affine_b)`` (a class model: its two biases), the
model's context-free distribution; after it the state is the zero state with
that word as the previous one, as at the start of every row of a training
batch. ``State()`` as constructed is the null context, as in KenLM.

**ngram_length.** An RNN has no n-gram order: ``ngram_length`` is the number of
tokens of context the state has seen since its last reset, plus one. ``<s>``
counts as one token of context (KenLM gives 2 to a first word whose bigram with
``<s>`` it has); a null context has seen none (the first word gets 1).

**States are values.** A :class:`State` holds the hidden state before the next
step (a read-only array, shared by copies), the previous word and the context
length: it is copied (``copy.copy``), compared and hashed by those, never
holds the weights, and ``BaseScore`` writes a new one into ``out_state``
without changing ``in_state``.

``engine="numba"`` uses the compiled kernels (the numbers of ``streamlm score``
to ~1e-6); ``engine="numpy"`` starts instantly and costs less per
``BaseScore`` call.

**Loading options and the order.** ``Model(path, config)`` takes KenLM's
:class:`Config` (streamlm's, or a ``kenlm.Config``) and :class:`LoadMethod` /
:class:`ARPALoadComplain` are KenLM's constants, so code that sets them runs
unchanged; none of them changes how an RNN model loads (see :class:`Config`).
``Model.order`` is ``sys.maxsize``: an RNN's context has no length limit (see
:attr:`Model.order`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from streamlm.jobs.metrics import LN10
from streamlm.kenlm_config import ARPALoadComplain, Config, LoadMethod  # noqa: F401
from streamlm.nn.engines import scoring_model
from streamlm.stream import Stream

_CHUNK = 4096  # time steps per model call
_ROWS = 64  # sentences per model call in score_batch
_END = "</s>"  # KenLM's end of sentence: streamlm's <eos>


class FullScoreReturn(NamedTuple):
    """What ``BaseFullScore`` returns (KenLM's): log10 probability, context length + 1
    (see the module doc), and whether the word is an OOV."""

    log_prob: float
    ngram_length: int
    oov: bool


@functools.total_ordering
class State:
    """The context of the next word (KenLM's ``State``); see the module doc.

    ``State()`` is the null context; ``Model.BeginSentenceWrite`` /
    ``NullContextWrite`` / ``BaseScore`` write into one. States score with the
    trained weights: dynamic evaluation (``Model.stream(dynamic=...)``) is for a
    stream, since a decoder's beam of states cannot carry weights of its own.
    """

    __slots__ = ("_h", "_prev", "_length", "_hash")

    def __init__(self):
        self._h: np.ndarray | None = None  # (H,) read-only: the state before the next step
        self._prev = -1  # the word fed at the next step (-1: none, a null context)
        self._length = 0  # tokens of context since the last reset
        self._hash: int | None = None

    @property
    def length(self) -> int:
        """Tokens of context seen since the last reset."""
        return self._length

    def _set(self, h: np.ndarray | None, prev: int, length: int) -> None:
        if h is not None:
            if not h.any():
                h = None  # the zero state has one spelling, so equal states hash equal
            elif h.flags.writeable:
                h = h.copy()
                h.flags.writeable = False
        self._h, self._prev, self._length, self._hash = h, int(prev), int(length), None

    def _key(self) -> tuple:
        return (self._length, self._prev, b"" if self._h is None else self._h.tobytes())

    def __eq__(self, other) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        if self._length != other._length or self._prev != other._prev:
            return False
        a, b = self._h, other._h
        return a is b or (a is not None and b is not None and a.shape == b.shape
                          and bool(np.array_equal(a, b)))

    def __lt__(self, other) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._key())
        return self._hash

    def __copy__(self) -> State:
        s = State.__new__(State)
        s._h, s._prev, s._length, s._hash = self._h, self._prev, self._length, self._hash
        return s

    def __deepcopy__(self, memo) -> State:
        return self.__copy__()  # the hidden state is read-only: sharing it is a copy

    def __repr__(self) -> str:
        kind = "null context" if self._prev < 0 else f"previous word {self._prev}"
        return f"State(length={self._length}, {kind})"


class Model:
    """A streamlm model file behind KenLM's ``kenlm.Model`` methods (see the module doc).

    ``Model(path, config)`` as ``kenlm.Model(path, config)``: ``config`` is a
    :class:`Config` (or a ``kenlm.Config``), kept as ``load_config``; its settings
    change nothing for an RNN (see :class:`Config`). ``engine`` and ``dtype`` are
    streamlm's own, by keyword.
    """

    def __init__(self, path: str | os.PathLike, config: Config | None = None,
                 engine: str = "numba", dtype=np.float32):
        from streamlm.nn.params import load_model

        self.load_config = Config.of(config)
        if engine not in ("numba", "numpy"):
            raise ValueError(f"engine must be numba or numpy, got {engine!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.model = load_model(path, dtype=dtype)
        self.vocab = self.model.vocabulary()  # a subword model: its SentencePiece pieces
        self.engine = engine
        self._rnn = None
        self._null: np.ndarray | None = None
        self._end = self.vocab.index.get(_END, self.vocab.eos_id)

    def __repr__(self) -> str:
        c = self.config
        return (f"<Model from {os.path.basename(self.path)}: V={c.V}, D={c.D}, H={c.H}, "
                f"engine={self.engine}>")

    def __reduce__(self):  # pickles as its path, as kenlm.Model does
        return (Model, (self.path, self.load_config, self.engine, self.model.params.dtype))

    @property
    def config(self):
        """The model's dimensions (:class:`~streamlm.nn.params.ModelConfig`: V, D, H...);
        KenLM's loading options are ``load_config``."""
        return self.model.config

    @property
    def order(self) -> int:
        """KenLM's n-gram order, for code that reads it: ``sys.maxsize``, no limit.

        An RNN has no n-gram order: every word since the state's last reset (the start
        of the sentence, or the null context) conditions the next one, however far
        back. Code written for KenLM reads ``order`` as "the next word depends on the
        last ``order - 1`` words only": pyctcdecode (its ``LanguageModel`` wraps a
        ``kenlm.Model``) reads it only in the decoder's ``prune_history``, which
        merges the beams whose last ``order - 1`` words agree (an n-gram model cannot
        tell them apart) and keeps the better one. Any finite number would merge beams
        that the RNN scores differently, silently; with no limit, ``order - 1`` words
        are all of a beam's words, and only beams of the very same text merge, which
        is exact. Use it as a bound, never as a size (``range(order)``).
        """
        return sys.maxsize

    def __contains__(self, word: str) -> bool:
        """True when ``word`` is a word of the model, not ``<unk>`` (KenLM's ``word in
        model``: ``<unk>`` itself is not in it)."""
        return self._word_id(word) != self.vocab.unk_id

    # ---------------------------------------------------------------- words --
    def _new_rnn(self):
        """A scoring model for a stream of its own (a numba one shares the model's
        input table)."""
        rnn = self.rnn
        return rnn.sharing() if hasattr(rnn, "sharing") else scoring_model(
            self.model.params, self.engine)

    @property
    def rnn(self):
        if self._rnn is None:
            self._rnn = scoring_model(self.model.params, self.engine)
        return self._rnn

    def _word_id(self, word: str) -> int:
        if word == _END:
            return self._end
        return self.vocab.index.get(word, self.vocab.unk_id)

    def _sentence_ids(self, sentence: str | Sequence[str], eos: bool) -> np.ndarray:
        words = sentence.split() if isinstance(sentence, str) else list(sentence)
        ids = self.vocab.encode(words)
        if _END in words and _END not in self.vocab.index:
            ids[[k for k, w in enumerate(words) if w == _END]] = self._end
        return np.append(ids, np.int32(self.vocab.eos_id)) if eos else ids

    def encode(self, tokens) -> np.ndarray:
        """Ids (int32) of a string, a list of words or a list/array of ids."""
        if isinstance(tokens, str):
            return self.vocab.encode(tokens.split())
        if isinstance(tokens, np.ndarray):
            seq = tokens
        else:
            seq = list(tokens)
            if all(isinstance(t, str) for t in seq):
                return self.vocab.encode(seq)
        arr = np.asarray(seq)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int32)
        if arr.dtype.kind not in "iu":
            raise TypeError("tokens must be a string, words, or integer ids")
        V = len(self.vocab)
        if arr.min() < 0 or arr.max() >= V:
            bad = arr[(arr < 0) | (arr >= V)][0]
            raise ValueError(f"token id {int(bad)} outside the vocabulary [0, {V})")
        return arr.astype(np.int32).reshape(-1)

    # --------------------------------------------------------------- states --
    def BeginSentenceWrite(self, state: State) -> None:
        """Make ``state`` the start of a sentence (KenLM's ``<s>``; see the module doc)."""
        state._set(None, self.vocab.eos_id, 1)

    def NullContextWrite(self, state: State) -> None:
        """Make ``state`` the null context: no hidden state, no previous word."""
        state._set(None, -1, 0)

    def _begin(self, bos: bool) -> State:
        s = State()
        if bos:
            self.BeginSentenceWrite(s)
        return s

    def BaseScore(self, in_state: State, word: str, out_state: State) -> float:
        """log10 p(word | in_state); writes the state after ``word`` into ``out_state``."""
        return self.BaseFullScore(in_state, word, out_state).log_prob

    def BaseFullScore(self, in_state: State, word: str, out_state: State) -> FullScoreReturn:
        """:class:`FullScoreReturn` of ``word`` after ``in_state``; writes ``out_state``."""
        wid = self._word_id(word)
        length = in_state._length
        if in_state._prev < 0:
            lp = float(self._null_logprobs()[wid])
            h = in_state._h
        else:
            h0 = self._zero(1) if in_state._h is None else in_state._h[None, :]
            nll, hT = self.rnn.nll(np.array([[in_state._prev]], np.int32),
                                   np.array([[wid]], np.int32), h0)
            lp, h = -float(nll[0, 0]), hT[0]
        out_state._set(h, wid, length + 1)
        return FullScoreReturn(lp / LN10, length + 1, wid == self.vocab.unk_id)

    # ------------------------------------------------------------ sentences --
    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """log10 probability of ``sentence`` (KenLM's ``Model.score``)."""
        ids = self._sentence_ids(sentence, eos)
        return float(self._run([self._begin(bos)], [ids])[0][0].sum() / LN10)

    def perplexity(self, sentence: str, bos: bool = True, eos: bool = True) -> float | None:
        """``10 ** (-score / tokens)``, OOVs included; tokens are the words and, with
        ``eos``, ``</s>`` (KenLM's ``Model.perplexity``). None for no tokens."""
        ids = self._sentence_ids(sentence, eos)
        if not len(ids):
            return None
        lp = self._run([self._begin(bos)], [ids])[0][0]
        return float(10.0 ** (-lp.sum() / LN10 / len(ids)))

    def full_scores(self, sentence: str, bos: bool = True, eos: bool = True
                    ) -> Iterator[tuple[float, int, bool]]:
        """Per word, then ``</s>`` with ``eos``: ``(log10 probability, ngram_length,
        oov)`` (KenLM's ``Model.full_scores``; ``ngram_length``: see the module doc)."""
        ids = self._sentence_ids(sentence, eos)
        start = self._begin(bos)
        lp = self._run([start], [ids])[0][0] / LN10
        oov = ids == self.vocab.unk_id
        if eos:
            oov[-1] = False
        for k, (p, o) in enumerate(zip(lp.tolist(), oov.tolist())):
            yield (p, start._length + k + 1, o)

    def score_batch(self, sentences: Sequence[str | Sequence[str]], bos: bool = True,
                    eos: bool = True, batch: int = _ROWS) -> np.ndarray:
        """log10 probability of each sentence (float64, (len(sentences),)): the same
        numbers as ``score`` (to ~1e-6), scored as parallel rows of one model call per
        ``batch`` sentences of similar length. A sentence is a string or a list of words."""
        seqs = [self._sentence_ids(s, eos) for s in sentences]
        start = self._begin(bos)
        lps, _ = self._run([start] * len(seqs), seqs, rows=batch)
        return np.array([lp.sum() for lp in lps], dtype=np.float64) / LN10

    # ----------------------------------------------------------------- core --
    def _zero(self, n: int) -> np.ndarray:
        return np.zeros((n, self.rnn.state_size), dtype=self.model.params.dtype)

    def _null_logprobs(self) -> np.ndarray:
        """ln p(w | zero state) for every word id (float64, (V,)): the output layer on a
        zero hidden state is its biases."""
        if self._null is None:
            p = self.model.params
            if p.classes is None:
                b = p.affine_b.astype(np.float64)
                self._null = b - np.logaddexp.reduce(b)
            else:
                cl = p.classes
                b = p.affine_b.astype(np.float64)  # class order
                cb = p.class_b.astype(np.float64)
                lw = np.empty_like(b)
                for c in range(cl.C):
                    s, e = cl.start[c], cl.start[c + 1]
                    lw[s:e] = b[s:e] - np.logaddexp.reduce(b[s:e])
                lw += (cb - np.logaddexp.reduce(cb))[cl.cls]
                self._null = lw[cl.rank]  # word-id order
        return self._null

    def _run(self, starts: list[State], seqs: list[np.ndarray], rows: int = _ROWS
             ) -> tuple[list[np.ndarray], list[State]]:
        """Per row: ln p of each id of ``seqs[n]`` after ``starts[n]`` (float64), and the
        state after the row's last id. Rows are sorted by length and scored ``rows`` at a
        time, ``_CHUNK`` steps per call, each with its own carried state."""
        out = [np.empty(len(ids), dtype=np.float64) for ids in seqs]
        ends = [None] * len(seqs)
        work = []  # (row, offset, h0 or None, previous word, ids through the RNN)
        null = None
        for k, (st, ids) in enumerate(zip(starts, seqs)):
            off, prev = 0, st._prev
            if len(ids) and prev < 0:  # a null context: the first word without a step
                null = self._null_logprobs() if null is None else null
                out[k][0] = null[ids[0]]
                off, prev = 1, int(ids[0])
            if off == len(ids):
                end = State()
                end._set(st._h, prev, st._length + off)
                ends[k] = end
                continue
            work.append((k, off, st._h, prev, ids[off:]))
        work.sort(key=lambda w: len(w[4]))
        eos = self.vocab.eos_id
        for g in range(0, len(work), rows):
            grp = work[g:g + rows]
            n = len(grp)
            lens = np.array([len(w[4]) for w in grp], dtype=np.int64)
            h = self._zero(n)
            for r, w in enumerate(grp):
                if w[2] is not None:
                    h[r] = w[2]
            T = int(lens.max())
            for a in range(0, T, _CHUNK):
                b = min(T, a + _CHUNK)
                xs = np.full((n, b - a), eos, dtype=np.int32)
                ts = np.full((n, b - a), -1, dtype=np.int32)
                for r, (_, _, _, prev, ids) in enumerate(grp):
                    seg = ids[a:b]
                    if not len(seg):
                        continue
                    xs[r, 0] = prev if a == 0 else ids[a - 1]
                    xs[r, 1:len(seg)] = seg[:-1]
                    ts[r, :len(seg)] = seg
                nll, h = self.rnn.nll(xs, ts, h, lengths=np.clip(lens - a, 0, b - a))
                for r, (k, off, _, _, ids) in enumerate(grp):
                    m = min(len(ids), b) - a
                    if m > 0:
                        out[k][off + a:off + a + m] = -nll[r, :m]
            for r, (k, off, _, _, ids) in enumerate(grp):
                end = State()
                end._set(h[r], int(ids[-1]), starts[k]._length + off + len(ids))
                ends[k] = end
        return out, ends

    def stream(self, dynamic=None, rms: np.ndarray | None = None) -> Stream:
        """A new :class:`Stream` (zero state, previous token ``<eos>``); with ``dynamic``
        (streamlm.jobs.dynamic.Settings or a dict of its fields) it adapts across
        feeds (see :class:`Stream`)."""
        return Stream(self, dynamic, rms)


LanguageModel = Model  # the name of streamlm's first API (and of KenLM's old one)


def load(path: str | os.PathLike, **kwargs) -> Model:
    """Load a model file as a :class:`Model`."""
    return Model(path, **kwargs)
