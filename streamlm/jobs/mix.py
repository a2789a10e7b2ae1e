"""Interpolation with a KenLM n-gram model: ``p = L P_rnn + (1 - L) P_ngram`` per token.

Linear in probability, token by token, as rnnlm's ``-lm-prob`` / ``-lambda``
(Mikolov et al. 2011). The n-gram probabilities come from the ``kenlm`` Python
module (``pip install 'streamlm[kenlm]'``; an ARPA file, compressed or not, or a
binary of KenLM's ``build_binary``).

**Token alignment.** Both models see the same tokens: the n-gram model reads the
input's own words a second time (``Source.surface_words``; token shards: the
vocabulary's words of their ids, ``<unk>`` for an OOV), a line at a time,
each line from ``<s>`` and ending in ``</s>``, which is the RNN's ``<eos>`` of
that line (a blank line is its ``</s>`` alone; in documents a blank line has
no token for either). So the n-gram state is per line whatever the RNN's
``--reset``, and a resumed run re-enters the n-gram stream at the start of the
line it stopped in and skips to the token.

**OOVs.** A token is an OOV of the mix when it is an OOV of either model: the
RNN maps it to ``<unk>``, or KenLM to its id 0 (``<unk>``; both for a literal
``<unk>``). As in KenLM, an OOV is still scored, with each model's ``<unk>``
probability mixed, and counted: it is in the perplexity including OOVs and
left out of the perplexity excluding OOVs (the figure SRILM's ``-ppl``
reports, which drops OOVs). ``</s>`` is never an OOV.

**Tuning.** :func:`best_lambda` finds the L that minimises the perplexity
(including OOVs) of a held-out file, by golden-section search on [0, 1] (the
objective is convex in L), to 1e-4.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator

import numpy as np

from streamlm.data.vocab import EOS, Vocab
from streamlm.errors import ModelFileError, UsageError
from streamlm.jobs.metrics import LN10, summarize

log = logging.getLogger(__name__)

SUMS = ("rnn_logprob", "rnn_logprob_oov", "ngram_logprob", "ngram_logprob_oov", "rnn_oov",
        "ngram_oov")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """KenLM's loader writes progress bars to file descriptor 2: keep them off the
    terminal (the lines come back in the list, logged at debug level)."""
    got: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (a test runner's capture)
        yield got
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield got
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            got.extend(tmp.read().decode("utf-8", "replace").splitlines())


def load_ngram(path: str | os.PathLike):
    """The ``kenlm.Model`` at ``path``; ModelFileError naming it when it cannot be."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ModelFileError("no such file (the --mix n-gram model)", path=p)
    if os.path.isdir(p):
        raise ModelFileError("is a directory, not a KenLM model", path=p)
    try:
        import kenlm
    except ImportError:
        raise UsageError(f"{p}: --mix needs the kenlm Python module: pip install "
                         "'streamlm[kenlm]'") from None
    with _stderr_captured() as said:
        try:
            model = kenlm.Model(p)
        except (OSError, RuntimeError) as e:
            err = e
        else:
            err = None
    for line in said:
        log.debug("kenlm: %s", line)
    if err is not None:
        why = " ".join(str(err).split())
        # drop KenLM's source location: "(lm/read_arpa.cc:65 in void ... threw X.)"
        why = re.sub(r"\s*\([\w/.]+\.cc:\d+ in .*? threw \w+\.?\)?", ":", why)
        raise ModelFileError(f"not a KenLM model (an ARPA file or a build_binary file): "
                             f"{why[:200]}", path=p)
    return model


def mixed_logprobs(lam: float, rnn: np.ndarray, ngram: np.ndarray) -> np.ndarray:
    """ln(lam * exp(rnn) + (1 - lam) * exp(ngram)), elementwise (natural logs)."""
    if lam >= 1.0:
        return np.array(rnn, dtype=np.float64)
    if lam <= 0.0:
        return np.array(ngram, dtype=np.float64)
    return np.logaddexp(math.log(lam) + rnn, math.log1p(-lam) + ngram)


