"""What updates the weights: clipping, SGD, Adam, the weight average, the lr schedules.

* Global-norm clipping (the book's ``clip_grads``): the rate ``clip / (norm +
  1e-6)`` when below 1, applied to the gradient inside the update (no pass of
  its own).
* :class:`SGD` and :class:`Adam` (the book's: the bias correction folded into
  ``lr_t``) over the flat parameter buffer, on all of streamlm's threads. A
  class model's gradient is row-sparse (``seg``: the ranges from
  ``RNNLM.touched()``): then only those ranges move ("lazy": untouched rows
  keep their weights and Adam moments) and their gradient is zeroed in the
  same pass.
* :class:`WeightAverage` (``--ema``, Polyak averaging): an exponential moving
  average of the weights, updated every EMA_EVERY steps and debiased as Adam's
  moments are; ``with opt.averaged(flat):`` the weights are the average.
* The learning-rate schedules of ``--anneal`` (:func:`make_schedule`), lowered
  at epoch ends.

An :class:`Optimizer` keeps its state (Adam's m, v and t; the average) and
hands it to the checkpoint (``state_arrays`` / ``state_meta``, under the names
checkpoints have always used) and takes it back (``load_state``). Every kernel
it calls lives in :mod:`streamlm.compute.kernels`.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np

from streamlm.compute import kernels as K
from streamlm.compute.threads import pool
from streamlm.errors import InputError, UsageError

log = logging.getLogger("streamlm.jobs.train")

ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-7  # as the book's Adam
CLIP_EPS = 1e-6  # as the book's clip_grads
EMA_EVERY = 4  # steps between updates of the weight average (decay ** EMA_EVERY each)


# ------------------------------------------------- maps over the flat buffer --
# Each takes ``seg``: None for the whole flat buffer, or (K, 2) int64 ranges
# [a, b) of it, the only elements a row-sparse step touches (a class model's
# touched rows and columns; streamlm.nn.params.Params.segments). With ``seg`` the
# updates also zero the gradient there, in the same pass.
def flat_chunks(P: int, threads: int) -> list[tuple[int, int]]:
    """Slices of a flat buffer of P elements for the optimisers: multiples of 4096."""
    if threads == 1 or P < 65536:
        return [(0, P)]
    step = -(-P // threads)
    step = -(-step // 4096) * 4096
    return [(i, min(P, i + step)) for i in range(0, P, step)]


def _segment_parts(seg: np.ndarray, threads: int) -> list[np.ndarray]:
    """The segments split into at most ``threads`` groups of near-equal length."""
    if threads == 1 or seg.shape[0] < 2:
        return [seg]
    ends = np.cumsum(seg[:, 1] - seg[:, 0])
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, threads) / threads)
    return [g for g in np.split(seg, np.unique(cuts)) if len(g)]


def sum_squares(g: np.ndarray, seg: np.ndarray | None = None) -> float:
    """sum(g**2) in float64 of a flat buffer g: (P,) (or of its segments)."""
    p = pool()
    if seg is not None:
        parts = _segment_parts(seg, p.threads)
        sums = [0.0] * len(parts)

        def run_seg(k):
            sums[k] = K.sum_squares_segments(g, parts[k])

        p.map(run_seg, [(k,) for k in range(len(parts))])
        return float(sum(sums))
    parts = flat_chunks(g.shape[0], p.threads)
    out = [0.0] * len(parts)

    def run(k, i, j):
        out[k] = K.sum_squares(g[i:j])

    p.map(run, [(k, i, j) for k, (i, j) in enumerate(parts)])
    return float(sum(out))


def sgd_update(p: np.ndarray, g: np.ndarray, lr, gscale=None,
               seg: np.ndarray | None = None) -> None:
    """p -= lr * (g * gscale) (lr, gscale: scalars of p's dtype; gscale default 1);
    with ``seg``, only on the segments, and g = 0 there afterwards."""
    gs = p.dtype.type(1) if gscale is None else gscale
    pl = pool()
    if seg is not None:
        pl.map(lambda s: K.sgd_segments(p, g, s, lr, gs),
               [(s,) for s in _segment_parts(seg, pl.threads)])
        return
    pl.map(lambda i, j: K.sgd_update(p[i:j], g[i:j], lr, gs), flat_chunks(p.shape[0],
                                                                          pl.threads))


def adam_update(p, g, m, v, lr_t, beta1, beta2, eps, gscale=None,
                seg: np.ndarray | None = None) -> None:
    """The book's Adam step on g * gscale (see kernels.adam_update), on all threads;
    with ``seg``, lazily: only the segments' weights and moments move, and g = 0
    there afterwards."""
    gs = p.dtype.type(1) if gscale is None else gscale
    pl = pool()
    if seg is not None:
        pl.map(lambda s: K.adam_segments(p, g, m, v, s, lr_t, beta1, beta2, eps, gs),
               [(s,) for s in _segment_parts(seg, pl.threads)])
        return
    pl.map(lambda i, j: K.adam_update(p[i:j], g[i:j], m[i:j], v[i:j], lr_t, beta1, beta2,
                                      eps, gs),
           flat_chunks(p.shape[0], pl.threads))


def split_ranges(seg: np.ndarray, parts: int, min_size: int = 65536) -> list[np.ndarray]:
    """The ranges ``seg`` (K, 2) cut into at most ``parts`` groups of near-equal total
    length, each at least ``min_size`` elements; a range is cut where a group ends."""
    lengths = seg[:, 1] - seg[:, 0]
    total = int(lengths.sum())
    parts = max(1, min(parts, total // max(1, min_size)))
    if parts == 1:
        return [seg]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    bounds = [total * k // parts for k in range(parts + 1)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        ks = np.flatnonzero((starts < hi) & (ends > lo))
        a = seg[ks, 0] + np.maximum(0, lo - starts[ks])
        b = seg[ks, 0] + np.minimum(lengths[ks], hi - starts[ks])
        out.append(np.ascontiguousarray(np.stack([a, b], axis=1), dtype=np.int64))
    return out


def dynamic_step(theta, theta0, g, inv, lr, decay, seg: np.ndarray) -> None:
    """Dynamic evaluation's step on the ranges ``seg`` of the flat buffers, on all
    threads: theta = theta0 + (1 - decay) (theta - theta0) - lr g inv, then g = 0
    there (kernels.dyn_step; elementwise, so any split gives the same numbers)."""
    pl = pool()
    groups = split_ranges(seg, pl.threads)
    if len(groups) == 1:
        K.dyn_step(theta, theta0, g, inv, lr, decay, seg)
        return
    pl.map(lambda s: K.dyn_step(theta, theta0, g, inv, lr, decay, s), [(s,) for s in groups])


def zero(g: np.ndarray, seg: np.ndarray | None = None) -> None:
    """g = 0 (or only its segments)."""
    if seg is None:
        g.fill(0)
        return
    pl = pool()
    pl.map(lambda s: K.zero_segments(g, s), [(s,) for s in _segment_parts(seg, pl.threads)])


# ----------------------------------------------------------------- clipping --
def global_norm(g: np.ndarray, seg: np.ndarray | None = None) -> float:
    """The gradient's global L2 norm (inf when the sum of squares overflows or is NaN)."""
    sq = sum_squares(g, seg)
    return math.sqrt(sq) if math.isfinite(sq) else math.inf


def clip_rate(norm: float, clip: float, dtype) -> np.floating:
    """The factor clipping applies to the gradient, as a scalar of ``dtype``: 1 when
    not clipping (``clip`` 0) or when the norm is within ``clip``."""
    if clip > 0:
        rate = clip / (norm + CLIP_EPS)
        if rate < 1.0:
            return dtype(rate)
    return dtype(1.0)


# ------------------------------------------------------------ the average --
class WeightAverage:
    """An exponential moving average of the weights, updated every EMA_EVERY steps
    with the decay ``decay ** EMA_EVERY`` (so ``decay`` is per step), and ``n``:
    how many updates it has had (for the debiasing)."""

    def __init__(self, decay: float, flat: np.ndarray):
        self.decay = decay
        self.avg = np.zeros_like(flat)
        self.n = 0

    def update(self, step: int, flat: np.ndarray) -> None:
        """After step number ``step`` (1-based): fold the weights in, every EMA_EVERY."""
        if step % EMA_EVERY == 0:
            K.ema_update(self.avg, flat, self.decay ** EMA_EVERY)
            self.n += 1

    @contextlib.contextmanager
    def applied(self, flat: np.ndarray):
        """Inside the block ``flat`` holds the debiased average (none yet: the weights as
        they are); the weights are put back after."""
        if self.n == 0:
            yield
            return
        saved = flat.copy()
        bias = 1.0 - (self.decay ** EMA_EVERY) ** self.n  # as Adam's bias correction
        np.divide(self.avg, flat.dtype.type(bias), out=flat)
        try:
            yield
        finally:
            flat[...] = saved


# ------------------------------------------------------------- optimisers --
class Optimizer:
    """Clipping, an update rule and (optionally) the weight average of one flat
    parameter buffer, with their state.

    ``step(p, g, seg, lr, step)`` clips and applies one update, zeroes the
    gradient and folds the weights into the average; it returns the gradient's
    norm before clipping, and a non-finite norm returns before anything moves
    (the caller stops).
    """

    name = ""

    def __init__(self, flat: np.ndarray, clip: float = 0.0, ema: float = 0.0):
        self.clip = clip
        self.dtype = flat.dtype.type
        self.average = WeightAverage(ema, flat) if ema > 0 else None

    def step(self, p: np.ndarray, g: np.ndarray, seg: np.ndarray | None, lr: float,
             step: int) -> float:
        """One update of the weights p: (P,) by the gradient g: (P,) (zero afterwards)
        at learning rate ``lr``; ``seg``: the ranges a row-sparse step touches (None:
        all); ``step``: the step's number (1-based, for the average)."""
        norm = global_norm(g, seg)
        if not math.isfinite(norm):
            return norm
        self.update(p, g, seg, lr, clip_rate(norm, self.clip, self.dtype))
        if seg is None:  # (the sparse updates zero their segments themselves)
            zero(g)
        if self.average is not None:
            self.average.update(step, p)
        return norm

    def update(self, p, g, seg, lr: float, gscale) -> None:
        raise NotImplementedError

    def averaged(self, flat: np.ndarray):
        """``with opt.averaged(flat):`` the weights are the weight average (if any)."""
        return self.average.applied(flat) if self.average is not None \
            else contextlib.nullcontext()

    def buffers(self) -> list[np.ndarray]:
        """The state arrays that must stay finite beside the weights."""
        return []

    # the checkpoint: the names training checkpoints have always used
    def state_arrays(self) -> dict[str, np.ndarray]:
        empty = np.zeros(0, dtype=self.dtype)
        a = self.average
        return {"adam_m": empty, "adam_v": empty, "ema": a.avg if a is not None else empty}

    def state_meta(self) -> dict:
        return {"adam_t": 0, "ema_n": self.average.n if self.average is not None else 0}

    def load_state(self, arrays: dict, meta: dict, path) -> None:
        """Take the state back from a checkpoint's arrays and meta (InputError naming
        ``path`` when something is missing or of the wrong shape)."""
        a = self.average
        if a is not None:
            ema = arrays.get("ema")
            if ema is None or ema.shape != a.avg.shape:
                raise InputError("checkpoint lacks the weight average", path=path)
            a.avg[...] = ema
            a.n = int(meta.get("ema_n", 0))


class SGD(Optimizer):
    """p -= lr * clipped g."""

    name = "sgd"

    def update(self, p, g, seg, lr, gscale) -> None:
        sgd_update(p, g, self.dtype(lr), gscale, seg)


class Adam(Optimizer):
    """The book's Adam (lazy for a class model: untouched rows keep their moments)."""

    name = "adam"

    def __init__(self, flat: np.ndarray, clip: float = 0.0, ema: float = 0.0):
        super().__init__(flat, clip, ema)
        self.m = np.zeros_like(flat)
        self.v = np.zeros_like(flat)
        self.t = 0

    def update(self, p, g, seg, lr, gscale) -> None:
        self.t += 1
        t = self.t
        lr_t = lr * math.sqrt(1.0 - ADAM_BETA2 ** t) / (1.0 - ADAM_BETA1 ** t)
        dt = self.dtype
        adam_update(p, g, self.m, self.v, dt(lr_t), dt(ADAM_BETA1), dt(ADAM_BETA2),
                    dt(ADAM_EPS), gscale, seg)

    def buffers(self) -> list[np.ndarray]:
        return [self.m, self.v]

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {**super().state_arrays(), "adam_m": self.m, "adam_v": self.v}

    def state_meta(self) -> dict:
        return {**super().state_meta(), "adam_t": self.t}

    def load_state(self, arrays: dict, meta: dict, path) -> None:
        if arrays["adam_m"].shape != self.m.shape or arrays["adam_v"].shape != self.v.shape:
            raise InputError("checkpoint lacks the Adam moments", path=path)
        self.m[...] = arrays["adam_m"]
        self.v[...] = arrays["adam_v"]
        self.t = int(meta["adam_t"])
        super().load_state(arrays, meta, path)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, flat: np.ndarray, clip: float = 0.0,
                   ema: float = 0.0) -> Optimizer:
    """The optimiser ``name`` ("sgd" | "adam") for the flat buffer ``flat``."""
    return OPTIMIZERS[str(name)](flat, clip=clip, ema=ema)


