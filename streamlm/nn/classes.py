"""Word classes for the class-factored softmax (Mikolov's ``-class``).

``P(w | h) = P(c(w) | h) * P(w | c(w), h)``: each word belongs to one class,
and both factors are exact softmaxes, over the C classes and over the words of
``w``'s class.

Classes follow Mikolov's frequency binning (rnnlm 0.3d and later): sort the
words by training count (most frequent first; ties keep the vocabulary's id
order), walk them accumulating ``sqrt(count / total)``, normalised so the
whole walk sums to 1 (``old=True``: ``count / total``, rnnlm's
``-old-classes``), and start a new class each time the running mass passes
``(c + 1) / C``. Frequent words get small classes, rare words share large
ones. ``<unk>`` and ``<eos>`` are words like any other here. A class never
ends up empty: classes are numbered as they are opened, so when fewer than C
open (a tiny vocabulary) the model simply has fewer.

Inside the model the words are kept in class order, so that every class is a
contiguous range of columns of ``affine_W``: :class:`WordClasses` holds that
order and its inverse; the model file keeps word ids as they are.
"""

from __future__ import annotations

import numpy as np


def frequency_classes(counts: np.ndarray, C: int, old: bool = False) -> np.ndarray:
    """Mikolov's frequency binning: the class (int32, 0-based) of each word id.

    ``counts``: (V,) training count of each word id; ``C``: the number of classes
    wanted (at most V are used).
    """
    counts = np.asarray(counts, dtype=np.float64)
    V = counts.shape[0]
    if C < 1:
        raise ValueError("the number of classes must be at least 1")
    C = min(int(C), V)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no training counts: every word has count 0")
    order = np.argsort(-counts, kind="stable")  # by count, ties in id order
    mass = counts[order] / total
    if not old:
        mass = np.sqrt(mass)
        mass /= mass.sum()
    word_class = np.empty(V, dtype=np.int32)
    a = 0
    df = 0.0
    for i, w in enumerate(order.tolist()):  # rnnlmlib.cpp: the same loop, the same tests
        df = min(df + float(mass[i]), 1.0)
        word_class[w] = a
        if df > (a + 1) / C and a < C - 1:
            a += 1
    return word_class


class WordClasses:
    """A class assignment and the class order of the words inside the model.

    ``word_class``: (V,) int32, the class of each word id (the model file's array).
    ``order``: (V,) internal position -> word id (words sorted by class, then id);
    ``rank``: its inverse, word id -> internal position;
    ``start``: (C+1,) the internal range ``[start[c], start[c+1])`` of class c;
    ``cls``: (V,) int32, the class of each internal position (non-decreasing).
    """

    def __init__(self, word_class: np.ndarray):
        wc = np.ascontiguousarray(word_class, dtype=np.int32)
        if wc.ndim != 1 or wc.size == 0:
            raise ValueError("word_class must be a non-empty 1-d array")
        C = int(wc.max()) + 1
        if wc.min() < 0:
            raise ValueError("a class index is negative")
        sizes = np.bincount(wc, minlength=C)
        if (sizes == 0).any():
            raise ValueError(f"class {int(np.flatnonzero(sizes == 0)[0])} has no words")
        self.word_class = wc
        self.C = C
        self.V = wc.shape[0]
        self.order = np.argsort(wc, kind="stable").astype(np.int32)
        self.rank = np.empty(self.V, dtype=np.int32)
        self.rank[self.order] = np.arange(self.V, dtype=np.int32)
        self.start = np.zeros(C + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.start[1:])
        self.cls = np.ascontiguousarray(wc[self.order])
        self.sizes = sizes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordClasses) and np.array_equal(self.word_class,
                                                                 other.word_class)

    def to_internal(self, ids: np.ndarray) -> np.ndarray:
        """Word ids -> internal positions (int32); -1 (an ignored target) stays -1."""
        ids = np.asarray(ids)
        out = self.rank[np.where(ids >= 0, ids, 0)]
        return np.where(ids >= 0, out, -1).astype(np.int32) if (ids < 0).any() else out
