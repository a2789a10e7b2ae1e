"""Sample text from a trained model (the book's ch. 7 ``generate``, ``rnnlm -gen``).

The model reads a context (the prompt's words, preceded by ``<eos>`` as the
start of a sentence), then repeatedly draws the next word from
``softmax(log p / temperature)`` with a seeded numpy generator and feeds it
back. The same model, prompt, temperature and seed always give the same words.
A subword model samples pieces; :func:`sample_text` detokenises them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from streamlm.data.subword import SPACE
from streamlm.data.vocab import EOS
from streamlm.errors import UsageError
from streamlm.nn.model import RNNLM
from streamlm.nn.params import load_model


def generate(model_path: str | os.PathLike, words: int = 100, temperature: float = 1.0,
             seed: int = 0, prompt: str | None = None) -> Iterator[str]:
    """Yield ``words`` sampled tokens (``<eos>`` included, as the token ``"<eos>"``): the
    words of a word model, the pieces of a subword model.

    Prompt words outside the vocabulary are read as ``<unk>`` (a subword model reads
    the prompt's pieces). Options are checked and the model is loaded before the
    first word is yielded.
    """
    return _generate(model_path, words, temperature, seed, prompt)[1]


def sample_text(model_path: str | os.PathLike, words: int = 100, temperature: float = 1.0,
                seed: int = 0, prompt: str | None = None) -> Iterator[str]:
    """:func:`generate`, as text to print: words separated by spaces or pieces
    detokenised, ``<eos>`` a newline (see :func:`format_words`, :func:`format_pieces`)."""
    vocab, tokens = _generate(model_path, words, temperature, seed, prompt)
    return format_words(tokens) if vocab.tokenizer == "word" else format_pieces(tokens, vocab)


def _generate(model_path, words, temperature, seed, prompt):
    if words < 0:
        raise UsageError(f"--words must be >= 0, got {words}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"--temperature must be positive, got {temperature}")
    m = load_model(model_path)
    vocab = m.vocabulary()
    context = [vocab.eos_id] + vocab.encode((prompt or "").split()).tolist()
    return vocab, _sample(m.params, m.vocab, context, words, float(temperature), int(seed))


def _sample(params, vocab, context, words, temperature, seed) -> Iterator[str]:
    model = RNNLM(params, frozen=True)
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


def format_pieces(pieces: Iterator[str], vocab) -> Iterator[str]:
    """Text to print from the pieces of a subword ``vocab``: each word (a piece that
    starts with ``▁`` and the pieces up to the next one) decoded by SentencePiece,
    words separated by a space, ``<eos>`` as a newline."""
    index = vocab.index
    word: list[int] = []
    at_line_start = True

    def flush():
        nonlocal at_line_start
        if word:
            text = vocab.detokenize(word)
            yield text if at_line_start else " " + text
            at_line_start = False
            word.clear()

    for p in pieces:
        if p == EOS:
            yield from flush()
            yield "\n"
            at_line_start = True
            continue
        if p.startswith(SPACE):
            yield from flush()
        word.append(index[p])
    yield from flush()
    if not at_line_start:
        yield "\n"