# ---------------------------------------------------------- lr schedules --
DEFAULT_DECAY = {"plateau": 0.25, "step": 0.5, "mikolov": 0.5}  # --lr-decay by --anneal
DEFAULT_DECAY_AFTER = 4  # --anneal step: epochs at the full lr (Zaremba's small model)


class Schedule:
    """The learning rate of a run, lowered at the end of an epoch.

    ``epoch_end(epoch, ppl, best)``: after epoch ``epoch`` (1-based) with the
    validation perplexity ``ppl`` (None without a validation set) and the best
    one before it (None: none yet), set the lr of the next epoch; True when
    training should stop. ``state()`` / ``load(state)``: what a checkpoint keeps.
    """

    def __init__(self, lr: float, factor: float):
        self.lr = float(lr)
        self.factor = factor

    def epoch_end(self, epoch: int, ppl: float | None, best: float | None) -> bool:
        return False

    def state(self) -> dict:
        return {"lr": self.lr}

    def load(self, state: dict) -> None:
        self.lr = float(state["lr"])


class Plateau(Schedule):
    """lr * factor after every epoch whose validation perplexity is no better than
    the best before it (the book's ch. 6 and PyTorch's word_language_model: lr / 4)."""

    def epoch_end(self, epoch, ppl, best) -> bool:
        if ppl is not None and best is not None and not ppl < best:
            self.lr *= self.factor
            log.info("valid ppl %.2f did not improve on %.2f: lr -> %.4g", ppl, best, self.lr)
        return False


