"""The streaming scorer: exact perplexity of text or token shards of any size.

Token accounting (the same rule as ``prepare``, see :mod:`streamlm.text`)
-------------------------------------------------------------------------
* every line contributes its words plus one ``<eos>``, and every token is scored;
  a file of L lines and W words scores W + L tokens;
* when documents are needed (``reset="doc"`` or ``level="doc"``) text is split
  into documents at blank lines, exactly like ``prepare --docs blank-line``:
  blank lines are separators and contribute no token;
* a token is an OOV when it maps to ``<unk>`` (a literal ``<unk>`` included);
* at the start of a stream (and, with ``reset``, of every line or document) the
  hidden state is zero and the previous token is ``<eos>``.

Perplexity follows KenLM's two definitions: including OOVs
``exp(-sum(logprob) / tokens)`` and excluding OOVs
``exp(-sum(logprob of non-OOV tokens) / (tokens - oov))``. Totals across
inputs sum log-probabilities, tokens and OOVs; perplexities are never averaged.

Execution
---------
* ``reset="none"``: each input is one stream. Up to ``batch`` inputs run as
  parallel rows of one model call, each row with its own carried state;
  a row that finishes takes the next input. Each row advances ``chunk_tokens``
  tokens per call; the output projection of a call is one batched product
  (:meth:`RNNLM.nll`), only the recurrence is sequential.
* ``reset="line"|"doc"``: lines / documents are independent. Consecutive
  segments are packed into up to ``batch`` rows of at most ``chunk_tokens``
  steps (each row a run of whole segments, the state zeroed at each segment
  start). A segment longer than ``chunk_tokens`` is streamed alone in chunks
  with its state carried.

Memory is bounded by ``batch * chunk_tokens`` tokens of activations plus the
model: it does not depend on the input size. Chunks are aligned to multiples
of ``chunk_tokens`` from the start of each stream or segment, so a resumed run
makes exactly the same model calls as an uninterrupted one (for one row).

Resume
------
With ``checkpoint``, every ``checkpoint_every`` tokens the per-input position,
running sums, carried state and per-unit record counts are written atomically
to one ``.npz`` (arrays + a JSON string; never pickled). Per-unit records are
spooled in ``<checkpoint>.spool/`` (one binary file per input, truncated to the
checkpointed count on resume). The checkpoint records the model checksum, the
inputs (path, size, mtime) and the options that change results; a mismatch is
refused. Inputs are re-read from their start on resume (skipped tokens are
tokenised again but not scored). The checkpoint and spool are removed after a
successful run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np

from streamlm.atomic import atomic_path
from streamlm.errors import InputError, ModelFileError, UsageError
from streamlm.text import check_readable, display_name, is_stream, iter_pieces
from streamlm.vocab import Vocab

log = logging.getLogger("streamlm.score")

RESETS = ("none", "line", "doc")
LEVELS = ("line", "doc", "word")
DATA_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
CKPT_FORMAT = "streamlm-score-checkpoint"
CKPT_VERSION = 1
_BLOCK = 1 << 16  # tokens per block read from an input
_LN10 = math.log(10.0)
_LN2 = math.log(2.0)

UNIT_DTYPE = np.dtype([("input", "<i4"), ("index", "<i8"), ("tokens", "<i8"),
                       ("oov", "<i8"), ("logprob", "<f8")])
WORD_DTYPE = np.dtype([("input", "<i4"), ("line", "<i8"), ("doc", "<i8"),
                       ("position", "<i8"), ("id", "<i4"), ("logprob", "<f8")])


# ================================================================ summary ==
def summarize(tokens: int, oov: int, logprob: float, logprob_oov: float = 0.0) -> dict:
    """The summary keys of one input or of all inputs (KenLM's definitions).

    ``logprob`` is the natural-log sum over all tokens, ``logprob_oov`` the part
    of it that falls on OOV tokens. Perplexities are None when undefined.
    """
    ppl = math.exp(-logprob / tokens) if tokens else None
    kept = tokens - oov
    ppl_x = math.exp(-(logprob - logprob_oov) / kept) if kept else None
    return {
        "tokens": int(tokens),
        "oov": int(oov),
        "logprob": float(logprob),
        "log10prob": float(logprob / _LN10),
        "logprob_excl_oov": float(logprob - logprob_oov),  # exact merges (distributed)
        "perplexity": ppl,
        "perplexity_excl_oov": ppl_x,
        "bits_per_token": (-logprob / tokens / _LN2) if tokens else None,
    }


@dataclass
class _Totals:
    """Running sums of one input (float64), its position, and its open unit."""

    scored: int = 0  # tokens of this input scored so far (= its position)
    oov: int = 0
    logprob: float = 0.0
    logprob_oov: float = 0.0
    done: bool = False
    records: int = 0  # per-unit records spooled
    unit: list = field(default_factory=lambda: [-1, 0, 0, 0.0])  # index, tokens, oov, lp

    def to_json(self) -> dict:
        return {"scored": self.scored, "oov": self.oov, "logprob": self.logprob,
                "logprob_oov": self.logprob_oov, "done": self.done, "records": self.records,
                "unit": self.unit}

    @classmethod
    def from_json(cls, d: dict) -> _Totals:
        return cls(int(d["scored"]), int(d["oov"]), float(d["logprob"]),
                   float(d["logprob_oov"]), bool(d["done"]), int(d["records"]),
                   [int(d["unit"][0]), int(d["unit"][1]), int(d["unit"][2]),
                    float(d["unit"][3])])


@dataclass
class ScoreResult:
    """What :func:`score` returns: the summary, plus final states for tests."""

    summary: dict
    final_states: dict[int, np.ndarray]  # input index -> (H,) state after its last token
    seconds: float

    def to_json(self) -> dict:
        return self.summary


# ================================================================= inputs ==
class _Blk:
    """A run of tokens of one input: ids, line index and document index per token."""

    __slots__ = ("i", "pos", "ids", "line", "doc")

    def __init__(self, i: int, pos: int, ids: np.ndarray, line: np.ndarray,
                 doc: np.ndarray | None):
        self.i, self.pos, self.ids, self.line, self.doc = i, pos, ids, line, doc

    def __len__(self) -> int:
        return len(self.ids)

    def cut(self, a: int, b: int) -> _Blk:
        return _Blk(self.i, self.pos + a, self.ids[a:b], self.line[a:b],
                    None if self.doc is None else self.doc[a:b])

    @staticmethod
    def join(parts: list[_Blk]) -> _Blk:
        if len(parts) == 1:
            return parts[0]
        p0 = parts[0]
        return _Blk(p0.i, p0.pos, np.concatenate([p.ids for p in parts]),
                    np.concatenate([p.line for p in parts]),
                    None if p0.doc is None else np.concatenate([p.doc for p in parts]))


def is_shard_input(path: str) -> bool:
    """True for a directory, a Parquet/Arrow file (by extension or magic bytes)."""
    if is_stream(path):  # a pipe is read as text: sniffing it would consume it
        return False
    if os.path.isdir(path):
        return True
    if os.path.splitext(path)[1].lower() in DATA_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head.startswith(b"PAR1") or head.startswith(b"ARROW1")


class _Source:
    """One INPUT: text (tokenised like ``prepare``) or token shards."""

    def __init__(self, index: int, path: str, vocab: Vocab, docs: bool, errors: str,
                 column: str):
        self.index = index
        self.path = path
        self.name = display_name(path)
        self.vocab = vocab
        self.docs = docs
        self.errors = errors
        self.shards = is_shard_input(path)
        self.dataset = None
        if self.shards:
            self._open_shards(column)
        else:
            check_readable(path)  # missing / unreadable: fail before scoring

    def _open_shards(self, column: str) -> None:
        from streamlm.data import open_dataset  # pyarrow: only when shards are scored

        p = self.path
        prepared = os.path.isdir(p) and os.path.exists(os.path.join(p, "manifest.json"))
        try:
            if prepared:
                ds = open_dataset(p, vocab=self.vocab)
            else:
                ds = open_dataset(p, column=column, vocab_size=len(self.vocab),
                                  allow_empty=True)  # 0 tokens, as empty text
        except InputError as e:
            if prepared and "differs from the dataset" in str(e):
                raise InputError("the model's vocabulary does not match the shards' "
                                 "vocabulary (vocab.txt / manifest sha256); score them "
                                 "with the model trained on them", path=p) from None
            raise
        if self.docs and not ds.has_docs:
            raise UsageError(f"{p}: no document boundaries in these shards (no doc_start "
                             "column or list<int> rows); use --reset none|line and a level "
                             "other than doc")
        self.dataset = ds

    def blocks(self) -> Iterator[_Blk]:
        """Blocks of about 64k tokens, in order, from the start of the input."""
        return self._shard_blocks() if self.shards else self._text_blocks()

    def _text_blocks(self) -> Iterator[_Blk]:
        v = self.vocab
        table, unk, eos = v.index, v.unk_id, v.eos_id
        docs = self.docs
        ids: list[int] = []
        runs_line: list[int] = []  # line index per run
        runs_doc: list[int] = []
        runs_n: list[int] = []
        pos = 0
        doc = -1
        new_doc = True
        line_has_words = False

        def flush() -> _Blk:
            n = np.array(runs_n, dtype=np.int64)
            blk = _Blk(self.index, pos, np.array(ids, dtype=np.int32),
                       np.repeat(np.array(runs_line, dtype=np.int64), n),
                       np.repeat(np.array(runs_doc, dtype=np.int64), n) if docs else None)
            return blk

        for piece in iter_pieces(self.path, self.errors):
            words = piece.words
            k = 0
            if words:
                if docs and new_doc:
                    doc += 1
                    new_doc = False
                ids.extend(map(table.get, words, repeat(unk)))
                k = len(words)
                line_has_words = True
            if piece.last:
                if line_has_words or not docs:
                    ids.append(eos)
                    k += 1
                else:
                    new_doc = True
                line_has_words = False
            if k:
                runs_line.append(piece.index)
                runs_doc.append(doc)
                runs_n.append(k)
            if len(ids) >= _BLOCK:
                blk = flush()
                yield blk
                pos += len(blk)
                ids, runs_line, runs_doc, runs_n = [], [], [], []
        if ids:
            yield flush()

    def _shard_blocks(self) -> Iterator[_Blk]:
        eos = self.vocab.eos_id
        lines = 0
        docs = -1
        first = True
        for ch in self.dataset.iter_chunks(_BLOCK):
            ids = ch.ids
            is_eos = ids == eos
            cs = np.cumsum(is_eos, dtype=np.int64)
            line = lines + cs - is_eos
            lines += int(cs[-1])
            doc = None
            if self.docs:
                ds = ch.doc_start.copy()
                if first:
                    ds[0] = True
                dcs = np.cumsum(ds, dtype=np.int64)
                doc = docs + dcs
                docs += int(dcs[-1])
            first = False
            yield _Blk(self.index, ch.start, ids, line, doc)

    def fingerprint(self) -> dict:
        p = self.path
        if is_stream(p):
            what = "stdin ('-')" if p == "-" else f"a pipe ({self.name})"
            raise UsageError(f"--checkpoint cannot be used with {what}: it cannot be "
                             "read again")
        st = os.stat(p)
        fp = {"path": os.path.abspath(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if os.path.isdir(p):
            fp["files"] = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                                 for e in os.scandir(p) if e.is_file())
        return fp


def _from(blocks: Iterator[_Blk], start: int) -> Iterator[_Blk]:
    """Drop the first ``start`` tokens (tokenised but not scored: resume)."""
    for b in blocks:
        end = b.pos + len(b)
        if end <= start:
            continue
        if b.pos < start:
            b = b.cut(start - b.pos, len(b))
        yield b


def _rechunk(blocks: Iterator[_Blk], size: int) -> Iterator[_Blk]:
    """Chunks of exactly ``size`` tokens (the last may be shorter), in order."""
    buf: list[_Blk] = []
    have = 0
    for b in blocks:
        buf.append(b)
        have += len(b)
        while have >= size:
            whole = _Blk.join(buf)
            yield whole.cut(0, size)
            rest = whole.cut(size, len(whole))
            buf = [rest] if len(rest) else []
            have = len(rest)
    if have:
        yield _Blk.join(buf)


# =============================================================== records ==
class _Spool:
    """Per-input binary spools of per-unit records (fixed-size numpy records)."""

    def __init__(self, directory: Path, dtype: np.dtype):
        self.dir = directory
        self.dtype = dtype
        self._open: dict[int, object] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, i: int) -> Path:
        return self.dir / f"{i:06d}.bin"

    def truncate(self, i: int, records: int) -> None:
        p = self.path(i)
        if p.exists():
            with open(p, "r+b") as f:
                f.truncate(records * self.dtype.itemsize)
        elif records:
            raise UsageError(f"checkpoint spool {p} is missing; delete the checkpoint "
                             "and start again")

    def write(self, i: int, recs: np.ndarray) -> None:
        f = self._open.get(i)
        if f is None:
            f = self._open[i] = open(self.path(i), "ab")  # noqa: SIM115
        f.write(recs.tobytes())

    def close(self, i: int) -> None:
        f = self._open.pop(i, None)
        if f is not None:
            f.close()

    def sync(self) -> None:
        for f in self._open.values():
            f.flush()
            os.fsync(f.fileno())

    def close_all(self) -> None:
        for i in list(self._open):
            self.close(i)

    def read(self, i: int, block: int = 1 << 16) -> Iterator[np.ndarray]:
        p = self.path(i)
        if not p.exists():
            return
        with open(p, "rb") as f:
            while True:
                a = np.fromfile(f, dtype=self.dtype, count=block)
                if not len(a):
                    break
                yield a


class _Acc:
    """Running sums per input, and per-unit records into the spool."""

    def __init__(self, n_inputs: int, vocab: Vocab, level: str | None, spool: _Spool | None):
        self.t = [_Totals() for _ in range(n_inputs)]
        self.unk = vocab.unk_id
        self.level = level
        self.spool = spool
        self.total_scored = 0

    def add(self, blk: _Blk, nll: np.ndarray) -> None:
        t = self.t[blk.i]
        if blk.pos != t.scored:  # pragma: no cover - an engine bug, never user input
            raise RuntimeError(f"input {blk.i}: scored out of order ({blk.pos} != {t.scored})")
        n = len(blk)
        lp = -np.asarray(nll, dtype=np.float64)
        oovm = blk.ids == self.unk
        noov = int(np.count_nonzero(oovm))
        t.scored += n
        t.oov += noov
        t.logprob += float(lp.sum())
        if noov:
            t.logprob_oov += float(lp[oovm].sum())
        self.total_scored += n
        if self.level is None:
            return
        if self.level == "word":
            r = np.empty(n, dtype=WORD_DTYPE)
            r["input"] = blk.i
            r["line"] = blk.line
            r["doc"] = -1 if blk.doc is None else blk.doc
            r["position"] = np.arange(blk.pos, blk.pos + n)
            r["id"] = blk.ids
            r["logprob"] = lp
            self._emit(blk.i, r)
            return
        key = blk.line if self.level == "line" else blk.doc
        starts = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
        keys = key[starts]
        cnt = np.diff(np.append(starts, n))
        lps = np.add.reduceat(lp, starts)
        oovs = np.add.reduceat(oovm.astype(np.int64), starts)
        u = t.unit
        j0 = 0
        if u[0] == keys[0]:  # continues the open unit
            u[1] += int(cnt[0])
            u[2] += int(oovs[0])
            u[3] += float(lps[0])
            j0 = 1
        if j0 < len(keys):
            done = []
            if u[0] >= 0:
                done.append(tuple(u))
            for j in range(j0, len(keys) - 1):
                done.append((int(keys[j]), int(cnt[j]), int(oovs[j]), float(lps[j])))
            j = len(keys) - 1
            t.unit = [int(keys[j]), int(cnt[j]), int(oovs[j]), float(lps[j])]
            if done:
                r = np.empty(len(done), dtype=UNIT_DTYPE)
                r["input"] = blk.i
                arr = np.array([d[:3] for d in done], dtype=np.int64).reshape(-1, 3)
                r["index"], r["tokens"], r["oov"] = arr[:, 0], arr[:, 1], arr[:, 2]
                r["logprob"] = [d[3] for d in done]
                self._emit(blk.i, r)

    def _emit(self, i: int, recs: np.ndarray) -> None:
        self.spool.write(i, recs)
        self.t[i].records += len(recs)

    def finish(self, i: int) -> None:
        t = self.t[i]
        if t.done:
            return
        t.done = True
        if self.level in ("line", "doc") and t.unit[0] >= 0:
            u = t.unit
            r = np.empty(1, dtype=UNIT_DTYPE)
            r["input"], r["index"], r["tokens"], r["oov"], r["logprob"] = i, u[0], u[1], u[2], u[3]
            self._emit(i, r)
            t.unit = [-1, 0, 0, 0.0]
        if self.spool is not None:
            self.spool.close(i)

    def running(self) -> tuple[int, float]:
        return sum(t.scored for t in self.t), sum(t.logprob for t in self.t)


# ================================================================ engines ==
NUMPY_MAX_TOKENS = 20_000  # engine="auto": inputs estimated below this skip numba
_PROJ_ROWS = 512


class NumpyRNN:
    """The model's scoring forward in plain numpy: same maths and dtypes as
    :meth:`streamlm.model.RNNLM.nll` (float32 activations, float64 log-sum-exp),
    without importing numba. Starting numba costs about a second, which
    dominates small jobs; totals agree with the numba path to ~1e-6 relative
    (different exp/tanh approximations), not bit for bit.
    """

    def __init__(self, params):
        self.params = params
        self.h: np.ndarray | None = None

    def set_state(self, h) -> None:
        self.h = np.array(h, dtype=self.params.dtype, copy=True).reshape(-1, self.params.config.H)

    def get_state(self) -> np.ndarray:
        return self.h.copy()

    def nll(self, xs, ts, reset=None, lengths=None) -> np.ndarray:
        p = self.params
        V, H = p.config.V, p.config.H
        xs, ts = np.asarray(xs), np.asarray(ts)
        N, T = xs.shape
        if xs.size and (xs.min() < 0 or xs.max() >= V or ts.min() < -1 or ts.max() >= V):
            raise ValueError(f"token ids out of range [0, {V})")
        reset = np.zeros((N, T), np.uint8) if reset is None else np.asarray(reset)
        xw = p.embed_W[xs] @ p.rnn_Wx  # (N, T, H)
        xw += p.rnn_b
        hs = np.empty((T + 1, N, H), dtype=p.dtype)
        hs[0] = self.h if self.h is not None else 0.0
        Wh = p.rnn_Wh
        for t in range(T):
            hp = hs[t]
            r = reset[:, t]
            if r.any():
                hp = hp * (r == 0)[:, None].astype(p.dtype)
            np.tanh(hp @ Wh + xw[:, t], out=hs[t + 1])
        flat = hs[1:].reshape(T * N, H)  # time-major rows
        labels = np.ascontiguousarray(ts.T).reshape(-1)
        out = np.zeros(T * N, dtype=np.float64)
        for i in range(0, T * N, _PROJ_ROWS):
            j = min(T * N, i + _PROJ_ROWS)
            lg = flat[i:j] @ p.affine_W
            lg += p.affine_b
            mx = lg.max(axis=1)
            s = np.exp(lg - mx[:, None]).sum(axis=1, dtype=np.float64)
            lab = labels[i:j]
            ok = lab >= 0
            picked = lg[np.arange(j - i), np.where(ok, lab, 0)].astype(np.float64)
            out[i:j] = np.where(ok, np.log(s) + (mx.astype(np.float64) - picked), 0.0)
        lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
        self.h = hs[lengths, np.arange(N)].copy()
        return out.reshape(T, N).T.copy()


class _Runner:
    """Calls the model on (N, T) blocks built from lane token runs."""

    def __init__(self, rnn, V: int, H: int, eos: int, dtype):
        self.rnn = rnn
        self.V, self.H, self.eos = V, H, eos
        self.dtype = dtype
        self.calls = 0

    def run(self, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
            h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows: per row (inputs xs, targets ts, reset flags) of its own length.

        h0: (N, H) carried states. Returns (nll (N, T) float64, final states (N, H)).
        """
        N = len(rows)
        T = max(len(r[1]) for r in rows)
        xs = np.full((N, T), self.eos, dtype=np.int32)
        ts = np.full((N, T), -1, dtype=np.int32)
        rs = np.zeros((N, T), dtype=np.uint8)
        lengths = np.empty(N, dtype=np.int64)
        for n, (x, t, r) in enumerate(rows):
            k = len(t)
            xs[n, :k], ts[n, :k], rs[n, :k] = x, t, r
            lengths[n] = k
        self.rnn.set_state(h0)
        nll = self.rnn.nll(xs, ts, reset=rs, lengths=lengths)
        self.calls += 1
        return nll, self.rnn.get_state()


def _row(ids: np.ndarray, prev: int, starts: np.ndarray, eos: int):
    """Inputs of a row: previous token (``eos`` at reset positions) and reset flags."""
    x = np.empty_like(ids)
    x[0] = prev
    x[1:] = ids[:-1]
    r = np.zeros(len(ids), dtype=np.uint8)
    if len(starts):
        x[starts] = eos
        r[starts] = 1
    return x, ids, r


class _Scorer:
    def __init__(self, sources: list[_Source], model, *, reset: str, batch: int,
                 chunk_tokens: int, acc: _Acc, ckpt: _Checkpointer | None,
                 progress: Callable[[dict], None] | None, dtype, engine: str = "numba"):

        self.sources = sources
        self.reset = reset
        self.batch = batch
        self.T = chunk_tokens
        self.acc = acc
        self.ckpt = ckpt
        self.progress = progress
        cfg = model.config
        self.H = cfg.H
        vocab = sources[0].vocab if sources else Vocab(model.vocab)
        self.eos = vocab.eos_id
        if engine == "numpy":
            rnn = NumpyRNN(model.params)
        else:
            from streamlm.model import RNNLM  # imports numba: only when it is used

            rnn = RNNLM(model.params)
        self.runner = _Runner(rnn, cfg.V, cfg.H, self.eos, dtype)
        self.dtype = dtype
        # input -> (h, previous token, tokens of the current long segment done, its key)
        self.state: dict[int, tuple[np.ndarray, int, int, int]] = {}
        self.final_states: dict[int, np.ndarray] = {}
        self.t0 = time.monotonic()
        self._since_ckpt = 0

    # ------------------------------------------------------------ helpers --
    def _after_call(self, n_tokens: int) -> None:
        self._since_ckpt += n_tokens
        if self.ckpt is not None and self._since_ckpt >= self.ckpt.every:
            self.ckpt.save(self.acc, self.state)
            self._since_ckpt = 0
        if self.progress is not None:
            tok, lp = self.acc.running()
            el = time.monotonic() - self.t0
            self.progress({"tokens": tok, "logprob": lp, "seconds": el,
                           "perplexity": math.exp(-lp / tok) if tok else None,
                           "scored_this_run": self.acc.total_scored})

    def run(self) -> None:
        if self.reset == "none":
            self._run_streams()
        else:
            self._run_segments()

    # ------------------------------------------------- reset none: streams --
    def _run_streams(self) -> None:
        eos, T = self.eos, self.T
        todo = [s for s in self.sources if not self.acc.t[s.index].done]
        # inputs resumed mid-way first (they hold state), then the rest in order
        todo.sort(key=lambda s: (s.index not in self.state, s.index))
        lanes: list[dict] = []
        pending = iter(todo)

        def open_lane() -> dict | None:
            for s in pending:
                i = s.index
                start = self.acc.t[i].scored
                h, prev, _, _ = self.state.get(i, (np.zeros(self.H, self.dtype), eos, 0, -1))
                return {"i": i, "it": _rechunk(_from(s.blocks(), start), T),
                        "h": h, "prev": prev, "start": start}
            return None

        while True:
            rows, blks, hs = [], [], []
            keep = []
            for lane in lanes + [None] * (self.batch - len(lanes)):
                while True:
                    if lane is None:
                        lane = open_lane()
                        if lane is None:
                            break
                    blk = next(lane["it"], None)
                    if blk is not None:
                        break
                    self._close_stream(lane)
                    lane = None
                if lane is None:
                    continue
                keep.append(lane)
                starts = np.array([0] if blk.pos == 0 else [], dtype=np.int64)
                rows.append(_row(blk.ids, lane["prev"], starts, eos))
                blks.append(blk)
                hs.append(lane["h"])
            lanes = keep
            if not lanes:
                break
            nll, hN = self.runner.run(rows, np.stack(hs))
            n_tok = 0
            for n, (lane, blk) in enumerate(zip(lanes, blks)):
                self.acc.add(blk, nll[n, :len(blk)])
                lane["h"] = hN[n]
                lane["prev"] = int(blk.ids[-1])
                self.state[lane["i"]] = (hN[n], lane["prev"], 0, -1)
                n_tok += len(blk)
            self._after_call(n_tok)

    def _close_stream(self, lane: dict) -> None:
        i = lane["i"]
        self.acc.finish(i)
        self.final_states[i] = np.array(lane["h"], copy=True)
        self.state.pop(i, None)

    # ----------------------------------------- reset line/doc: segments --
    def _items(self) -> Iterator[tuple]:
        """('seg', blk) for whole segments of <= T tokens; ('chunk', blk, first) for
        T-aligned chunks of longer segments; ('end', i) after each input."""
        T = self.T
        keyname = "line" if self.reset == "line" else "doc"
        for s in self.sources:
            i = s.index
            if self.acc.t[i].done:
                continue
            start = self.acc.t[i].scored
            _, _, seg_off, key0 = self.state.get(i, (None, None, 0, -1))
            cur: list[_Blk] = []
            have = 0
            # resumed inside a long segment: it continues if the next token has its key
            long_seg = seg_off > 0
            cur_key = key0 if long_seg else None
            for b in _from(s.blocks(), start):
                key = getattr(b, keyname)
                cuts = np.flatnonzero(np.diff(key)) + 1
                if cur_key is not None and key[0] != cur_key:
                    cuts = np.concatenate([[0], cuts])
                bounds = list(cuts) + [len(b)]
                a = 0
                for c in bounds:
                    if c > a:
                        piece = b.cut(a, c)
                        cur.append(piece)
                        have += len(piece)
                        cur_key = key[c - 1]
                        # stream a long segment in T-aligned chunks
                        while have > T or (long_seg and have >= T):
                            whole = _Blk.join(cur)
                            yield ("chunk", whole.cut(0, T), not long_seg)
                            long_seg = True
                            rest = whole.cut(T, len(whole))
                            cur = [rest] if len(rest) else []
                            have = len(rest)
                    if c < len(b):  # a segment ends at c
                        if cur:
                            yield (("chunk", _Blk.join(cur), not long_seg) if long_seg
                                   else ("seg", _Blk.join(cur)))
                        cur, have, long_seg = [], 0, False
                        cur_key = None
                    a = c
            if cur:
                yield (("chunk", _Blk.join(cur), not long_seg) if long_seg
                       else ("seg", _Blk.join(cur)))
            yield ("end", i)

    def _run_segments(self) -> None:
        eos, T, N = self.eos, self.T, self.batch
        keyname = "line" if self.reset == "line" else "doc"
        window: list[list[_Blk]] = []  # rows, each a run of whole segments
        row_len = 0
        ends: list[int] = []  # inputs that ended; finished once their tokens are scored

        def finish_ends() -> None:
            for i in ends:
                self.state.pop(i, None)
                self.acc.finish(i)
            ends.clear()

        def flush_window() -> None:
            nonlocal row_len
            if window:
                rows = []
                for segs in window:
                    starts = np.cumsum([0] + [len(s) for s in segs[:-1]])
                    ids = segs[0].ids if len(segs) == 1 else np.concatenate(
                        [s.ids for s in segs])
                    rows.append(_row(ids, eos, starts, eos))
                nll, _ = self.runner.run(rows, np.zeros((len(rows), self.H), self.dtype))
                n_tok = 0
                for n, segs in enumerate(window):
                    off = 0
                    for s in segs:
                        self.acc.add(s, nll[n, off:off + len(s)])
                        off += len(s)
                    n_tok += off
                window.clear()
                row_len = 0
                finish_ends()
                self._after_call(n_tok)
            finish_ends()

        for item in self._items():
            kind = item[0]
            if kind == "end":
                ends.append(item[1])
                if not window:
                    finish_ends()
                continue
            blk = item[1]
            if kind == "seg":
                self.state.pop(blk.i, None)  # a long segment before it has ended
                if window and row_len + len(blk) <= T:
                    window[-1].append(blk)
                    row_len += len(blk)
                else:
                    if len(window) == N:
                        flush_window()
                    window.append([blk])
                    row_len = len(blk)
                continue
            # a chunk of a long segment: alone in its call, its state carried
            first = item[2]
            flush_window()
            i = blk.i
            if first:
                h, prev, seg_off = np.zeros(self.H, self.dtype), eos, 0
                starts = np.array([0], dtype=np.int64)
            else:
                h, prev, seg_off, _ = self.state[i]
                starts = np.zeros(0, dtype=np.int64)
            nll, hN = self.runner.run([_row(blk.ids, prev, starts, eos)], h[None, :])
            self.acc.add(blk, nll[0, :len(blk)])
            key = int(getattr(blk, keyname)[-1])
            if len(blk) == T:  # the segment may go on: keep its state
                self.state[i] = (hN[0], int(blk.ids[-1]), seg_off + len(blk), key)
            else:
                self.state.pop(i, None)
            self._after_call(len(blk))
        flush_window()


# ============================================================= checkpoint ==
class _Checkpointer:
    def __init__(self, path: str, every: int, fingerprint: dict, H: int):
        self.path = path
        self.every = max(1, int(every))
        self.fingerprint = fingerprint
        self.H = H
        self.spool: _Spool | None = None

    def load(self) -> dict | None:
        p = self.path
        if not os.path.exists(p):
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                states = {k: z[k] for k in z.files if k.startswith("h_")}
        except Exception as e:  # noqa: BLE001 - any damage: one clear line
            raise UsageError(f"{p}: unreadable checkpoint ({type(e).__name__}: {e}); "
                             "delete it to start again") from None
        if not isinstance(meta, dict) or meta.get("format") != CKPT_FORMAT:
            raise UsageError(f"{p}: not a streamlm score checkpoint")
        if meta.get("version") != CKPT_VERSION:
            raise UsageError(f"{p}: checkpoint version {meta.get('version')!r} not supported")
        fp = meta.get("fingerprint", {})
        for k, v in self.fingerprint.items():
            if json.loads(json.dumps(v)) != fp.get(k):
                raise UsageError(f"{p}: checkpoint was written for a different run ({k} "
                                 "differs); delete it or use another --checkpoint file")
        meta["_states"] = states
        return meta

    def save(self, acc: _Acc, state: dict) -> None:
        if self.spool is not None:
            self.spool.sync()
        meta = {"format": CKPT_FORMAT, "version": CKPT_VERSION,
                "fingerprint": self.fingerprint,
                "inputs": [t.to_json() for t in acc.t],
                "state": {str(i): {"prev": int(prev), "seg_offset": int(so), "key": int(k)}
                          for i, (h, prev, so, k) in state.items()}}
        arrays = {f"h_{i}": np.asarray(h) for i, (h, prev, so, k) in state.items()}
        with atomic_path(self.path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        log.debug("checkpoint: %s tokens", f"{sum(t.scored for t in acc.t):,}")

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# ================================================================= output ==
def _write_output(path: str, level: str, spool: _Spool, sources: list[_Source],
                  vocab: Vocab, docs: bool) -> int:
    """Convert the spooled records into ``path`` (JSONL or Parquet), atomically."""
    parquet = os.path.splitext(path)[1].lower() in (".parquet", ".pq")
    rows = 0
    words = np.array(vocab.words, dtype=object)
    unk = vocab.unk_id
    with atomic_path(path) as tmp:
        writer = None
        f = None
        try:
            if parquet:
                import pyarrow as pa
                import pyarrow.parquet as pq
            else:
                f = open(tmp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            for s in sources:
                for r in spool.read(s.index):
                    cols = _columns(r, level, s.name, words, unk, docs)
                    rows += len(r)
                    if parquet:
                        table = pa.table(cols)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                        writer.write_table(table)
                    else:
                        keys = list(cols)
                        vals = [c.tolist() if isinstance(c, np.ndarray) else c
                                for c in cols.values()]
                        for rec in zip(*vals):
                            f.write(json.dumps(dict(zip(keys, rec)), allow_nan=False))
                            f.write("\n")
            if parquet and writer is None:  # no records: an empty table with the schema
                import pyarrow as pa
                import pyarrow.parquet as pq

                empty = np.zeros(0, dtype=spool.dtype)
                pq.write_table(pa.table(_columns(empty, level, "", words, unk, docs)), tmp)
        finally:
            if writer is not None:
                writer.close()
            if f is not None:
                f.close()
    return rows


def _columns(r: np.ndarray, level: str, name: str, words, unk: int, docs: bool) -> dict:
    n = len(r)
    cols: dict = {"input": r["input"].astype(np.int64), "path": [name] * n}
    if level == "word":
        cols["line"] = r["line"]
        if docs:
            cols["doc"] = r["doc"]
        cols["position"] = r["position"]
        cols["token"] = words[r["id"]].tolist() if n else []
        cols["oov"] = r["id"] == unk
        cols["logprob"] = r["logprob"]
        cols["log10prob"] = r["logprob"] / _LN10
    else:
        tok = r["tokens"].astype(np.float64)
        cols["index"] = r["index"]
        cols["tokens"] = r["tokens"]
        cols["oov"] = r["oov"]
        cols["logprob"] = r["logprob"]
        cols["log10prob"] = r["logprob"] / _LN10
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["perplexity"] = np.exp(-r["logprob"] / tok)
    return cols


# ================================================================== score ==
def _estimate_tokens(sources: list[_Source]) -> float:
    """A rough upper estimate of the tokens in the inputs (to pick the engine)."""
    est = 0.0
    for s in sources:
        if s.dataset is not None:
            est += s.dataset.num_tokens
        elif is_stream(s.path):
            return math.inf
        else:
            with open(s.path, "rb") as f:
                head = f.read(6)
            size = os.path.getsize(s.path)
            packed = head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
            est += size * (3.0 if packed else 0.5)  # >= 2 bytes per token in text
    return est


def _load(model):
    from streamlm.params import Model, load_model

    if isinstance(model, Model):
        return model
    return load_model(model)


def score(model, inputs: Sequence[str | os.PathLike], *, reset: str = "none",
          chunk_tokens: int = 2048, batch: int = 16, level: str | None = None,
          output: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 1_000_000, errors: str = "strict",
          column: str = "token_id", progress: Callable[[dict], None] | None = None,
          engine: str = "auto", dtype=np.float32) -> ScoreResult:
    """Score ``inputs`` with ``model`` (a path or a loaded :class:`Model`).

    See the module doc for the rules. Returns the summary (``summary["inputs"]``
    per input, the totals at the top level) and the final hidden state of each
    input (``reset="none"``). With ``output`` and ``level`` per-unit records are
    written to ``output`` (``.parquet`` -> Parquet, anything else -> JSONL),
    atomically and only if the whole run succeeds. ``engine``: ``numba`` (the
    compiled kernels), ``numpy`` (:class:`NumpyRNN`, no start-up cost) or
    ``auto`` (numpy when the inputs hold fewer than about NUMPY_MAX_TOKENS tokens).
    """
    t_start = time.monotonic()
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("no inputs given")
    if reset not in RESETS:
        raise UsageError(f"--reset must be one of {', '.join(RESETS)}, got {reset!r}")
    if level is not None and level not in LEVELS:
        raise UsageError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if (level is None) != (output is None):
        raise UsageError("--output and --level go together")
    if errors not in ("strict", "replace"):
        raise UsageError(f"--errors must be strict or replace, got {errors!r}")
    if chunk_tokens < 1 or batch < 1 or checkpoint_every < 1:
        raise UsageError("--chunk-tokens, --batch and --checkpoint-every must be >= 1")
    if inputs.count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    if engine not in ("auto", "numba", "numpy"):
        raise UsageError(f"engine must be auto, numba or numpy, got {engine!r}")
    output = None if output is None else os.fspath(output)
    if output is not None and os.path.isdir(output):
        raise UsageError(f"{output}: --output is a directory")

    m = _load(model)
    try:
        vocab = Vocab(m.vocab, source=m.path)
    except InputError as e:
        raise ModelFileError(f"bad model vocabulary: {e}", m.path) from None
    docs = reset == "doc" or level == "doc"
    sources = [_Source(k, p, vocab, docs, errors, column) for k, p in enumerate(inputs)]
    if engine == "auto":
        engine = "numpy" if _estimate_tokens(sources) <= NUMPY_MAX_TOKENS else "numba"

    ckpt = None
    spool_dir: Path | None = None
    tmp_spool = False
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        fp = {"model": m.meta.get("sha256"), "inputs": [s.fingerprint() for s in sources],
              "reset": reset, "level": level, "errors": errors, "column": column,
              "engine": engine,
              "output": None if output is None else os.path.abspath(output)}
        ckpt = _Checkpointer(checkpoint, checkpoint_every, fp, m.config.H)
        spool_dir = Path(checkpoint + ".spool")
    elif level is not None:
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        spool_dir = Path(tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.spool-",
                                          dir=parent))
        tmp_spool = True
    spool = None
    if level is not None:
        spool = _Spool(spool_dir, WORD_DTYPE if level == "word" else UNIT_DTYPE)
    acc = _Acc(len(sources), vocab, level, spool)
    if ckpt is not None:
        ckpt.spool = spool
    scorer = _Scorer(sources, m, reset=reset, batch=batch, chunk_tokens=chunk_tokens,
                     acc=acc, ckpt=ckpt, progress=progress, dtype=m.params.dtype,
                     engine=engine)
    ok = False
    try:
        if ckpt is not None:
            saved = ckpt.load()
            if saved is None and spool is not None:
                # killed before its first checkpoint: records spooled then are not
                # counted anywhere, start the spool again
                for i in range(len(sources)):
                    spool.truncate(i, 0)
            if saved is not None:
                if len(saved["inputs"]) != len(sources):
                    raise UsageError(f"{checkpoint}: checkpoint has a different number of "
                                     "inputs")
                acc.t = [_Totals.from_json(d) for d in saved["inputs"]]
                for k, d in saved.get("state", {}).items():
                    h = saved["_states"][f"h_{k}"]
                    if h.shape != (m.config.H,):
                        raise UsageError(f"{checkpoint}: checkpoint state has the wrong shape")
                    scorer.state[int(k)] = (h.astype(m.params.dtype), int(d["prev"]),
                                            int(d["seg_offset"]), int(d["key"]))
                if spool is not None:
                    for i, t in enumerate(acc.t):
                        spool.truncate(i, t.records)
                log.info("resuming from %s: %s tokens already scored", checkpoint,
                         f"{sum(t.scored for t in acc.t):,}")
        hold = contextlib.nullcontext()
        if engine == "numba":  # (the numpy engine must not import numba: start-up)
            from streamlm.model import hold_blas

            hold = hold_blas()
        with hold:
            scorer.run()
        for s in sources:  # inputs with no tokens at all
            acc.finish(s.index)
        if spool is not None:
            spool.close_all()
        if ckpt is not None:
            ckpt.save(acc, {})  # everything scored: a rerun only rewrites the output
        if level is not None:
            n = _write_output(output, level, spool, sources, vocab, docs)
            log.info("wrote %s: %s %s records", output, f"{n:,}", level)
        ok = True
    finally:
        if spool is not None:
            spool.close_all()
        if ok and ckpt is not None:
            ckpt.remove()  # before the spool: a checkpoint never outlives its spool
        if (ok or tmp_spool) and spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)

    per = []
    for s, t in zip(sources, acc.t):
        d = {"path": s.name}
        d.update(summarize(t.scored, t.oov, t.logprob, t.logprob_oov))
        per.append(d)
    tot = summarize(sum(t.scored for t in acc.t), sum(t.oov for t in acc.t),
                    math.fsum(t.logprob for t in acc.t), math.fsum(t.logprob_oov for t in acc.t))
    seconds = time.monotonic() - t_start
    tot["inputs"] = per
    tot["model"] = m.path
    tot["reset"] = reset
    tot["engine"] = engine
    tot["seconds"] = round(seconds, 3)
    tot["tokens_per_second"] = (round(acc.total_scored / seconds, 1) if seconds > 0 else None)
    return ScoreResult(tot, scorer.final_states, seconds)


def format_summary(summary: dict) -> str:
    """The summary as readable text (KenLM ``query``'s figures, per input and total)."""

    def block(d: dict, title: str) -> list[str]:
        def f(x, fmt):
            return "n/a" if x is None else format(x, fmt)

        return [
            title,
            f"  tokens                    {d['tokens']:,}",
            f"  OOVs                      {d['oov']:,}",
            f"  log-probability (ln)      {f(d['logprob'], '.4f')}",
            f"  log-probability (log10)   {f(d['log10prob'], '.4f')}",
            f"  perplexity incl. OOVs     {f(d['perplexity'], '.4f')}",
            f"  perplexity excl. OOVs     {f(d['perplexity_excl_oov'], '.4f')}",
            f"  bits per token            {f(d['bits_per_token'], '.4f')}",
        ]

    lines: list[str] = []
    per = summary.get("inputs", [])
    if len(per) > 1:
        for d in per:
            lines += block(d, d["path"])
        lines += block(summary, "total")
    elif per:
        lines += block(summary, per[0]["path"])
    return "\n".join(lines) + "\n"
