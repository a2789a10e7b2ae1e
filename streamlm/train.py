"""Training: truncated BPTT over token shards, validation, checkpoints, bitwise resume.

The loop follows the book (deep-learning-from-scratch-2, ch. 5 and 6):

* batches come from :class:`streamlm.batcher.Batcher` (row ``i`` starts at offset
  ``i * (L' // N)``, ``time_idx`` never resets), and the hidden state carries
  from one batch to the next (truncated BPTT);
* one step: ``forward`` (mean NLL of the block), zero the gradient buffer,
  ``backward``, global-norm clipping (``rate = clip / (norm + 1e-6)`` applied
  when below 1, like the book's ``clip_grads``), then SGD or Adam (the book's
  Adam: bias correction folded into ``lr_t``);
* after each epoch the validation perplexity is computed exactly over the whole
  validation set (see :func:`evaluate`); when it does not improve on the best
  so far the learning rate is divided by 4 (ch. 6), otherwise the model file is
  rewritten (so ``out_model`` always holds the best model). Without a
  validation set the model file holds the latest weights. ``anneal="mikolov"``
  is rnnlm's schedule instead: once an epoch lowers the validation entropy by
  less than the factor ``min_improvement``, the learning rate is halved after
  every epoch, and training stops the next time the gain is that small (rnnlm
  also goes back to the previous weights when an epoch made things worse; here
  the best model file is kept and training goes on).
* with ``ema`` (Polyak averaging), an exponential moving average of the weights
  is kept beside them (updated every EMA_EVERY steps, debiased as Adam's moments
  are); validation, the lr decay and the model file use the average, training
  goes on with the raw weights.

Checkpoints (``<out stem>.ckpt.npz``, see :mod:`streamlm.checkpoint`) are
written atomically every ``checkpoint_every`` steps and at every epoch end:
resuming (``resume=True``) continues the exact same computation, so the final
weights are bitwise identical to an uninterrupted run (same seed, same machine
and BLAS library).

A NaN or Inf loss or gradient norm stops training with
:class:`~streamlm.errors.TrainingDiverged`; the last checkpoint (all finite)
and the best model file are left as they were.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamlm import blas, plots, threads
from streamlm import kernels as K
from streamlm.atomic import atomic_open, check_writable, writing
from streamlm.batcher import Batcher
from streamlm.checkpoint import TrainState, restore_train, save_train
from streamlm.classes import WordClasses, frequency_classes
from streamlm.errors import TrainingDiverged, UsageError
from streamlm.evaluation import EVAL_CHUNK, evaluate  # noqa: F401 (EVAL_CHUNK: the API's)
from streamlm.manifest import check_id_files, warn_unchecked
from streamlm.model import RNNLM, warmup
from streamlm.options import Anneal, Optimizer, Softmax
from streamlm.params import ModelConfig, Params, save_model
from streamlm.shards import TokenDataset, open_dataset
from streamlm.vocab import Vocab

log = logging.getLogger("streamlm.train")

ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-7  # as the book's Adam
CLIP_EPS = 1e-6  # as the book's clip_grads
LR_DECAY = 4.0  # divide the lr by this when the valid ppl does not improve (ch. 6)
EMA_EVERY = 4  # steps between updates of the weight average (decay ** EMA_EVERY each)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the model file's meta).

    The defaults are the settings of the measured 30-minute PTB run (Adam 2e-3,
    clip 1, dropout 0.25; that run also tied the weights). SGD at lr 20 with
    clip 0.25 (PyTorch's word-LM example) blows up the tanh RNN (train ppl in
    the millions after 100 steps).
    """

    embed: int = 256  # D
    hidden: int = 256  # H
    batch: int = 32  # N, parallel streams
    bptt: int = 35  # T, steps per truncated-BPTT block
    epochs: int = 10
    max_minutes: float | None = None  # wall-clock budget of this invocation
    optimizer: str = "adam"  # "sgd" | "adam"
    lr: float = 0.002
    clip: float = 1.0  # global-norm clipping threshold; 0 disables
    seed: int = 0
    dropout: float = 0.25  # on the embedding output and the RNN output (not recurrent)
    tie_weights: bool = False  # affine_W = embed_W.T (needs embed == hidden)
    softmax: str = "full"  # "full" | "class" (Mikolov's class-factored softmax)
    classes: int | None = None  # C for softmax="class"; default round(sqrt(V))
    old_classes: bool = False  # frequency binning by count/total (rnnlm -old-classes)
    log_interval: int = 100  # steps between log records
    checkpoint_every: int = 1000  # steps between checkpoints (0: only at epoch ends)
    ema: float = 0.0  # decay per step of the weight average (0: no averaging)
    anneal: str = "plateau"  # "plateau" (lr / 4 when no better) | "mikolov" (rnnlm's)
    min_improvement: float = 1.003  # --anneal mikolov: rnnlm's -min-improvement

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(msg)

        for name, flag in (("embed", "--embed"), ("hidden", "--hidden"), ("batch", "--batch"),
                           ("bptt", "--bptt"), ("epochs", "--epochs"),
                           ("log_interval", "--log-interval")):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{flag} must be a positive integer, got {v!r}")
        need(self.checkpoint_every >= 0,
             f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        self.optimizer = Optimizer.parse(self.optimizer, "--optimizer").value
        self.softmax = Softmax.parse(self.softmax, "--softmax").value
        self.anneal = Anneal.parse(self.anneal, "--anneal").value
        need(math.isfinite(self.min_improvement) and self.min_improvement >= 1.0,
             f"--min-improvement must be >= 1, got {self.min_improvement}")
        need(self.classes is None or (isinstance(self.classes, int) and self.classes >= 1),
             f"--classes must be a positive integer, got {self.classes!r}")
        need(self.classes is None or self.softmax == "class",
             "--classes goes with --softmax class")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(math.isfinite(self.clip) and self.clip >= 0,
             f"--clip must be >= 0 (0 disables), got {self.clip}")
        need(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        need(0.0 <= self.ema < 1.0, f"--ema must be in [0, 1), got {self.ema}")
        need(self.max_minutes is None or self.max_minutes > 0,
             f"--max-minutes must be positive, got {self.max_minutes}")
        need(not self.tie_weights or self.embed == self.hidden,
             f"--tie-weights needs --embed == --hidden, got {self.embed} and {self.hidden}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def checkpoint_path(out_model: str | os.PathLike) -> Path:
    """``model.npz`` -> ``model.ckpt.npz`` (next to the model file)."""
    p = Path(out_model)
    stem = p.name[:-4] if p.name.endswith(".npz") else p.name
    return p.with_name(stem + ".ckpt.npz")


def _dropout_seed(seed: int) -> int:
    # a stream independent of the one Params.init draws from with ``seed``
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


# --------------------------------------------------------------- the loop --
class averaged:
    """``with averaged(run):`` the weights are the debiased weight average inside the
    block (no averaging, or none yet: the weights as they are), restored after."""

    def __init__(self, run: TrainState):
        self.run = run
        self.saved: np.ndarray | None = None

    def __enter__(self) -> None:
        run = self.run
        if run.ema is None or run.ema_n == 0:
            return
        flat = run.params.flat
        self.saved = flat.copy()
        bias = 1.0 - (run.cfg.ema ** EMA_EVERY) ** run.ema_n  # as Adam's bias correction
        np.divide(run.ema, flat.dtype.type(bias), out=flat)

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            self.run.params.flat[...] = self.saved
            self.saved = None


def _json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _check_finite(run: TrainState, batcher: Batcher, ckpt: Path) -> None:
    """TrainingDiverged unless the weights (and Adam moments) are all finite."""
    bufs = [run.params.flat] + ([run.m, run.v] if run.m is not None else [])
    if not all(K.all_finite(b) for b in bufs):
        step = batcher.batches_done
        raise TrainingDiverged(
            f"weights hold NaN/Inf after step {step} (epoch "
            f"{step / batcher.iters_per_epoch:.2f}); training stopped, "
            f"{_kept(ckpt, run.have_ckpt)}; lower --lr or set --clip")


def _mikolov_anneal(run: TrainState, ppl: float, min_improvement: float) -> bool:
    """rnnlm's schedule after an epoch of valid ppl ``ppl``: once the entropy gain is
    below the factor ``min_improvement``, halve the lr after every epoch; the next
    such epoch ends training (True)."""
    prev, run.last_ppl = run.last_ppl, ppl
    small = prev is not None and math.log(prev) < min_improvement * math.log(ppl)
    if small and run.halving:
        return True
    run.halving = run.halving or small
    if run.halving:
        run.lr /= 2.0
        log.info("valid ppl %.2f (previous %s): lr halved to %.4g", ppl,
                 "none" if prev is None else f"{prev:.2f}", run.lr)
    return False


def _kept(ckpt: Path, have: bool) -> str:
    return f"the last good checkpoint {ckpt} is kept" if have else "no checkpoint was written"


def _write_log(path: str | os.PathLike, history: list[dict], whole: bool) -> None:
    # A run's first record rewrites the file atomically (after a resume: exactly the
    # resumed history); later ones append a line (a rewrite per record grew with it)
    with atomic_open(path, "w", encoding="utf-8") if whole else open(path, "a") as f:
        f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in
                     (history if whole else history[-1:]))


def word_counts(dataset: TokenDataset, V: int) -> np.ndarray:
    """How often each word id occurs in the dataset: (V,) int64, one pass over it."""
    counts = np.zeros(V, dtype=np.int64)
    for c in dataset.iter_chunks(1 << 20):
        counts += np.bincount(c.ids, minlength=V)
    return counts


def _word_classes(cfg: TrainConfig, ds: TokenDataset, V: int) -> WordClasses:
    C = cfg.classes if cfg.classes is not None else max(1, round(math.sqrt(V)))
    wc = frequency_classes(word_counts(ds, V), C, old=cfg.old_classes)
    classes = WordClasses(wc)
    log.info("class softmax: %d classes by %s frequency binning (largest %d words)",
             classes.C, "count" if cfg.old_classes else "sqrt", int(classes.sizes.max()))
    return classes


def _open_data(train_paths, valid_paths, vocab_path):
    vocab = Vocab.load(vocab_path) if vocab_path is not None else None
    ds = open_dataset(train_paths, vocab=vocab)
    if ds.vocab is None:
        raise UsageError("the training files carry no vocabulary: give --vocab FILE "
                         "(or a directory made by `streamlm prepare`)")
    vds = None
    if valid_paths:
        vds = open_dataset(valid_paths, vocab=ds.vocab)
    # raw shard files: their ids must index that vocabulary (a prepared directory's
    # was checked by open_dataset); (files with none to check, owner) for one warning
    owner = f"--vocab {vocab_path}" if vocab_path is not None else \
        f"the training data {os.fspath(train_paths[0])}"
    unchecked = [u for d in (ds, vds) if d is not None and d.manifest is None
                 for u in check_id_files([f.path for f in d.files], ds.vocab, owner)]
    return ds, vds, ds.vocab, (unchecked, owner)


def train(config: TrainConfig, train_paths: Sequence[str | os.PathLike] | str,
          out_model: str | os.PathLike, valid_paths: Sequence[str | os.PathLike] | None = None,
          vocab_path: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None,
          plot_path: str | os.PathLike | None = None, resume: bool = False,
          progress: Callable[[dict], None] | None = None, checkpoints: bool = True) -> dict:
    """Train an RNN LM on ``train_paths``; write the model file ``out_model``.

    ``progress`` (optional) is called with small dicts: ``{"event": "start",
    "total_steps", "step", ...}``, ``{"event": "step", "step", "tokens",
    "train_ppl", "tokens_per_s", "lr"}`` after every step, and
    ``{"event": "log" | "epoch", "record": {...}}`` for each log record.
    Returns a summary dict (JSON-able). Raises UsageError / InputError for bad
    options or data, TrainingDiverged on a NaN/Inf loss.

    ``checkpoints=False`` (library only, for quick experiments and tests) writes
    no checkpoint, and without a validation set writes the model file only at
    the end: no fsync per epoch.
    """
    cfg = config
    cfg.validate()
    if isinstance(train_paths, (str, os.PathLike)):
        train_paths = [train_paths]
    if isinstance(valid_paths, (str, os.PathLike)):
        valid_paths = [valid_paths]
    if plot_path is not None:
        plots.check_available()
    out_model = Path(out_model)
    if out_model.is_dir():
        raise UsageError(f"{out_model}: --out is a directory, expected a model file path")
    ckpt = checkpoint_path(out_model)
    # every output can be written, before any work (not at the first save, hours later)
    check_writable(out_model, "--out")
    if checkpoints:
        check_writable(ckpt, "the checkpoint")
    for path, what in ((log_path, "--log"), (plot_path, "--plot")):
        if path is not None:
            check_writable(path, what)
    ds, vds, vocab, unchecked = _open_data(train_paths, valid_paths, vocab_path)
    batcher = Batcher(ds, cfg.batch, cfg.bptt)
    warn_unchecked(*unchecked)  # once the data is known to be enough to train on
    V = len(vocab)
    classes = _word_classes(cfg, ds, V) if cfg.softmax == "class" else None
    model_cfg = ModelConfig(V=V, D=cfg.embed, H=cfg.hidden, tied=cfg.tie_weights,
                            softmax=cfg.softmax, C=classes.C if classes else 0)

    warmup(np.float32)
    params = Params.init(model_cfg, seed=cfg.seed, dtype=np.float32, classes=classes)
    model = RNNLM(params, dropout=cfg.dropout, seed=_dropout_seed(cfg.seed))
    run = TrainState(cfg, params, model.rng)
    if resume:
        restore_train(ckpt, run, batcher, model_cfg, vocab)
        log.info("resumed from %s at step %d (epoch %.2f)", ckpt, batcher.batches_done,
                 batcher.epoch)
    elif ckpt.exists():
        log.warning("starting afresh: the existing checkpoint %s will be overwritten "
                    "(use --resume to continue it)", ckpt)

    ipe = batcher.iters_per_epoch
    total_steps = cfg.epochs * ipe
    tokens_per_step = cfg.batch * cfg.bptt
    dt = params.dtype.type
    train_meta = {**cfg.to_dict(), "train_data": [os.fspath(p) for p in train_paths],
                  "valid_data": [os.fspath(p) for p in valid_paths or []],
                  "train_tokens": ds.num_tokens}

    t_start = time.monotonic()
    deadline = None if cfg.max_minutes is None else t_start + 60.0 * cfg.max_minutes
    t_int = t_start
    int_tokens = 0
    last_eval: dict | None = None

    def elapsed() -> float:
        return run.elapsed_before + (time.monotonic() - t_start)

    def emit(event: str, **kw) -> None:
        if progress is not None:
            progress({"event": event, **kw})

    n_resumed = len(run.history)  # records before this run's first

    def record(kind: str, step: int, train_ppl, valid_ppl, tps) -> dict:
        rec = {"kind": kind, "step": step, "epoch": round(step / ipe, 4),
               "tokens": step * tokens_per_step, "train_ppl": _json_float(train_ppl),
               "valid_ppl": _json_float(valid_ppl), "lr": run.lr,
               "tokens_per_s": _json_float(tps), "elapsed_s": round(elapsed(), 3)}
        run.history.append(rec)
        if log_path is not None:
            with writing(log_path, "the training log"):
                _write_log(log_path, run.history, whole=len(run.history) == n_resumed + 1)
        return rec

    def save_checkpoint() -> None:
        if checkpoints:
            _check_finite(run, batcher, ckpt)
            with writing(ckpt, "the checkpoint"):
                save_train(ckpt, run, batcher, model_cfg, vocab, elapsed())

    def save_best() -> None:
        _check_finite(run, batcher, ckpt)
        with averaged(run), writing(out_model, "the model"):
            save_model(out_model, params, vocab.words, train_config=train_meta,
                       extra_meta={"valid_ppl": _json_float(run.best_ppl),
                                   "step": batcher.batches_done},
                       tokenizer=getattr(vocab, "proto", None))  # a subword model's tokeniser

    def validate_and_keep(decay: bool) -> tuple[float, bool]:
        """Validate, keep the best model, anneal; also say whether to stop."""
        nonlocal last_eval
        with averaged(run):
            last_eval = evaluate(params, vds)
        ppl = last_eval["ppl"]
        if run.best_ppl is None or ppl < run.best_ppl:
            run.best_ppl = ppl
            save_best()
            log.info("valid ppl %.2f (best): saved %s", ppl, out_model)
        elif decay and cfg.anneal == "plateau":
            run.lr /= LR_DECAY
            log.info("valid ppl %.2f did not improve on %.2f: lr -> %.4g", ppl,
                     run.best_ppl, run.lr)
        if decay and cfg.anneal == "mikolov":
            return ppl, _mikolov_anneal(run, ppl, cfg.min_improvement)
        return ppl, False

    emit("start", total_steps=total_steps, step=batcher.batches_done,
         iters_per_epoch=ipe, tokens_per_step=tokens_per_step, train_tokens=ds.num_tokens)
    log.info("training on %s tokens (V=%d, %s softmax), %d steps/epoch of %d x %d, %s lr=%g%s; "
             "%d threads, BLAS: %s", f"{ds.num_tokens:,}", V, cfg.softmax, ipe, cfg.batch,
             cfg.bptt, cfg.optimizer, run.lr,
             f", valid {vds.num_tokens:,} tokens" if vds is not None else "",
             threads.get_num_threads(), blas.name())
    stopped_by = "converged" if run.converged else "epochs"
    # overflow shows up as a non-finite loss / norm below, raised as one clear
    # error: numpy's RuntimeWarnings would only add noise to stderr (the warnings
    # filter also covers the model's worker threads, which np.errstate does not)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, message="overflow")
        warnings.filterwarnings("ignore", category=RuntimeWarning, message="invalid value")
        while batcher.batches_done < total_steps and not run.converged:
            xs, ts = batcher.next_batch()
            step = batcher.batches_done
            loss, run.h = model.forward(xs, ts, run.h, train=True)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss} at step {step} (epoch {step / ipe:.2f}); training "
                    f"stopped, {_kept(ckpt, run.have_ckpt)}; lower --lr or set --clip")
            grads = run.grads  # all zero here
            model.backward(grads)
            seg = model.touched()  # a class model's row-sparse gradient: its ranges
            sq = threads.sum_squares(grads.flat, seg)
            norm = math.sqrt(sq) if math.isfinite(sq) else math.inf
            if not math.isfinite(norm):
                raise TrainingDiverged(
                    f"gradient norm is {norm} at step {step} (epoch {step / ipe:.2f}); "
                    f"training stopped, {_kept(ckpt, run.have_ckpt)}; lower --lr or set --clip")
            gscale = dt(1.0)  # the clipping rate, applied inside the update
            if cfg.clip > 0:
                rate = cfg.clip / (norm + CLIP_EPS)
                if rate < 1.0:
                    gscale = dt(rate)
            if cfg.optimizer == "sgd":
                threads.sgd_update(params.flat, grads.flat, dt(run.lr), gscale, seg)
            else:  # lazy for a class model: untouched rows keep their moments
                run.adam_t += 1
                t = run.adam_t
                lr_t = run.lr * math.sqrt(1.0 - ADAM_BETA2 ** t) / (1.0 - ADAM_BETA1 ** t)
                threads.adam_update(params.flat, grads.flat, run.m, run.v, dt(lr_t),
                                    dt(ADAM_BETA1), dt(ADAM_BETA2), dt(ADAM_EPS), gscale, seg)
            if seg is None:  # (the sparse updates zero their segments themselves)
                threads.zero(grads.flat)
            if run.ema is not None and step % EMA_EVERY == 0:
                K.ema_update(run.ema, params.flat, cfg.ema ** EMA_EVERY)
                run.ema_n += 1
            run.int_loss += loss
            run.int_steps += 1
            run.ep_loss += loss
            run.ep_steps += 1
            int_tokens += tokens_per_step
            now = time.monotonic()
            tps = int_tokens / max(now - t_int, 1e-9)
            emit("step", step=step, tokens=step * tokens_per_step, loss=loss,
                 train_ppl=math.exp(min(run.int_loss / run.int_steps, 700.0)), lr=run.lr,
                 tokens_per_s=tps, epoch=step / ipe)

            epoch_end = step % ipe == 0
            if step % cfg.log_interval == 0 or epoch_end:
                if run.int_steps:
                    rec = record("interval", step, math.exp(min(run.int_loss / run.int_steps,
                                                                700.0)), None, tps)
                    emit("log", record=rec)
                run.int_loss, run.int_steps = 0.0, 0
                t_int, int_tokens = now, 0
            out_of_time = deadline is not None and now >= deadline
            if epoch_end:
                tr = math.exp(min(run.ep_loss / run.ep_steps, 700.0)) if run.ep_steps else None
                run.ep_loss, run.ep_steps = 0.0, 0
                vppl, run.converged = validate_and_keep(decay=True) if vds is not None \
                    else (None, False)
                if vds is None and checkpoints:
                    save_best()  # the latest weights
                rec = record("epoch", step, tr, vppl, None)
                emit("epoch", record=rec)
                save_checkpoint()
                if plot_path is not None:
                    with writing(plot_path, "the plot"):
                        plots.plot_history(run.history, plot_path)
            elif out_of_time or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                save_checkpoint()
            if run.converged:
                stopped_by = "converged"
                log.info("--anneal mikolov: converged at epoch %.2f", step / ipe)
                break
            if out_of_time and batcher.batches_done < total_steps:
                stopped_by = "time"
                log.info("--max-minutes %g reached at step %d (epoch %.2f)", cfg.max_minutes,
                         step, step / ipe)
                if not epoch_end:
                    vppl = validate_and_keep(decay=False)[0] if vds is not None else None
                    if vds is None:
                        save_best()
                    rec = record("stop", step, None, vppl, None)
                    emit("epoch", record=rec)
                    save_checkpoint()
                    if plot_path is not None:
                        with writing(plot_path, "the plot"):
                            plots.plot_history(run.history, plot_path)
                break

    if (vds is None and not checkpoints) or not out_model.exists():
        save_best()
    step = batcher.batches_done
    wall = time.monotonic() - t_start
    summary = {
        "model": os.fspath(out_model),
        "checkpoint": os.fspath(ckpt),
        "stopped_by": stopped_by,
        "steps": step,
        "epochs": round(step / ipe, 4),
        "tokens": step * tokens_per_step,
        "iters_per_epoch": ipe,
        "best_valid_ppl": _json_float(run.best_ppl),
        "last_valid_ppl": _json_float(last_eval["ppl"]) if last_eval else None,
        "lr": run.lr,
        "elapsed_s": round(elapsed(), 3),
        "wall_s_this_run": round(wall, 3),
        "train_config": cfg.to_dict(),
        "history": run.history,
    }
    emit("done", summary=summary)
    log.info("done: %d steps (%.2f epochs)%s", step, step / ipe,
             f", best valid ppl {run.best_ppl:.2f}" if run.best_ppl is not None else "")
    return summary


def resume_advice(out_model: str | os.PathLike) -> str:
    """How to continue an interrupted training run (the line the CLI prints on SIGINT /
    SIGTERM)."""
    ck = checkpoint_path(out_model)
    if ck.exists():
        return f"the same command with --resume continues from {ck}"
    return "no checkpoint was written yet: the same command starts again"
