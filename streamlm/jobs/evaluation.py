"""Exact perplexity of a token dataset as one stream: what training validates with."""

from __future__ import annotations

import math

import numpy as np

from streamlm.data.shards import TokenDataset
from streamlm.errors import InputError
from streamlm.nn.model import RNNLM
from streamlm.nn.params import Params

EVAL_CHUNK = 4096  # tokens per nll() call when evaluating (bounds memory)


def evaluate(params: Params, dataset: TokenDataset, chunk: int = EVAL_CHUNK) -> dict:
    """Exact perplexity of ``dataset`` as ONE stream with carried state.

    The state starts at zero and carries across the whole stream; token ``k``
    is predicted from tokens ``0..k-1``, for ``k = 1..L-1`` (the book's
    ``xs = corpus[:-1], ts = corpus[1:]``). Returns ``{"ppl", "nll", "tokens"}``
    with ``ppl = exp(mean NLL)``. Uses its own RNNLM (no dropout), so the
    caller's carried training state is untouched.
    """
    model = RNNLM(params, frozen=True)  # (a new model per evaluation: the weights move)
    total, count = 0.0, 0
    prev: np.ndarray | None = None
    h = None
    for c in dataset.iter_chunks(chunk):
        seq = c.ids if prev is None else np.concatenate([prev, c.ids])
        prev = seq[-1:]
        if len(seq) < 2:
            continue
        nll, h = model.nll(seq[None, :-1], seq[None, 1:], h)
        total += float(nll.sum())
        count += len(seq) - 1
    if count == 0:
        raise InputError("the evaluation set needs at least 2 tokens",
                         path=dataset.files[0].path if dataset.files else None)
    mean = total / count
    return {"ppl": math.exp(mean) if mean < 700 else math.inf, "nll": mean, "tokens": count}
