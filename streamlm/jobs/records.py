"""Scores as they accumulate: running sums per input, and per-unit records on disk.

The accumulator adds each scored block to its input's float64 sums and, with a
``level``, turns it into per-line, per-document or per-word records. Records
go to a spool (one binary file of fixed-size numpy records per input) rather
than memory, so a job's memory does not grow with its input; the outputs
(``streamlm.jobs.outputs``) are written from the spool at the end, and a resumed job
truncates the spool to what its checkpoint counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamlm.data.tokenizer import Block
from streamlm.errors import UsageError

UNIT_DTYPE = np.dtype([("input", "<i4"), ("index", "<i8"), ("tokens", "<i8"),
                       ("oov", "<i8"), ("logprob", "<f8"), ("logprob_oov", "<f8"),
                       ("words", "<i8"), ("bytes", "<i8")])
WORD_DTYPE = np.dtype([("input", "<i4"), ("line", "<i8"), ("doc", "<i8"),
                       ("position", "<i8"), ("id", "<i4"), ("logprob", "<f8")])
# a mix with an n-gram model (streamlm.jobs.mix): logprob is the mix's, and each model's own
MIX_WORD_DTYPE = np.dtype(WORD_DTYPE.descr + [("rnn_logprob", "<f8"), ("ngram_logprob", "<f8"),
                                              ("oov", "?")])


@dataclass
class Totals:
    """Running sums of one input (float64), its position, its open unit and (documents)
    its rows: all a job counts of the input, owned here, and what a score checkpoint
    keeps of it."""

    scored: int = 0  # tokens of this input scored so far (= its position)
    oov: int = 0
    logprob: float = 0.0
    logprob_oov: float = 0.0
    words: int = 0  # of the text scored (Block.words, Block.nbytes: any tokeniser)
    nbytes: int = 0
    done: bool = False
    records: int = 0  # per-unit records spooled
    # the open unit: index, tokens, oov, logprob, logprob of its OOVs, words, bytes
    unit: list = field(default_factory=lambda: [-1, 0, 0, 0.0, 0.0, 0, 0])
    # a document input, once read to its end (streamlm.data.inputs.DocSource.blocks): its
    # rows, the numbers of the bad rows skipped, and where the first of them is and
    # what is wrong with it ("line 7: invalid JSON (...)"; None: not known)
    rows: int = 0
    skipped: list = field(default_factory=list)
    why: str | None = None
    mix: dict | None = None  # a mix: each model's own sums (streamlm.jobs.mix.SUMS)
    # once done: the OOVs that are a literal <unk> of the text (None: token ids, pieces)
    unk_literal: int | None = None

    def to_json(self) -> dict:
        return {"scored": self.scored, "oov": self.oov, "logprob": self.logprob,
                "logprob_oov": self.logprob_oov, "words": self.words, "bytes": self.nbytes,
                "done": self.done, "records": self.records,
                "unit": self.unit, "rows": self.rows, "skipped": self.skipped, "why": self.why,
                "mix": self.mix, "unk_literal": self.unk_literal}

    @classmethod
    def from_json(cls, d: dict) -> Totals:
        """The Totals of :meth:`to_json`; of an older checkpoint too (no ``why``, ``mix``
        or ``unk_literal``: None)."""
        u = d["unit"]
        return cls(scored=int(d["scored"]), oov=int(d["oov"]), logprob=float(d["logprob"]),
                   logprob_oov=float(d["logprob_oov"]), words=int(d["words"]),
                   nbytes=int(d["bytes"]), done=bool(d["done"]), records=int(d["records"]),
                   unit=[int(u[0]), int(u[1]), int(u[2]), float(u[3]), float(u[4]), int(u[5]),
                         int(u[6])],
                   rows=int(d["rows"]), skipped=[int(r) for r in d["skipped"]],
                   why=d.get("why"),
                   mix=None if d.get("mix") is None else dict(d["mix"]),
                   unk_literal=None if d.get("unk_literal") is None else int(d["unk_literal"]))


class Spool:
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


class Accumulator:
    """Running sums per input, and per-unit records into the spool. With a ``mixer``
    (streamlm.jobs.mix.Mixer) every block's log-probabilities are the mix's."""

    def __init__(self, n_inputs: int, unk_id: int, level: str | None, spool: Spool | None,
                 mixer=None):
        self.t = [Totals() for _ in range(n_inputs)]
        self.unk = unk_id
        self.level = level
        self.spool = spool
        self.mixer = mixer
        self.total_scored = 0
        self.on_finish = None  # called with the input's index when it ends

    def add(self, blk: Block, nll: np.ndarray) -> None:
        t = self.t[blk.i]
        if blk.pos != t.scored:  # pragma: no cover - an engine bug, never user input
            raise RuntimeError(f"input {blk.i}: scored out of order ({blk.pos} != {t.scored})")
        n = len(blk)
        lp = -np.asarray(nll, dtype=np.float64)
        oovm = blk.ids == self.unk
        extra = None
        if self.mixer is not None:
            lp, oovm, extra = self.mixer.mix(blk, lp, oovm, t)
        noov = int(np.count_nonzero(oovm))
        t.scored += n
        t.oov += noov
        t.logprob += float(lp.sum())
        t.words += int(blk.words.sum())
        t.nbytes += int(blk.nbytes.sum())
        if noov:
            t.logprob_oov += float(lp[oovm].sum())
        self.total_scored += n
        if self.level is None:
            return
        if self.level == "word":
            r = np.empty(n, dtype=self.spool.dtype)
            r["input"] = blk.i
            r["line"] = blk.line
            r["doc"] = -1 if blk.doc is None else blk.doc
            r["position"] = np.arange(blk.pos, blk.pos + n)
            r["id"] = blk.ids
            r["logprob"] = lp
            for k, v in (extra or {}).items():
                if k in r.dtype.names:
                    r[k] = v
            self._emit(blk.i, r)
            return
        key = blk.line if self.level == "line" else blk.doc
        starts = np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1])
        keys = key[starts]
        cnt = np.diff(np.append(starts, n))
        lps = np.add.reduceat(lp, starts)
        oovs = np.add.reduceat(oovm.astype(np.int64), starts)
        lpo = np.add.reduceat(np.where(oovm, lp, 0.0), starts)
        wds = np.add.reduceat(blk.words.astype(np.int64), starts)
        nbs = np.add.reduceat(blk.nbytes.astype(np.int64), starts)
        u = t.unit
        j0 = 0
        if u[0] == keys[0]:  # the block starts inside the open unit
            u[1] += int(cnt[0])
            u[2] += int(oovs[0])
            u[3] += float(lps[0])
            u[4] += float(lpo[0])
            u[5] += int(wds[0])
            u[6] += int(nbs[0])
            j0 = 1
        if j0 == len(keys):
            return
        # done: the open unit (a new one starts), and the block's units but its last
        done = slice(j0, len(keys) - 1)
        r = np.empty((u[0] >= 0) + max(0, len(keys) - 1 - j0), dtype=UNIT_DTYPE)
        r["input"] = blk.i
        k = 0
        if u[0] >= 0:
            r[0] = (blk.i, *u)
            k = 1
        r["index"][k:], r["tokens"][k:], r["oov"][k:] = keys[done], cnt[done], oovs[done]
        r["logprob"][k:], r["logprob_oov"][k:] = lps[done], lpo[done]
        r["words"][k:], r["bytes"][k:] = wds[done], nbs[done]
        t.unit = [int(keys[-1]), int(cnt[-1]), int(oovs[-1]), float(lps[-1]), float(lpo[-1]),
                  int(wds[-1]), int(nbs[-1])]
        if len(r):
            self._emit(blk.i, r)

    def _emit(self, i: int, recs: np.ndarray) -> None:
        self.spool.write(i, recs)
        self.t[i].records += len(recs)

    def finish(self, i: int) -> None:
        t = self.t[i]
        if t.done:
            return
        t.done = True
        if self.mixer is not None:
            self.mixer.finish(i)
        if self.on_finish is not None:
            self.on_finish(i)
        if self.level in ("line", "doc") and t.unit[0] >= 0:
            r = np.array([(i, *t.unit)], dtype=UNIT_DTYPE)
            self._emit(i, r)
            t.unit = [-1, 0, 0, 0.0, 0.0, 0, 0]
        if self.spool is not None:
            self.spool.close(i)

    def running(self) -> tuple[int, float]:
        return sum(t.scored for t in self.t), sum(t.logprob for t in self.t)