class StepDecay(Schedule):
    """Zaremba et al. 2014 / TensorFlow's PTB tutorial: epochs 1..after run at the
    initial lr, epoch n > after at ``lr * factor ** (n - after)`` (the lr is
    multiplied by the factor at the end of every epoch from epoch ``after`` on);
    no validation needed. The lr is computed from the epoch, not accumulated."""

    def __init__(self, lr: float, factor: float, after: int):
        super().__init__(lr, factor)
        self.base = float(lr)
        self.after = after

    def epoch_end(self, epoch, ppl, best) -> bool:
        lr = self.base * self.factor ** max(0, epoch + 1 - self.after)
        if lr != self.lr:
            log.info("epoch %d done: lr -> %.4g", epoch, lr)
        self.lr = lr
        return False


def _mikolov_anneal(run, ppl: float, min_improvement: float, factor: float = 0.5) -> bool:
    """rnnlm's schedule after an epoch of valid ppl ``ppl`` (``run``: lr, last_ppl,
    halving): once the entropy gain is below the factor ``min_improvement``, the
    lr is multiplied by ``factor`` (halved) after every epoch; the next such
    epoch ends training (True)."""
    prev, run.last_ppl = run.last_ppl, ppl
    small = prev is not None and math.log(prev) < min_improvement * math.log(ppl)
    if small and run.halving:
        return True
    run.halving = run.halving or small
    if run.halving:
        run.lr *= factor
        log.info("valid ppl %.2f (previous %s): lr -> %.4g", ppl,
                 "none" if prev is None else f"{prev:.2f}", run.lr)
    return False


