"""What ``--dynamic`` runs with (streamlm.jobs.dynamic): the gradients' RMS statistics,
measured on some text (``--dynamic-stats-on``, else ``--tune-on``), saved and read back
(``--dynamic-stats``), and ``--dynamic auto``'s search for the step and the decay on
``--tune-on``. ``prepare`` returns the Adapter a score job runs."""

from __future__ import annotations

import logging
import math

import numpy as np

from streamlm.errors import UsageError
from streamlm.jobs.dynamic import Adapter, DynamicScheduler, Settings
from streamlm.nn.params import Params
from streamlm.options import DYNAMIC_DEFAULTS

log = logging.getLogger("streamlm.jobs.dynamic")

# --dynamic auto walks the step from the default by factors of LR_FACTOR (at most
# LR_STEPS of them either way) while the perplexity on --tune-on falls; then the decay
LR_FACTOR, LR_STEPS = 2.0, 6
GRID_DECAY = (0.0, 1e-3, 1e-2, 3e-2)


def refine(f, x: float, factor: float = LR_FACTOR) -> float:
    """The best of x and its geometric midpoints to the walk's neighbours, x * factor **
    (+-1/2): two more evaluations of f. On PTB the 2x400 LSTM's best step on valid
    lay between the walk's points, and its test perplexity moved more than valid's
    (-9.2% at 1.6e-3 against -7.5% at 2.4e-3; docs/scoring.md)."""
    fx = f(x)
    for y in (x * math.sqrt(factor), x / math.sqrt(factor)):
        fy = f(y)
        if fy < fx:
            x, fx = y, fy
    return x


def walk(f, x0: float, factor: float = LR_FACTOR, steps: int = LR_STEPS) -> float:
    """The x among x0 * factor ** k, |k| <= steps, where f stops falling, walking from x0
    up, or down when the first step up does not fall (3-4 evaluations of f when x0 is
    near the best; the best of a grid, not a grid's edge, when it is far)."""
    best, fb = x0, f(x0)
    for d in (factor, 1.0 / factor):
        k, moved = 1, False
        while k <= steps:
            x = x0 * d ** k
            fx = f(x)
            if not fx < fb:
                break
            best, fb, moved = x, fx, True
            k += 1
        if moved:
            break
    return best


STATS_FORMAT = "streamlm-dynamic-stats"


class _Collector(Adapter):
    """Measures the RMS statistics through the DynamicScheduler: every segment's gradient
    squared into a sum, the weights never moving."""

    def __init__(self, params: Params, segment: int):
        super().__init__(params, Settings("sgd", 0.0, 0.0, segment))
        self.sq = np.zeros(self.p.flat.shape[0], dtype=np.float64)
        self.count = 0

    def segment(self, xs, ts, state, learn=True):
        nll, after = self.rnn.forward(xs, ts, state, tokens=True)
        self.g.flat[...] = 0
        self.rnn.backward(self.g)
        self.sq += np.square(self.g.flat, dtype=np.float64)
        self.count += 1
        return nll, after


def _run_on(adapter: Adapter, path: str, vocab, opts) -> tuple[float, int]:
    """(total ln p, tokens) of the file ``path`` scored with ``adapter``, as --reset says."""
    from streamlm.data.inputs import open_source
    from streamlm.jobs.records import Accumulator

    src = open_source(0, path, vocab, docs=opts.docs, errors=opts.errors, column=opts.column,
                      text_column=opts.text_column, text_field=opts.text_field)
    acc = Accumulator(1, vocab.unk_id, None, None)
    DynamicScheduler([src], adapter, eos=vocab.eos_id, reset=opts.reset.value, acc=acc).run()
    return acc.t[0].logprob, acc.t[0].scored


def load_stats(path: str, model, segment: int | None = None) -> np.ndarray:
    """The RMS statistics of ``path`` for ``model``; a warning when they were measured
    with segments of another length than ``segment`` (the gradient of a longer
    segment's mean NLL is smaller: the step would be scaled otherwise than tuned)."""
    from streamlm.data import store

    meta, arrays = store.load(path, STATS_FORMAT, 1, what="dynamic statistics file",
                              error=UsageError)
    if meta.get("model") != model.meta.get("sha256"):
        raise UsageError(f"{path}: dynamic statistics of another model (measure them "
                         "again with --tune-on)")
    rms = arrays["rms"]
    if rms.shape != model.params.flat.shape:
        raise UsageError(f"{path}: dynamic statistics of the wrong size")
    if segment is not None and meta.get("segment") not in (None, segment):
        log.warning("warning: %s: statistics measured with segments of %s tokens, used with "
                    "--dynamic-segment %d (measure them again with --dynamic-stats-on or "
                    "--tune-on)", path, meta["segment"], segment)
    return rms


