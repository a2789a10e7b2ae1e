"""Reading + tokenising text, before and after the batch reader: an interleaved A/B.

    python -m bench.bench_tokenize [TEXT] [--reps 7] [--base 35405e7]

Times ``list(encode(iter_pieces(TEXT), vocab, docs=...))`` for docs=False and
docs=True with three implementations, one call of each in turn (the order
rotates every repetition, so drift on a shared machine hits them alike):

* ``old``: streamlm/data/text.py and streamlm/data/tokenizer.py of the ``--base`` commit
  (read with ``git show`` into a temporary directory): every line decoded,
  split and looked up alone;
* ``new``: this tree, with Numba loaded (as in ``streamlm score``: whole lines
  a block at a time through ``kernels.encode_lines``);
* ``new-py``: this tree as a small input sees it without Numba loaded (blocks
  decoded at once, then line by line in Python).

Before timing, every implementation must give the old one's blocks exactly
(position, ids, line and document indices). Prints medians (tokens/s) and
their ratios to ``old``. TEXT defaults to PTB train, decompressed once into
/tmp/streamlm_bench; the vocabulary is its 10000 most frequent words.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from unittest.mock import patch

from bench.common import CACHE, REPO, SHARED
from streamlm import kernels, tokenizer  # noqa: F401  (kernels: loaded, as in score)
from streamlm.data.text import iter_pieces
from streamlm.data.vocab import Vocab


def default_text() -> Path:
    out = CACHE / "ptb.train.txt"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with gzip.open(SHARED / "ptb" / "ptb.train.txt.gz", "rb") as f, open(out, "wb") as g:
            shutil.copyfileobj(f, g)
    return out


def load_base(rev: str, tmp: Path):
    """(text, tokenizer) modules of commit ``rev``, importable side by side with ours."""
    mods = []
    for name in ("text", "tokenizer"):
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:streamlm/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        src = src.replace("from streamlm.data.text import", "from base_text import")
        path = tmp / f"base_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"base_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"base_{name}"] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods


def same_blocks(got, want) -> None:
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want):
        assert (g.i, g.pos, len(g)) == (w.i, w.pos, len(w))
        assert g.ids.dtype == w.ids.dtype and (g.ids == w.ids).all()
        assert g.line.dtype == w.line.dtype and (g.line == w.line).all()
        assert (g.doc is None) == (w.doc is None)
        assert g.doc is None or (g.doc.dtype == w.doc.dtype and (g.doc == w.doc).all())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("text", nargs="?", type=Path)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--base", default="35405e7", help="commit of the old reader/tokeniser")
    args = ap.parse_args()
    path = str(args.text or default_text())

    with tempfile.TemporaryDirectory() as tmp:
        base_text, base_tok = load_base(args.base, Path(tmp))
    counts = Counter(w for piece in base_text.iter_pieces(path) for w in piece.words)
    vocab = Vocab.build(counts, vocab_size=10_000)

    def old(docs):
        return list(base_tok.encode(base_text.iter_pieces(path), vocab, docs=docs))

    def new(docs):
        return list(tokenizer.encode(iter_pieces(path), vocab, docs=docs))

    def new_py(docs):
        with patch.object(tokenizer, "_kernels_loaded", return_value=False), \
             patch.object(tokenizer, "COMPILED_AFTER_BYTES", 1 << 62):
            return new(docs)

    runs = {"old": old, "new": new, "new-py": new_py}
    print(f"{path}: {os.path.getsize(path):,} bytes, base {args.base}, {args.reps} reps")
    for docs in (False, True):
        want = old(docs)
        for f in (new, new_py):
            same_blocks(f(docs), want)  # also warms up (kernel cache, word table)
        tokens = sum(len(b) for b in want)
        times: dict[str, list[float]] = {k: [] for k in runs}
        names = list(runs)
        for r in range(args.reps):
            for k in names[r % 3:] + names[: r % 3]:
                t0 = time.perf_counter()
                runs[k](docs)
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"docs={docs}: {tokens:,} tokens, identical blocks")
        for k in names:
            print(f"  {k:7s} {tokens / med[k] / 1e6:6.2f} Mtok/s  median {med[k] * 1e3:7.1f} ms"
                  f"  (min {min(times[k]) * 1e3:6.1f})  x{med['old'] / med[k]:.2f}")


if __name__ == "__main__":
    main()
