"""``streamlm query``: KenLM's ``query`` program on a streamlm model, line for line.

Text comes on stdin, one sentence per line (``line.split()``), and the output
is KenLM's, in its formats:

* per word ``word=id ngram_length log10prob`` and a tab (``</s>`` last, unless
  ``-n``); ``id`` is the model vocabulary's (``<unk>``, id 0 in a vocabulary
  streamlm builds, for an OOV, a literal ``<unk>`` included); ``ngram_length``
  is the tokens of context seen since the state's last reset, plus one
  (``streamlm.api``);
* per line ``Total: <sum of log10> OOV: <n>`` and a newline;
* at the end ``Perplexity including OOVs:``, ``Perplexity excluding OOVs:``,
  ``OOVs:`` and ``Tokens:``, each a tab and the figure.

Numbers are printed as KenLM prints them: a word's log10 probability and a
line's total as the shortest decimal that reads back as the same float32, the
perplexities as the shortest for a float64, ECMAScript-style (positional from
1e-6 to 1e21, else ``1e-7``), ``NaN`` for none.

``levels`` are KenLM's ``-v``: ``word`` (the per-word fields), ``sentence``
(the per-line totals; without it the words of every line run on, as KenLM's
do), ``summary``; all three by default. ``sentence_context=False`` is ``-n``:
no ``<s>`` (each line starts from a null context) and no ``</s>``. Each line
starts again, as in KenLM; ``carry=True`` keeps the state across lines (the
text as one stream). One difference: a last line without a newline is a line
here (its ``</s>`` and its total are printed and counted); KenLM scores its
words but prints no total for it and leaves them out of its perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from streamlm.api import Model
from streamlm.compute import plan
from streamlm.data.text import Line, iter_lines, preread
from streamlm.jobs.metrics import LN10
from streamlm.options import Engine, Verbosity

LINES_PER_CALL = 1024  # lines read, scored and printed at a time
TOKENS_PER_CALL = 1 << 16


def number(x: float, single: bool = False) -> str:
    """``x`` as KenLM prints a float (``single``) or a double: the shortest decimal
    that reads back the same, positional for 1e-6 <= |x| < 1e21, else exponential."""
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    v = np.float32(x) if single else np.float64(x)
    if v == 0:
        return "0"
    if 1e-6 <= abs(float(v)) < 1e21:
        return np.format_float_positional(v, unique=True, trim="-")
    return np.format_float_scientific(v, unique=True, trim="-", exp_digits=1)


class Query:
    """The sums of a query run, and the text of each batch of lines."""

    def __init__(self, lm: Model, levels: Iterable[Verbosity | str] | None = None,
                 sentence_context: bool = True, carry: bool = False):
        want = {Verbosity.parse(v, "-v") for v in levels} if levels else set(Verbosity)
        self.words, self.lines, self.summary = (Verbosity.word in want,
                                                Verbosity.sentence in want,
                                                Verbosity.summary in want)
        self.lm = lm
        self.bos = self.eos = bool(sentence_context)
        self.carry = carry
        self.state = lm._begin(self.bos)  # carried across batches with carry
        self.total = 0.0  # log10, summed over the lines
        self.total_oov = 0.0  # of the OOV tokens
        self.tokens = 0
        self.oov = 0

    def batch(self, lines: list[list[str]]) -> str:
        """Score whole lines (each a list of words); the text KenLM prints for them."""
        lm = self.lm
        seqs = [lm._sentence_ids(words, self.eos) for words in lines]
        if self.carry:
            flat, ends = lm._run([self.state], [np.concatenate(seqs) if seqs else
                                                np.zeros(0, np.int32)])
            self.state = ends[0]
            cuts = np.cumsum([len(s) for s in seqs])[:-1]
            lps = np.split(flat[0], cuts)
            first = ends[0].length - sum(len(s) for s in seqs) + 1
        else:
            lps, _ = lm._run([self.state] * len(seqs), seqs)
            first = self.state.length + 1
        unk = lm.vocab.unk_id
        out: list[str] = []
        for words, ids, lp in zip(lines, seqs, lps):
            p10 = (lp / LN10).astype(np.float32).astype(np.float64)
            oovm = ids == unk
            if self.eos:
                oovm[-1] = False
            if self.words:
                toks = (list(words) if lm.vocab.tokenizer == "word" else  # a subword model:
                        [lm.vocab.words[i] for i in ids[:len(ids) - self.eos].tolist()])  # pieces
                surface = [*toks, "</s>"] if self.eos else toks
                for k, (w, i, p) in enumerate(zip(surface, ids.tolist(), p10.tolist())):
                    out.append(f"{w}={i} {first + k} {number(p, True)}\t")
            total = float(p10.sum())
            n_oov = int(oovm.sum())
            if self.lines:
                out.append(f"Total: {number(total, True)} OOV: {n_oov}\n")
            self.total += total
            self.total_oov += float(p10[oovm].sum())
            self.tokens += len(ids)
            self.oov += n_oov
            if self.carry:
                first += len(ids)
        return "".join(out)

    def figures(self) -> dict:
        """The summary's figures (KenLM's definitions; NaN when undefined)."""
        def ppl(lp: float, n: int) -> float:
            return 10.0 ** (-lp / n) if n else math.nan

        return {"perplexity": ppl(self.total, self.tokens),
                "perplexity_excl_oov": ppl(self.total - self.total_oov, self.tokens - self.oov),
                "oov": self.oov, "tokens": self.tokens}

    def end(self) -> str:
        """The summary lines (with the ``summary`` level)."""
        if not self.summary:
            return ""
        f = self.figures()
        return (f"Perplexity including OOVs:\t{number(f['perplexity'])}\n"
                f"Perplexity excluding OOVs:\t{number(f['perplexity_excl_oov'])}\n"
                f"OOVs:\t{f['oov']}\nTokens:\t{f['tokens']}\n")


def _batches(lines: Iterator[Line]) -> Iterator[list[list[str]]]:
    batch: list[list[str]] = []
    have = 0
    for line in lines:
        batch.append(line.words)
        have += len(line.words) + 1
        if len(batch) >= LINES_PER_CALL or have >= TOKENS_PER_CALL:
            yield batch
            batch, have = [], 0
    if batch:
        yield batch


def query(model, path: str = "-", levels: Iterable[Verbosity | str] | None = None,
          sentence_context: bool = True, carry: bool = False,
          engine: Engine | str = Engine.auto) -> Iterator[str]:
    """The text of KenLM's ``query`` for the lines of ``path`` (``-``: stdin), a batch
    of lines at a time (see the module doc). ``model``: a path or a :class:`Model`.
    A batch is read and checked whole before its text is yielded, so bad input (one
    :class:`~streamlm.errors.InputError` naming the line) prints no line of it."""
    engine = Engine.parse(engine, "--engine")
    levels = list(levels) if levels else None
    if levels:
        for v in levels:
            Verbosity.parse(v, "-v")
    if not isinstance(model, Model):
        if engine == Engine.auto:
            head, ended = preread(path, 1 << 16)  # a small input starts without numba
            engine = Engine.numpy if ended and len(head) // 2 <= plan.NUMPY_MAX_TOKENS else \
                Engine.numba
        model = Model(model, engine=engine.value if engine != Engine.auto else "numba")
    q = Query(model, levels, sentence_context, carry)
    for batch in _batches(iter_lines(path)):
        text = q.batch(batch)
        if text:
            yield text
    yield q.end()