class Mikolov(Schedule):
    """rnnlm's: once an epoch lowers the validation entropy by less than the factor
    ``min_improvement``, lr * factor after every epoch; the next such epoch stops."""

    def __init__(self, lr: float, factor: float, min_improvement: float):
        super().__init__(lr, factor)
        self.min_improvement = min_improvement
        self.last_ppl: float | None = None  # the previous epoch's
        self.halving = False  # the lr goes down after every epoch now

    def epoch_end(self, epoch, ppl, best) -> bool:
        if ppl is None:
            return False
        return _mikolov_anneal(self, ppl, self.min_improvement, self.factor)

    def state(self) -> dict:
        return {**super().state(), "last_ppl": self.last_ppl, "halving": self.halving}

    def load(self, state: dict) -> None:
        super().load(state)
        self.last_ppl = state.get("last_ppl")
        self.halving = bool(state.get("halving", False))


def schedule_options(anneal: str, factor: float | None,
                     after: int | None) -> tuple[float, int | None]:
    """``--lr-decay`` and ``--decay-after`` checked against ``--anneal``, their
    defaults filled in (UsageError naming the option)."""
    anneal = str(anneal)
    if factor is None:
        factor = DEFAULT_DECAY[anneal]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
            or not 0.0 < factor <= 1.0:
        raise UsageError(f"--lr-decay must be in (0, 1]: the lr is multiplied by it (0.25 "
                         f"divides it by 4), got {factor!r}")
    if anneal != "step":
        if after is not None:
            raise UsageError("--decay-after goes with --anneal step")
        return float(factor), None
    if after is None:
        after = DEFAULT_DECAY_AFTER
    if isinstance(after, bool) or not isinstance(after, int) or after < 1:
        raise UsageError(f"--decay-after must be a positive integer, got {after!r}")
    return float(factor), after


def make_schedule(anneal: str, lr: float, factor: float | None = None,
                  after: int | None = None, min_improvement: float = 1.003) -> Schedule:
    """The schedule of ``--anneal`` (plateau | step | mikolov) from the initial lr;
    ``factor`` (--lr-decay) and ``after`` (--decay-after) default as DEFAULT_DECAY
    and DEFAULT_DECAY_AFTER say."""
    anneal = str(anneal)
    f = DEFAULT_DECAY[anneal] if factor is None else factor
    if anneal == "plateau":
        return Plateau(lr, f)
    if anneal == "step":
        return StepDecay(lr, f, DEFAULT_DECAY_AFTER if after is None else after)
    if anneal == "mikolov":
        return Mikolov(lr, f, min_improvement)
    raise ValueError(f"unknown schedule {anneal!r}")
