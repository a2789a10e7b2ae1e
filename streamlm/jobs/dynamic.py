"""Dynamic evaluation: the model adapts to the text it scores (Krause et al. 2018,
"Dynamic Evaluation of Neural Sequence Models"; Mikolov's ``rnnlm -dynamic``).

The text is cut into segments of ``segment`` tokens, counted from the start of its
stream (or of each line or document with ``--reset line|doc``). Each segment is
scored by the weights as they are, then the weights take one gradient step on it:

    theta <- theta - lr * g / (RMS + eps) + decay * (theta0 - theta)

g the gradient of the segment's mean NLL (truncated BPTT over the segment, the
state carried in), RMS the root mean square of such gradients, per parameter,
measured on some of the model's training text (``--dynamic-stats-on``, as Krause
et al. do) or on the held-out text the step is tuned on (streamlm.jobs.dynamic_tuning),
theta0 the trained weights. ``sgd``
is RMS = 1, eps = 0 (Mikolov's plain SGD with decay 0). No token is scored by
weights that have seen it: a segment's NLL comes from the forward pass its step
then learns from.

The scope follows ``--reset``: along each input's stream (``none``), or from
theta0 again at every line or document (``line``, ``doc``: each scored as if
alone). A step moves the dense parameters (the recurrent layers, a full softmax,
the class layer), the embedding rows of the segment's words (every row when a full
softmax is tied to the embedding) and, in a class
model, the output rows of the segment's target classes; a word row no segment
touches decays lazily (``kernels.dyn_catch_up``): the same numbers as a decay of
every row at every step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streamlm.compute import kernels as K
from streamlm.errors import UsageError
from streamlm.nn.heads import ElementStep
from streamlm.nn.model import RNNLM
from streamlm.nn.optim import dynamic_step
from streamlm.nn.params import Params, _merge
from streamlm.options import DYNAMIC_DEFAULTS, DYNAMIC_SEGMENT

log = logging.getLogger("streamlm.jobs.dynamic")

RMS_EPS = 1e-5


@dataclass(frozen=True)
class Settings:
    """What dynamic evaluation does: ``method`` rms or sgd, the step ``lr``, the
    ``decay`` toward the trained weights, the tokens per ``segment``. ``of(dict)``
    fills what the dict leaves out with the method's defaults."""

    method: str = "rms"
    lr: float = DYNAMIC_DEFAULTS["rms"][0]
    decay: float = DYNAMIC_DEFAULTS["rms"][1]
    segment: int = DYNAMIC_SEGMENT

    @classmethod
    def of(cls, fields: dict) -> Settings:
        lr, decay = DYNAMIC_DEFAULTS.get(fields.get("method", "rms"), DYNAMIC_DEFAULTS["rms"])
        return cls(**{"lr": lr, "decay": decay, **fields})

    def check(self) -> Settings:
        if self.method not in ("rms", "sgd"):
            raise UsageError(f"--dynamic must be rms, sgd or auto, got {self.method!r}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise UsageError(f"--dynamic-lr must be >= 0, got {self.lr}")
        if not (0.0 <= self.decay < 1.0):
            raise UsageError(f"--dynamic-decay must be in [0, 1), got {self.decay}")
        if self.segment < 1:
            raise UsageError(f"--dynamic-segment must be >= 1, got {self.segment}")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def floored(rms: np.ndarray, params: Params) -> np.ndarray:
    """The RMS statistics (float64) floored, array by array, at the array's mean. A
    parameter that the tuning text never moved (the embedding row of a word it lacks:
    RMS 0) would otherwise take a step of lr / eps the first time the scored text
    moves it: measured on PTB valid and scoring PTB test, unfloored statistics took
    the tuned step from -12.7% on valid to +21% on test. Krause et al. measure them
    on the training data, where every word occurs."""
    out = rms.astype(np.float64)  # (a copy: the caller's statistics stay as measured)
    for name, off in params.offsets.items():
        view = out[off:off + params[name].size]
        np.maximum(view, view.mean(), out=view)
    return out


class Adapter:
    """The adapting weights of one stream: ``segment(xs, ts, state)`` scores a segment
    (per-token NLL) with the weights as they are, then steps on it."""

    def __init__(self, params: Params, settings: Settings, rms: np.ndarray | None = None):
        self.settings = settings
        self.p = params.copy()  # theta, moving
        self.theta0 = params.flat.copy()
        self.rnn = RNNLM(self.p)  # not frozen: its input terms follow the moving weights
        self.g = self.p.zeros_like()
        dt = self.p.dtype.type
        if settings.method == "rms":
            if rms is None:
                raise UsageError("--dynamic rms needs the gradients' RMS statistics "
                                 "(--dynamic-stats FILE, or --tune-on FILE to measure them)")
            self.inv = (1.0 / (floored(rms, self.p) + RMS_EPS)).astype(self.p.dtype)
        else:
            self.inv = np.ones_like(self.p.flat)
        self.lr, self.keep = dt(settings.lr), dt(1.0 - settings.decay)
        self.decay = dt(settings.decay)
        cfg = self.p.config
        off = self.p.offsets
        self.first_dense = off[cfg.layer_names[0]]
        self.classes = self.p.classes
        # a full softmax (not tied: its rows are the embedding's) steps as its backward
        # goes (heads.ElementStep): the dense step then ends where the output layer starts
        self.head_step = None
        self.dense_end = self.p.flat.shape[0]
        if self.rnn.head.steps_in_backward and not cfg.tied:
            self.head_step = ElementStep(Params(cfg, self.p.dtype, self.theta0),
                                         Params(cfg, self.p.dtype, self.inv), self.lr,
                                         self.decay)
            self.dense_end = off["affine_W"]
            self.head_range = np.array([[self.dense_end, self.p.flat.shape[0]]], dtype=np.int64)
        # word rows decayed lazily (the step each was last brought up to): the
        # embedding's, and a class model's output rows and biases
        V = cfg.V
        self.embed_stamp = np.zeros(V, dtype=np.int64)
        self.all_rows = np.arange(V, dtype=np.int64)
        cl = self.classes is not None
        self.row_stamp = np.zeros(V, dtype=np.int64) if cl and not cfg.tied else None
        self.bias_stamp = np.zeros(V, dtype=np.int64) if cl else None
        self.n = 0  # steps since the last reset
        self.steps = 0  # steps in all (the summary's; a step-less run was static)
        self._moved: list[np.ndarray] = []  # ranges stepped since the reset

    @property
    def active(self) -> bool:
        return self.settings.lr > 0 or self.settings.decay > 0

    def _stamps(self) -> list[np.ndarray]:
        return [x for x in (self.embed_stamp, self.row_stamp, self.bias_stamp) if x is not None]

    def reset(self) -> None:
        """Back to the trained weights (a new line or document with --reset)."""
        if self._moved:
            for a, b in np.concatenate(self._moved):
                self.p.flat[a:b] = self.theta0[a:b]
        self._moved.clear()
        for st in self._stamps():
            st[:] = 0
        self.n = 0

    # ------------------------------------------------------------ the step --
    def _rows(self, xs: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The embedding rows a step moves (model order): the rows the segment reads,
        or every row when a full softmax is tied to the embedding; and a class model's
        output word ranges (class order) of its target classes."""
        cl = self.classes
        if cl is None and self.p.config.tied:  # the output layer reaches every word row
            return self.all_rows, None
        ids = np.unique(xs if cl is None else cl.rank[xs]).astype(np.int64)
        if cl is None:
            return ids, None
        lab = cl.to_internal(ts.reshape(-1))
        cls = np.unique(cl.cls[lab[lab >= 0]])
        return ids, np.stack([cl.start[cls], cl.start[cls + 1]], axis=1).astype(np.int64)

    @staticmethod
    def _words(ranges: np.ndarray) -> np.ndarray:
        return (np.concatenate([np.arange(a, b) for a, b in ranges]) if len(ranges)
                else np.zeros(0, dtype=np.int64))

    def _catch_up(self, ids: np.ndarray, ranges: np.ndarray | None) -> None:
        """The rows a segment reads brought up to this step (their pending decay)."""
        cfg, off, flat, t0, n, keep = (self.p.config, self.p.offsets, self.p.flat,
                                       self.theta0, self.n, self.keep)
        K.dyn_catch_up(flat, t0, off["embed_W"], cfg.D, ids, self.embed_stamp, n, keep)
        if ranges is None:
            return
        words = self._words(ranges)
        if cfg.tied:  # the output rows are embedding rows
            K.dyn_catch_up(flat, t0, off["embed_W"], cfg.D, words, self.embed_stamp, n, keep)
        else:
            K.dyn_catch_up(flat, t0, off["affine_W"], cfg.H, words, self.row_stamp, n, keep)
        K.dyn_catch_up(flat, t0, off["affine_b"], 1, words, self.bias_stamp, n, keep)

    def segment(self, xs: np.ndarray, ts: np.ndarray, state: np.ndarray | None,
                learn: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Score a segment xs, ts (1, K) after ``state``, then step on it (unless
        ``learn`` is False: the last segment of a line or document, whose step no
        token would see). Returns (NLL (1, K) float64, the state after it)."""
        if not self.active:  # (lr and decay 0: the trained weights, scored as they are)
            nll, after = self.rnn.forward(xs, ts, state, tokens=True)
            self.rnn._cache = None
            return nll, after
        ids, ranges = self._rows(xs, ts)
        self._catch_up(ids, ranges)
        nll, after = self.rnn.forward(xs, ts, state, tokens=True)
        if not learn:
            self.rnn._cache = None
            return nll, after
        self.rnn.backward(self.g, self.head_step)
        seg = self._step_ranges(ids, ranges)
        dynamic_step(self.p.flat, self.theta0, self.g.flat, self.inv, self.lr, self.decay, seg)
        self.n += 1
        self.steps += 1
        self._stamp(ids, ranges)
        self._moved.append(seg)
        if self.head_step is not None:  # (the output layer stepped in the backward)
            self._moved.append(self.head_range)
        if len(self._moved) > 64:  # (merged now and then: bounded memory)
            self._moved = [_merge(np.concatenate(self._moved))]
        return nll, after

    def _step_ranges(self, ids: np.ndarray, ranges: np.ndarray | None) -> np.ndarray:
        """The flat ranges a step moves: the dense parameters and the rows it read."""
        cfg, off = self.p.config, self.p.offsets
        if ranges is not None:  # a class model: its row-sparse segments
            return self.p.segments(ids, ranges)
        rows = np.stack([ids, ids + 1], axis=1).astype(np.int64)
        embed = off["embed_W"] + _merge(rows) * cfg.D
        dense = np.array([[self.first_dense, self.dense_end]], dtype=np.int64)
        return np.ascontiguousarray(np.concatenate([embed, dense]))

    def _stamp(self, ids: np.ndarray, ranges: np.ndarray | None) -> None:
        """The rows a step moved are up to date at the step it ends (self.n)."""
        self.embed_stamp[ids] = self.n
        if ranges is not None:
            words = self._words(ranges)
            (self.embed_stamp if self.p.config.tied else self.row_stamp)[words] = self.n
            self.bias_stamp[words] = self.n

    def weights(self) -> Params:
        """The adapted weights, every lazily decayed row brought up to date (a copy)."""
        V = self.p.config.V
        if self.active:
            self._catch_up(np.arange(V, dtype=np.int64), None if self.classes is None
                           else np.array([[0, V]], dtype=np.int64))
        return self.p.copy()

    # -------------------------------------------------------- checkpointing --
    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {"dyn_theta": self.p.flat.copy(), "dyn_embed_stamp": self.embed_stamp.copy()}
        if self.row_stamp is not None:
            out["dyn_row_stamp"] = self.row_stamp.copy()
        if self.bias_stamp is not None:
            out["dyn_bias_stamp"] = self.bias_stamp.copy()
        return out

    def state_meta(self) -> dict:
        return {"n": self.n, "steps": self.steps, "settings": self.settings.to_json()}

    def load_state(self, arrays: dict, meta: dict) -> None:
        saved = meta.get("settings")  # (the step resolved from defaults that may change)
        if saved is not None and saved != self.settings.to_json():
            raise UsageError(f"the checkpoint's dynamic evaluation ran with {saved}, this "
                             f"run's is {self.settings.to_json()}: pass the same settings, "
                             "or delete the checkpoint to start again")
        self.p.flat[...] = arrays["dyn_theta"]
        self.embed_stamp[...] = arrays["dyn_embed_stamp"]
        if self.row_stamp is not None:
            self.row_stamp[...] = arrays["dyn_row_stamp"]
        if self.bias_stamp is not None:
            self.bias_stamp[...] = arrays["dyn_bias_stamp"]
        self.n = int(meta["n"])
        self.steps = int(meta.get("steps", 0))  # (older checkpoints: not counted)
        # any range may have moved before the checkpoint: a reset restores them all
        self._moved = [np.array([[0, self.p.flat.shape[0]]], dtype=np.int64)]


# -------------------------------------------------------------- the driver --
class DynamicScheduler:
    """Scores ``sources`` one stream at a time with an :class:`Adapter` (the scheduler of
    dynamic evaluation: a stream's segments are sequential, each learned from before
    the next). Segments are ``segment`` tokens from the start of each input (``reset``
    none) or of each line or document, whatever the chunks the text was read in: any
    ``--chunk-tokens`` or ``--batch`` gives the same numbers. ``state`` and
    ``adapter`` are what a checkpoint saves (streamlm.jobs.schedule.Carried; a
    checkpoint is written only between segments)."""

    def __init__(self, sources, adapter: Adapter, *, eos: int, reset: str, acc,
                 after_call=None, dtype=np.float32):
        self.sources, self.adapter, self.eos, self.reset = sources, adapter, eos, reset
        self.acc, self.after_call, self.dtype = acc, after_call, dtype
        self.K = adapter.settings.segment
        self.state: dict = {}
        self.final_states: dict[int, np.ndarray] = {}

    def run(self) -> None:
        from streamlm.jobs.schedule import Carried, skip

        for s in self.sources:
            i = s.index
            if self.acc.t[i].done:
                continue
            c = self.state.get(i)
            if c is None:  # (resumed: the adapter's weights came with the checkpoint)
                self.adapter.reset()
            blocks = skip(s.metered_blocks(self.acc.t[i]), self.acc.t[i].scored)
            units = self._stream(blocks, c) if self.reset == "none" else \
                self._units(blocks, c)
            h = prev = None
            for blk, first, learn, offset, key in units:
                if first:
                    h, prev = None, self.eos
                    if self.reset != "none":
                        self.adapter.reset()
                elif h is None:  # resumed inside a stream or a unit
                    h, prev = c.h[None, :].astype(self.dtype), c.prev
                xs = np.empty((1, len(blk)), dtype=np.int32)
                xs[0, 0] = prev
                xs[0, 1:] = blk.ids[:-1]
                nll, h = self.adapter.segment(xs, blk.ids[None, :].astype(np.int32), h, learn)
                prev = int(blk.ids[-1])
                self.acc.add(blk, nll[0])
                self.state[i] = Carried(h[0].copy(), prev, offset + len(blk), key)
                if self.after_call is not None:
                    self.after_call(len(blk))
            self.acc.finish(i)
            self.final_states[i] = None if h is None else h[0].copy()
            self.state.pop(i, None)

    def _stream(self, blocks, c) -> Iterator[tuple]:
        """reset none: segments of K tokens from the input's start (resumed: from the
        carried offset, a multiple of K), every one learned from."""
        from streamlm.jobs.schedule import rechunk

        offset = 0 if c is None else c.seg_offset
        for blk in rechunk(blocks, self.K):
            yield blk, offset == 0, True, offset, -1
            offset += len(blk)

    def _units(self, blocks, c) -> Iterator[tuple]:
        """reset line|doc: each line or document alone, in segments of K tokens from its
        start; its last segment is not learned from (its step no token would see)."""
        from streamlm.data.tokenizer import Block

        keyname = "line" if self.reset == "line" else "doc"
        pieces: list = []
        cur = None if c is None else c.key
        offset = 0 if c is None else c.seg_offset

        def emit():
            nonlocal offset
            if not pieces:
                return
            unit = Block.join(pieces)
            n = len(unit)
            for a in range(0, n, self.K):
                b = min(n, a + self.K)
                yield unit.cut(a, b), offset == 0, b < n, offset, cur
                offset += b - a
            offset = 0

        for blk in blocks:
            key = getattr(blk, keyname)
            cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
            starts = [0, *cuts.tolist()]
            ends = [*cuts.tolist(), len(blk)]
            for a, b in zip(starts, ends):
                k = int(key[a])
                if cur is not None and k != cur:
                    yield from emit()
                    pieces.clear()
                cur = k
                pieces.append(blk.cut(a, b))
        yield from emit()


def summary(adapter: Adapter, info: dict, tokens: int, reset: str) -> dict:
    """What the run's summary says of dynamic evaluation: its settings (``info``) and
    the steps taken; a warning when it took none (every unit no longer than a
    segment: the trained weights scored every token)."""
    if adapter.steps == 0 and adapter.active and tokens > 0:
        unit = {"none": "input", "line": "line", "doc": "document"}.get(reset, "unit")
        log.warning("warning: dynamic evaluation took no step: no %s was longer than "
                    "--dynamic-segment %d tokens, so every token was scored by the "
                    "trained weights (a shorter --dynamic-segment adapts within them)",
                    unit, adapter.settings.segment)
    return {**info, "steps": adapter.steps}
