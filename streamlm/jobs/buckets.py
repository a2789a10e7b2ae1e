"""CCNet's perplexity buckets: their names, which bucket a value falls in, and the
cut-offs file that ``streamlm report --cutoffs`` writes and ``streamlm score
--cutoffs`` / ``--split-buckets`` read.

A value equal to a cut-off goes to the bucket above it (CCNet's
``perplexity < cutoff``). A document without tokens (an empty text) has no
perplexity (NaN): it goes to the last bucket.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamlm.data.atomic import atomic_open
from streamlm.errors import InputError, UsageError

CUTOFFS_FORMAT = "streamlm-cutoffs"
CUTOFFS_VERSION = 1
FIELDS = ("perplexity", "perplexity_excl_oov")


def bucket_labels(n_cutoffs: int) -> list[str]:
    """The names of the buckets of ``n_cutoffs`` cut-offs: head, middle, tail for two."""
    if n_cutoffs == 1:
        return ["head", "tail"]
    if n_cutoffs == 2:
        return ["head", "middle", "tail"]
    return ["head", *(f"middle{k}" for k in range(1, n_cutoffs)), "tail"]


def assign(values: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    """The bucket number of each value (NaN: the last bucket)."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isnan(v), np.inf, v)
    return np.searchsorted(np.asarray(cutoffs, dtype=np.float64), v, side="right")


def buckets(values: np.ndarray, cutoffs: Sequence[float]) -> list[str]:
    """The bucket name of each value (see the module doc)."""
    labels = bucket_labels(len(cutoffs))
    return [labels[k] for k in assign(values, cutoffs).tolist()]


@dataclass(frozen=True)
class Cutoffs:
    """Cut-offs read from a cut-offs file: their values and the record field they cut."""

    values: tuple[float, ...]
    field: str = "perplexity"
    percentiles: tuple[float, ...] | None = None

    @property
    def labels(self) -> list[str]:
        return bucket_labels(len(self.values))


def load_cutoffs(path: str | os.PathLike) -> Cutoffs:
    """Read a cut-offs file written by ``streamlm report --cutoffs`` (or by hand:
    ``{"cutoffs": [a, b]}`` is enough)."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{p}: no such cut-offs file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"not a cut-offs JSON file ({e})", path=p) from None
    if not isinstance(d, dict) or not isinstance(d.get("cutoffs"), list):
        raise InputError('not a cut-offs file: expected {"cutoffs": [number, ...]}', path=p)
    vals = d["cutoffs"]
    if not vals or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) for x in vals):
        raise InputError("cutoffs must be a non-empty list of finite numbers", path=p)
    if any(b <= a for a, b in zip(vals, vals[1:])):
        raise InputError(f"cutoffs must increase, got {vals}", path=p)
    fld = d.get("field", "perplexity")
    if fld not in FIELDS:
        raise InputError(f"field must be one of {', '.join(FIELDS)}, got {fld!r}", path=p)
    pct = d.get("percentiles")
    return Cutoffs(tuple(float(x) for x in vals), fld,
                   tuple(float(x) for x in pct) if isinstance(pct, list) else None)


def save_cutoffs(path: str | os.PathLike, rep: dict) -> None:
    """Write the cut-offs of a :func:`report` result to ``path`` (atomically)."""
    c = rep["cutoffs"]
    d = {"format": CUTOFFS_FORMAT, "format_version": CUTOFFS_VERSION, "field": rep["field"],
         "percentiles": c["percentiles"], "cutoffs": c["values"],
         "labels": bucket_labels(len(c["values"])), "documents": rep["documents"],
         "scores": rep["files"]}
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=1)
        f.write("\n")
