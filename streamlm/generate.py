"""Sample text from a trained model (the book's ch. 7 ``generate``, ``rnnlm -gen``).

The model reads a context (the prompt's words, preceded by ``<eos>`` as the
start of a sentence), then repeatedly draws the next word from
``softmax(log p / temperature)`` with a seeded numpy generator and feeds it
back. The same model, prompt, temperature and seed always give the same words.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from streamlm.errors import UsageError
from streamlm.model import RNNLM
from streamlm.params import load_model
from streamlm.vocab import EOS, UNK


def generate(model_path: str | os.PathLike, words: int = 100, temperature: float = 1.0,
             seed: int = 0, prompt: str | None = None) -> Iterator[str]:
    """Yield ``words`` sampled words (``<eos>`` included, as the token ``"<eos>"``).

    Prompt words outside the vocabulary are read as ``<unk>``. Options are
    checked and the model is loaded before the first word is yielded.
    """
    if words < 0:
        raise UsageError(f"--words must be >= 0, got {words}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"--temperature must be positive, got {temperature}")
    m = load_model(model_path)
    index = {w: i for i, w in enumerate(m.vocab)}
    if EOS not in index or UNK not in index:
        raise UsageError(f"{model_path}: the model's vocabulary lacks {EOS} or {UNK}")
    context = [index[EOS]] + [index.get(w, index[UNK]) for w in (prompt or "").split()]
    return _sample(m.params, m.vocab, context, words, float(temperature), int(seed))


def _sample(params, vocab, context, words, temperature, seed) -> Iterator[str]:
    model = RNNLM(params)
    rng = np.random.default_rng(seed)
    h = None
    for i in context:
        h = model.step(np.array([i]), h)
    for _ in range(words):
        nxt = model.sample(h[0], temperature, rng)
        yield vocab[nxt]
        h = model.step(np.array([nxt]), h)


def format_words(words: Iterator[str]) -> Iterator[str]:
    """Text pieces to print: words separated by spaces, ``<eos>`` as a newline."""
    at_line_start = True
    for w in words:
        if w == EOS:
            yield "\n"
            at_line_start = True
        else:
            yield w if at_line_start else " " + w
            at_line_start = False
    if not at_line_start:
        yield "\n"
