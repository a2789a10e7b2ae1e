"""A Python API in the spirit of KenLM's ``kenlm.Model``.

>>> lm = streamlm.LanguageModel("model.npz")          # or streamlm.load(...)
>>> lm.score("the cat sat", bos=True, eos=True)       # log10 probability, like KenLM
>>> lm.perplexity("the cat sat")                      # 10 ** (-score / tokens), OOVs included
>>> for log10p, oov in lm.full_scores("the cat sat"): ...
>>> s = lm.stream()                                   # carried state across feeds
>>> s.feed("the cat sat", eos=True); s.feed(["on", "the", "mat"]); s.perplexity

A sentence is ``text.split()`` plus, with ``eos=True``, one ``<eos>``, scored
from a zero state with ``<eos>`` as the previous token (the RNN's sentence
start; KenLM's ``<s>``). A word maps to ``<unk>`` when it is not in the
model's vocabulary and then counts as an OOV. ``bos=False`` has no meaning for
this model (there is no other start state): it raises ValueError; use
:meth:`LanguageModel.stream` to score text in the context of what came before.

``engine="numba"`` uses the compiled kernels (exactly the numbers of
``streamlm score --engine numba``); ``engine="numpy"`` starts instantly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np

from streamlm.engines import scoring_model
from streamlm.metrics import LN10, summarize

_CHUNK = 4096


class Stream:
    """A scoring stream: keeps its hidden state and running totals across ``feed`` s."""

    def __init__(self, lm: LanguageModel):
        self.lm = lm
        self._rnn = lm._new_rnn()
        self.reset()

    def reset(self) -> None:
        """Back to the start: zero state, previous token ``<eos>``, zero totals."""
        self._h = np.zeros((1, self.lm.config.H), dtype=self.lm.model.params.dtype)
        self._prev = self.lm.vocab.eos_id
        self._start = True
        self.tokens = 0
        self.oov = 0
        self.logprob = 0.0  # natural log, summed
        self._logprob_oov = 0.0

    def feed(self, tokens: str | Iterable[str] | Iterable[int] | np.ndarray,
             eos: bool = False) -> np.ndarray:
        """Score ``tokens`` in the context of everything fed before.

        ``tokens``: a string (split on whitespace), a list of words, or token ids
        (ints in ``[0, V)``). With ``eos=True`` one ``<eos>`` is appended.
        Returns the log10 probability of each token (float64 array).
        """
        ids = self.lm.encode(tokens)
        if eos:
            ids = np.append(ids, np.int32(self.lm.vocab.eos_id))
        out = np.empty(len(ids), dtype=np.float64)
        for a in range(0, len(ids), _CHUNK):
            chunk = ids[a:a + _CHUNK]
            xs = np.empty((1, len(chunk)), dtype=np.int32)
            xs[0, 0] = self._prev
            xs[0, 1:] = chunk[:-1]
            reset = np.zeros_like(xs, dtype=np.uint8)
            reset[0, 0] = self._start
            nll, self._h = self._rnn.nll(xs, chunk[None, :], self._h, reset=reset)
            self._prev = int(chunk[-1])
            self._start = False
            lp = -nll[0]
            oovm = chunk == self.lm.vocab.unk_id
            self.tokens += len(chunk)
            self.oov += int(oovm.sum())
            self.logprob += float(lp.sum())
            self._logprob_oov += float(lp[oovm].sum())
            out[a:a + len(chunk)] = lp / LN10
        return out

    @property
    def state(self) -> np.ndarray:
        """The current hidden state (H,) (a copy)."""
        return self._h[0].copy()

    @property
    def log10prob(self) -> float:
        return self.logprob / LN10

    def summary(self) -> dict:
        """tokens, oov, logprob, log10prob, perplexity, perplexity_excl_oov, bits_per_token."""
        return summarize(self.tokens, self.oov, self.logprob, self._logprob_oov)

    @property
    def perplexity(self) -> float | None:
        return self.summary()["perplexity"]

    @property
    def perplexity_excl_oov(self) -> float | None:
        return self.summary()["perplexity_excl_oov"]


class LanguageModel:
    """A loaded streamlm model with KenLM-like scoring methods."""

    def __init__(self, path: str | os.PathLike, engine: str = "numba", dtype=np.float32):
        from streamlm.params import load_model

        if engine not in ("numba", "numpy"):
            raise ValueError(f"engine must be numba or numpy, got {engine!r}")
        self.path = os.fspath(path)
        self.model = load_model(path, dtype=dtype)
        self.vocab = self.model.vocabulary()  # a subword model: its SentencePiece pieces
        self.engine = engine

    def __repr__(self) -> str:
        c = self.config
        return f"LanguageModel({self.path!r}, V={c.V}, D={c.D}, H={c.H}, engine={self.engine})"

    @property
    def config(self):
        return self.model.config

    def __contains__(self, word: str) -> bool:
        """True when ``word`` is in the vocabulary (KenLM: ``word in model``)."""
        return word in self.vocab.index

    def _new_rnn(self):
        return scoring_model(self.model.params, self.engine)

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

    def stream(self) -> Stream:
        """A new :class:`Stream` (zero state, previous token ``<eos>``)."""
        return Stream(self)

    def _sentence(self, text: str, bos: bool, eos: bool) -> Stream:
        if not bos:
            raise ValueError("bos=False: an RNN model has no context-free start; use "
                             "LanguageModel.stream() to score text after some context")
        s = self.stream()
        s._scores = s.feed(text, eos=eos)
        return s

    def score(self, text: str, bos: bool = True, eos: bool = True) -> float:
        """log10 probability of the sentence ``text`` (KenLM's ``Model.score``)."""
        return self._sentence(text, bos, eos).log10prob

    def perplexity(self, text: str, bos: bool = True, eos: bool = True) -> float | None:
        """``10 ** (-score / tokens)`` with OOVs included (KenLM's ``Model.perplexity``)."""
        return self._sentence(text, bos, eos).perplexity

    def full_scores(self, text: str, bos: bool = True, eos: bool = True
                    ) -> Iterator[tuple[float, bool]]:
        """Per token (``<eos>`` last when ``eos``): ``(log10 probability, is_oov)``."""
        s = self._sentence(text, bos, eos)
        ids = self.encode(text)
        oov = (ids == self.vocab.unk_id).tolist() + ([False] if eos else [])
        yield from zip(s._scores.tolist(), oov)


def load(path: str | os.PathLike, **kwargs) -> LanguageModel:
    """Load a model file as a :class:`LanguageModel`."""
    return LanguageModel(path, **kwargs)