def best_lambda(rnn: np.ndarray, ngram: np.ndarray, tol: float = 1e-4) -> tuple[float, float]:
    """(L, perplexity): the L in [0, 1] whose mix has the lowest perplexity on tokens
    with natural log-probabilities ``rnn`` and ``ngram``; L to ``tol`` (rounded to it)."""
    n = len(rnn)
    if n == 0:
        raise UsageError("--tune-on: the file has no tokens to tune --lambda on")

    def cost(lam: float) -> float:
        return -float(mixed_logprobs(lam, rnn, ngram).sum())

    g = (math.sqrt(5.0) - 1.0) / 2.0
    lo, hi = 0.0, 1.0
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = cost(x1), cost(x2)
    while hi - lo > tol:
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = cost(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = cost(x2)
    digits = max(0, -math.floor(math.log10(tol)))
    cands = {round((lo + hi) / 2, digits), 0.0, 1.0}
    lam = min(sorted(cands), key=cost)
    return lam, math.exp(cost(lam) / n)


def _line_scores(ngram, words: list[str], eos: bool) -> tuple[np.ndarray, np.ndarray]:
    """log10 p and OOV flags of a line's words (and its ``</s>``), from ``<s>``."""
    got = list(ngram.full_scores(" ".join(words), bos=True, eos=eos))
    if len(got) != len(words) + eos:  # pragma: no cover - words hold no whitespace
        raise RuntimeError(f"kenlm scored {len(got)} tokens of a line of {len(words)} words")
    lp = np.fromiter((g[0] for g in got), dtype=np.float64, count=len(got))
    oov = np.fromiter((g[2] for g in got), dtype=np.bool_, count=len(got))
    return lp, oov


def ngram_stream(ngram, words: Iterator[str], start: int = 0
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(log10 p, OOV flags) of the n-gram model for the tokens of ``words`` (an input's
    words, ``<eos>`` ending each line) from position ``start`` on, a line at a time.
    The lines before ``start`` are passed over unscored; the line holding it is
    scored from its start, and its tokens before ``start`` dropped."""
    pos = 0
    line: list[str] = []
    for w in words:
        if w != EOS:
            line.append(w)
            continue
        n = len(line) + 1
        if pos + n > start:
            lp, oov = _line_scores(ngram, line, True)
            k = max(0, start - pos)
            yield lp[k:], oov[k:]
        pos += n
        line = []
    if line and pos + len(line) > start:  # token ids that do not end in <eos>
        lp, oov = _line_scores(ngram, line, False)
        k = max(0, start - pos)
        yield lp[k:], oov[k:]


def words_of(source, vocab: Vocab) -> Iterator[str]:
    """The words the n-gram model reads for an input: its own (text, documents), or
    its ids' vocabulary words (token shards)."""
    if hasattr(source, "surface_words"):
        yield from source.surface_words()
        return
    for blk in source.blocks():
        yield from vocab.decode(blk.ids)


class _Reader:
    """The n-gram scores of one input, handed out in token order."""

    def __init__(self, it: Iterator[tuple[np.ndarray, np.ndarray]]):
        self.it = it
        self.lp: list[np.ndarray] = []
        self.oov: list[np.ndarray] = []
        self.have = 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        while self.have < n:
            nxt = next(self.it, None)
            if nxt is None:  # pragma: no cover - the second read disagrees: a bug
                raise RuntimeError("the n-gram model's words ran out before the tokens")
            self.lp.append(nxt[0])
            self.oov.append(nxt[1])
            self.have += len(nxt[0])
        lp, oov = np.concatenate(self.lp), np.concatenate(self.oov)
        self.lp, self.oov, self.have = [lp[n:]], [oov[n:]], len(lp) - n
        return lp[:n], oov[:n]


class Mixer:
    """Mixes the RNN's log-probabilities of each scored block with the n-gram model's
    (:meth:`mix`, called by the accumulator in token order per input). With
    ``lam=None`` it mixes nothing and collects both models' log-probabilities
    (:meth:`collected`), to tune L on."""

    def __init__(self, ngram, lam: float | None, vocab: Vocab):
        self.ngram = ngram
        self.lam = lam
        self.sources: dict = {}
        self.vocab = vocab
        self.readers: dict[int, _Reader] = {}
        self._got: list[tuple[np.ndarray, np.ndarray]] = []

    def mix(self, blk, lp: np.ndarray, oovm: np.ndarray, totals
            ) -> tuple[np.ndarray, np.ndarray, dict | None]:
        """(mixed ln p, OOVs of the mix, per-word fields) of block ``blk`` whose RNN ln p
        are ``lp`` and RNN OOVs ``oovm``; adds both models' sums to ``totals.mix``."""
        r = self.readers.get(blk.i)
        if r is None:
            words = words_of(self.sources[blk.i], self.vocab)
            r = self.readers[blk.i] = _Reader(ngram_stream(self.ngram, words, blk.pos))
        lp10, ng_oov = r.take(len(blk))
        ng = lp10 * LN10
        if self.lam is None:
            self._got.append((lp.copy(), ng))
            return lp, oovm, None
        oov = oovm | ng_oov
        s = totals.mix if totals.mix is not None else dict.fromkeys(SUMS, 0)
        s["rnn_logprob"] += float(lp.sum())
        s["ngram_logprob"] += float(ng.sum())
        if oov.any():
            s["rnn_logprob_oov"] += float(lp[oov].sum())
            s["ngram_logprob_oov"] += float(ng[oov].sum())
        s["rnn_oov"] += int(oovm.sum())
        s["ngram_oov"] += int(ng_oov.sum())
        totals.mix = s
        return mixed_logprobs(self.lam, lp, ng), oov, {"rnn_logprob": lp, "ngram_logprob": ng,
                                                       "oov": oov}

    def bind(self, sources: list) -> None:
        """The inputs of the run (their words are read again for the n-gram model)."""
        self.sources = {s.index: s for s in sources}
        self.readers.clear()

    def finish(self, i: int) -> None:
        self.readers.pop(i, None)

    def collected(self) -> tuple[np.ndarray, np.ndarray]:
        """Both models' ln p of every token collected (lam=None), in order."""
        if not self._got:
            return np.zeros(0), np.zeros(0)
        return (np.concatenate([a for a, _ in self._got]),
                np.concatenate([b for _, b in self._got]))


def summary(tokens: int, sums: dict | None, oov: int) -> dict:
    """Each model's figures alone, over the mix's tokens (OOVs: the mix's)."""
    s = sums or dict.fromkeys(SUMS, 0)
    rnn = summarize(tokens, oov, s["rnn_logprob"], s["rnn_logprob_oov"])
    ng = summarize(tokens, oov, s["ngram_logprob"], s["ngram_logprob_oov"])
    rnn["own_oov"], ng["own_oov"] = int(s["rnn_oov"]), int(s["ngram_oov"])
    return {"rnn": rnn, "ngram": ng}
