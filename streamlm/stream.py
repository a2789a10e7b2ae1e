"""A scoring stream of the Python API (``streamlm.Model.stream``): its state, running
totals and, with dynamic evaluation, its adapting weights, across ``feed`` calls."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from streamlm.jobs.metrics import LN10, summarize

_CHUNK = 4096  # time steps per model call


class Stream:
    """A scoring stream: keeps its hidden state and running totals across ``feed`` s.

    With ``dynamic`` (streamlm.jobs.dynamic.Settings, or a dict of its fields, and
    ``rms`` for the rms method) the weights adapt across feeds as ``streamlm score
    --dynamic`` does: segments counted from the stream's start, each scored before its
    step (the numbers of the CLI to float32's rounding). ``reset`` returns to the
    trained weights. The KenLM-style ``State`` API stays static: a decoder's beam
    cannot carry weights."""

    def __init__(self, lm, dynamic=None, rms: np.ndarray | None = None):
        self.lm = lm
        self._adapter = None
        if dynamic is not None:
            from streamlm.jobs.dynamic import Adapter, Settings

            settings = dynamic if isinstance(dynamic, Settings) else Settings.of(dynamic)
            self._adapter = Adapter(lm.model.params, settings.check(), rms)
            self._rnn = self._adapter.rnn
        else:
            self._rnn = lm._new_rnn()
        self.reset()

    def reset(self) -> None:
        """Back to the start: zero state, previous token ``<eos>``, zero totals (and the
        trained weights)."""
        self._h = np.zeros((1, self._rnn.state_size), dtype=self.lm.model.params.dtype)
        self._prev = self.lm.vocab.eos_id
        self._start = True
        if self._adapter is not None:
            self._adapter.reset()
            self._seg: list[int] = []  # the tokens of the segment not yet learned from
            self._seg_h, self._seg_prev = self._h, self._prev
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
        if self._adapter is not None:
            return self._feed_dynamic(ids, out)
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

    def _feed_dynamic(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """feed() of an adapting stream: each piece up to a segment's end scored by the
        weights as they are; a completed segment then learned from (from the state
        before it), as the CLI does."""
        ad, K, a = self._adapter, self._adapter.settings.segment, 0
        while a < len(ids):
            piece = ids[a:a + K - len(self._seg)]
            xs = np.empty((1, len(piece)), dtype=np.int32)
            xs[0, 0] = self._prev
            xs[0, 1:] = piece[:-1]
            nll, self._h = ad.segment(xs, piece[None, :].astype(np.int32), self._h,
                                      learn=False)
            self._prev = int(piece[-1])
            self._seg.extend(piece.tolist())
            lp = -nll[0]
            oovm = piece == self.lm.vocab.unk_id
            self.tokens += len(piece)
            self.oov += int(oovm.sum())
            self.logprob += float(lp.sum())
            self._logprob_oov += float(lp[oovm].sum())
            out[a:a + len(piece)] = lp / LN10
            a += len(piece)
            if len(self._seg) == K:  # the segment is whole: its step
                seg = np.array(self._seg, dtype=np.int32)
                xs = np.concatenate([[self._seg_prev], seg[:-1]])[None, :].astype(np.int32)
                _, self._h = ad.segment(xs, seg[None, :], self._seg_h)
                self._seg, self._seg_h, self._seg_prev = [], self._h, int(seg[-1])
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