def prepare(model, vocab, opts) -> tuple[Adapter, dict]:
    """The Adapter of ``opts`` (--dynamic rms|sgd|auto) for ``model``, and what the
    summary says of it: the RMS statistics loaded, or measured on --tune-on (and saved
    to --dynamic-stats); with auto, the step and decay of the lowest perplexity on
    --tune-on over a small grid."""
    import os

    method = "rms" if opts.dynamic == "auto" else opts.dynamic
    rms, info = None, {"method": method, "tuned_on": None, "stats": opts.dynamic_stats}
    stats_on = opts.dynamic_stats_on if opts.dynamic_stats_on is not None else opts.tune_on
    if method == "rms":
        if opts.dynamic_stats is not None and os.path.exists(opts.dynamic_stats):
            rms = load_stats(opts.dynamic_stats, model, opts.dynamic_segment)
            if opts.dynamic_stats_on is not None:
                log.warning("--dynamic-stats %s exists: its statistics are read, not measured "
                            "on %s (delete the file to measure them again)",
                            opts.dynamic_stats, opts.dynamic_stats_on)
        elif stats_on is None:
            raise UsageError("--dynamic rms needs --dynamic-stats FILE (measured before), or "
                             "--dynamic-stats-on FILE or --tune-on FILE to measure the "
                             "gradients' RMS on")
        else:
            col = _Collector(model.params, opts.dynamic_segment)
            _, n = _run_on(col, stats_on, vocab, opts)
            rms = np.sqrt(col.sq / max(1, col.count)).astype(model.params.dtype)
            log.info("dynamic evaluation: gradients' RMS measured on %s (%s tokens, %d "
                     "segments)", stats_on, f"{n:,}", col.count)
            info.update(stats_on=os.fspath(stats_on), stats_tokens=n)
            if opts.dynamic_stats is not None:
                from streamlm.data import store

                store.save(opts.dynamic_stats, STATS_FORMAT, 1,
                           {"model": model.meta.get("sha256"), "segment": opts.dynamic_segment,
                            "tokens": n, "measured_on": os.fspath(stats_on)}, {"rms": rms})
    lr, decay = DYNAMIC_DEFAULTS[method]
    if opts.dynamic == "auto":
        tried: dict[tuple[float, float], float] = {}

        def tune(glr: float, gd: float) -> float:
            if (glr, gd) not in tried:
                s = Settings(method, glr, gd, opts.dynamic_segment).check()
                lp, n = _run_on(Adapter(model.params, s, rms), opts.tune_on, vocab, opts)
                tried[glr, gd] = math.exp(-lp / n) if n else math.inf
                log.info("--dynamic auto: lr %g, decay %g: perplexity %.3f on %s", glr, gd,
                         tried[glr, gd], opts.tune_on)
            return tried[glr, gd]

        # one coordinate at a time (about 8 passes over --tune-on): the step at the
        # default decay, walked from the default by factors of 2 and refined by
        # factors of sqrt(2), then the decay at the best step
        lr = refine(lambda x: tune(x, decay), walk(lambda x: tune(x, decay), lr))
        decay = min(GRID_DECAY, key=lambda d: tune(lr, d))
        best = (tried[lr, decay], lr, decay)
        info.update(tuned_on=os.fspath(opts.tune_on), tune_perplexity=best[0])
        log.info("--dynamic auto: lr %g, decay %g (perplexity %.2f on %s)", lr, decay,
                 best[0], opts.tune_on)
    if opts.dynamic_lr is not None:
        lr = opts.dynamic_lr
    if opts.dynamic_decay is not None:
        decay = opts.dynamic_decay
    settings = Settings(method, float(lr), float(decay), opts.dynamic_segment).check()
    info.update(lr=settings.lr, decay=settings.decay, segment=settings.segment)
    return Adapter(model.params, settings, rms), info
