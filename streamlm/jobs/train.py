"""Training: truncated BPTT over token shards, validation, checkpoints, bitwise resume.

:class:`Trainer` runs the loop of the book (deep-learning-from-scratch-2, ch. 5
and 6); :func:`train` is its entry point:

* batches come from :class:`streamlm.data.batcher.Batcher` (row ``i`` starts at offset
  ``i * (L' // N)``, ``time_idx`` never resets), and the hidden state carries
  from one batch to the next (truncated BPTT);
* one step (:meth:`Trainer.step`): ``forward`` (mean NLL of the block),
  ``backward`` into the zeroed gradient buffer, then the optimiser's step
  (:mod:`streamlm.nn.optim`: global-norm clipping, SGD or Adam, the weight
  average of ``ema``);
* after each epoch the validation perplexity is computed exactly over the whole
  validation set (see :func:`evaluate`; of the weight average with ``ema``);
  a new best rewrites the model file (so ``out_model`` always holds the best
  model; without a validation set, the latest weights). The learning-rate
  schedule (``anneal``, :func:`streamlm.nn.optim.make_schedule`) then sets the
  next epoch's lr: ``plateau`` multiplies it by ``lr_decay`` (1/4, ch. 6) when
  the epoch did not improve on the best; ``step`` by ``lr_decay`` at the end of
  every epoch from epoch ``decay_after`` on (Zaremba et al. 2014);
  ``mikolov`` is rnnlm's (halving once the gain is below ``min_improvement``,
  stopping the next time).

Checkpoints (``<out stem>.ckpt.npz``, see :mod:`streamlm.jobs.checkpoint`) are
written atomically every ``checkpoint_every`` steps and at every epoch end:
resuming (``resume=True``) continues the exact same computation, so the final
weights are bitwise identical to an uninterrupted run (same seed, same machine
and BLAS library).

A NaN or Inf loss or gradient norm stops training (TrainingDiverged); the last
checkpoint (all finite) and the best model file are left as they were.
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

from streamlm.compute import blas, threads
from streamlm.compute import kernels as K
from streamlm.data.atomic import atomic_open, check_writable, writing
from streamlm.data.batcher import Batcher
from streamlm.data.manifest import check_id_files, warn_unchecked
from streamlm.data.shards import TokenDataset, open_dataset
from streamlm.data.vocab import Vocab
from streamlm.errors import TrainingDiverged, UsageError
from streamlm.jobs import plots
from streamlm.jobs.checkpoint import TrainState, restore_train, save_train
from streamlm.jobs.evaluation import EVAL_CHUNK, evaluate  # noqa: F401 (EVAL_CHUNK: the API's)
from streamlm.nn import optim
from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.model import RNNLM, warmup
from streamlm.nn.params import ModelConfig, Params, save_model
from streamlm.options import Anneal, Cell, Optimizer, Softmax

log = logging.getLogger("streamlm.jobs.train")


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
    dropout: float = 0.25  # on the embedding output and every layer's output (not recurrent)
    variational: bool = False  # Gal's: the same dropout mask at every step of a stream
    cell: str = "rnn"  # the recurrent cell: rnn (tanh), lstm, gru (streamlm.nn.cells)
    layers: int = 1  # stacked recurrent layers
    init_range: float = 0.0  # > 0: every weight uniform(-R, R) (PyTorch's example: 0.1)
    tie_weights: bool = False  # affine_W = embed_W.T (needs embed == hidden)
    softmax: str = "full"  # "full" | "class" (Mikolov's class-factored softmax)
    classes: int | None = None  # C for softmax="class"; default round(sqrt(V))
    old_classes: bool = False  # frequency binning by count/total (rnnlm -old-classes)
    log_interval: int = 100  # steps between log records
    checkpoint_every: int = 1000  # steps between checkpoints (0: only at epoch ends)
    ema: float = 0.0  # decay per step of the weight average (0: no averaging)
    anneal: str = "plateau"  # the lr schedule: plateau | step | mikolov (optim.make_schedule)
    min_improvement: float = 1.003  # --anneal mikolov: rnnlm's -min-improvement
    lr_decay: float | None = None  # the lr's factor at a decay (None: optim.DEFAULT_DECAY)
    decay_after: int | None = None  # --anneal step: epochs at the initial lr (None: 4)

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(msg)

        for name, flag in (("embed", "--embed"), ("hidden", "--hidden"), ("batch", "--batch"),
                           ("bptt", "--bptt"), ("epochs", "--epochs"), ("layers", "--layers"),
                           ("log_interval", "--log-interval")):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{flag} must be a positive integer, got {v!r}")
        need(self.checkpoint_every >= 0,
             f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        self.optimizer = Optimizer.parse(self.optimizer, "--optimizer").value
        self.cell = Cell.parse(self.cell, "--cell").value
        self.softmax = Softmax.parse(self.softmax, "--softmax").value
        self.anneal = Anneal.parse(self.anneal, "--anneal").value
        need(math.isfinite(self.min_improvement) and self.min_improvement >= 1.0,
             f"--min-improvement must be >= 1, got {self.min_improvement}")
        self.lr_decay, self.decay_after = optim.schedule_options(self.anneal, self.lr_decay,
                                                                 self.decay_after)
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


# ------------------------------------------------------------------ data --
def _json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


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


def _paths(p) -> list:
    return [] if p is None else [p] if isinstance(p, (str, os.PathLike)) else list(p)


# --------------------------------------------------------------- the loop --
class Trainer:
    """One training run (see the module doc): built from the options (checks every
    output, opens the data, makes the model, the optimiser and the schedule,
    resumes), then :meth:`train`. ``step`` trains on one batch and ``count`` logs
    it; ``end_epoch`` and ``stop_early`` validate, keep the best model and
    checkpoint; ``record`` writes a log record. The run's state is ``self.run``
    (a TrainState: what the checkpoint holds, the optimiser's and the
    schedule's state included)."""

    def __init__(self, cfg: TrainConfig, train_paths, out_model, valid_paths=None,
                 vocab_path=None, log_path=None, plot_path=None, resume: bool = False,
                 progress: Callable[[dict], None] | None = None, checkpoints: bool = True):
        cfg.validate()
        self.cfg = cfg
        self.train_paths, self.valid_paths = _paths(train_paths), _paths(valid_paths)
        if plot_path is not None:
            plots.check_available()
        out_model = Path(out_model)
        if out_model.is_dir():
            raise UsageError(f"{out_model}: --out is a directory, expected a model file path")
        self.out_model, self.ckpt = out_model, checkpoint_path(out_model)
        self.log_path, self.plot_path = log_path, plot_path
        self.progress, self.checkpoints = progress, checkpoints
        # every output can be written, before any work (not at the first save, hours later)
        check_writable(out_model, "--out")
        if checkpoints:
            check_writable(self.ckpt, "the checkpoint")
        for path, what in ((log_path, "--log"), (plot_path, "--plot")):
            if path is not None:
                check_writable(path, what)
        self.ds, self.vds, self.vocab, unchecked = _open_data(self.train_paths,
                                                              self.valid_paths, vocab_path)
        self.batcher = Batcher(self.ds, cfg.batch, cfg.bptt)
        warn_unchecked(*unchecked)  # once the data is known to be enough to train on
        V = len(self.vocab)
        classes = _word_classes(cfg, self.ds, V) if cfg.softmax == "class" else None
        self.model_cfg = ModelConfig(V=V, D=cfg.embed, H=cfg.hidden, tied=cfg.tie_weights,
                                     softmax=cfg.softmax, C=classes.C if classes else 0,
                                     cell=cfg.cell, layers=cfg.layers)

        warmup(np.float32)
        self.params = Params.init(self.model_cfg, seed=cfg.seed, dtype=np.float32,
                                  classes=classes, init_range=cfg.init_range)
        self.model = RNNLM(self.params, dropout=cfg.dropout, seed=_dropout_seed(cfg.seed),
                           variational=cfg.variational)
        self.opt = optim.make_optimizer(cfg.optimizer, self.params.flat, clip=cfg.clip,
                                        ema=cfg.ema)
        schedule = optim.make_schedule(cfg.anneal, cfg.lr, cfg.lr_decay, cfg.decay_after,
                                       cfg.min_improvement)
        self.run = TrainState(cfg, self.params, self.model.rng, self.opt, schedule)
        if resume:
            restore_train(self.ckpt, self.run, self.batcher, self.model_cfg, self.vocab)
            log.info("resumed from %s at step %d (epoch %.2f)", self.ckpt,
                     self.batcher.batches_done, self.batcher.epoch)
        elif self.ckpt.exists():
            log.warning("starting afresh: the existing checkpoint %s will be overwritten "
                        "(use --resume to continue it)", self.ckpt)

        self.ipe = self.batcher.iters_per_epoch
        self.total_steps = cfg.epochs * self.ipe
        self.tokens_per_step = cfg.batch * cfg.bptt
        self.train_meta = {**cfg.to_dict(),
                           "train_data": [os.fspath(p) for p in self.train_paths],
                           "valid_data": [os.fspath(p) for p in self.valid_paths],
                           "train_tokens": self.ds.num_tokens}
        self.n_resumed = len(self.run.history)  # records before this run's first
        self.last_eval: dict | None = None
        self.t_start = self.t_int = time.monotonic()
        self.int_tokens = 0

    # ------------------------------------------------------------ the run --
    def train(self) -> dict:
        """Train until the epochs are done, the schedule converges or time is up;
        the summary (see :func:`train`)."""
        cfg, run, batcher = self.cfg, self.run, self.batcher
        self.t_start = self.t_int = time.monotonic()
        deadline = None if cfg.max_minutes is None else self.t_start + 60.0 * cfg.max_minutes
        self.emit("start", total_steps=self.total_steps, step=batcher.batches_done,
                  iters_per_epoch=self.ipe, tokens_per_step=self.tokens_per_step,
                  train_tokens=self.ds.num_tokens)
        log.info("training on %s tokens (V=%d, %s softmax), %d steps/epoch of %d x %d, %s "
                 "lr=%g%s; %d threads, BLAS: %s", f"{self.ds.num_tokens:,}",
                 self.model_cfg.V, cfg.softmax, self.ipe, cfg.batch, cfg.bptt, cfg.optimizer,
                 run.lr, f", valid {self.vds.num_tokens:,} tokens" if self.vds is not None
                 else "", threads.get_num_threads(), blas.name())
        stopped_by = "converged" if run.converged else "epochs"
        # overflow shows up as a non-finite loss / norm below, raised as one clear
        # error: numpy's RuntimeWarnings would only add noise to stderr (the warnings
        # filter also covers the model's worker threads, which np.errstate does not)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, message="overflow")
            warnings.filterwarnings("ignore", category=RuntimeWarning, message="invalid value")
            while batcher.batches_done < self.total_steps and not run.converged:
                step, loss = self.step()
                now = self.count(step, loss)
                epoch_end = step % self.ipe == 0
                out_of_time = deadline is not None and now >= deadline
                if epoch_end:
                    self.end_epoch(step)
                elif out_of_time or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    self.save_checkpoint()
                if run.converged:
                    stopped_by = "converged"
                    log.info("--anneal mikolov: converged at epoch %.2f", step / self.ipe)
                    break
                if out_of_time and batcher.batches_done < self.total_steps:
                    stopped_by = "time"
                    log.info("--max-minutes %g reached at step %d (epoch %.2f)",
                             cfg.max_minutes, step, step / self.ipe)
                    if not epoch_end:
                        self.stop_early(step)
                    break
        if (self.vds is None and not self.checkpoints) or not self.out_model.exists():
            self.save_best()
        return self.summary(stopped_by)

    def step(self) -> tuple[int, float]:
        """Train on the next batch: forward, backward, the optimiser's step. Returns the
        step's number (1-based) and the batch's mean loss."""
        run = self.run
        xs, ts = self.batcher.next_batch()
        step = self.batcher.batches_done
        loss, run.h = self.model.forward(xs, ts, run.h, train=True)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} at step {step} (epoch {step / self.ipe:.2f}); training "
                f"stopped, {_kept(self.ckpt, run.have_ckpt)}; lower --lr or set --clip")
        grads = run.grads  # all zero here, and again after the optimiser's step
        self.model.backward(grads)
        seg = self.model.touched()  # a class model's row-sparse gradient: its ranges
        norm = self.opt.step(self.params.flat, grads.flat, seg, run.lr, step)
        if not math.isfinite(norm):
            raise TrainingDiverged(
                f"gradient norm is {norm} at step {step} (epoch {step / self.ipe:.2f}); "
                f"training stopped, {_kept(self.ckpt, run.have_ckpt)}; lower --lr or set "
                "--clip")
        return step, loss

    def count(self, step: int, loss: float) -> float:
        """Add the step's loss to the sums, emit it, and write the interval's log record
        when due; returns the time it did so."""
        run, ipe = self.run, self.ipe
        run.int_loss += loss
        run.int_steps += 1
        run.ep_loss += loss
        run.ep_steps += 1
        self.int_tokens += self.tokens_per_step
        now = time.monotonic()
        tps = self.int_tokens / max(now - self.t_int, 1e-9)
        self.emit("step", step=step, tokens=step * self.tokens_per_step, loss=loss,
                  train_ppl=math.exp(min(run.int_loss / run.int_steps, 700.0)), lr=run.lr,
                  tokens_per_s=tps, epoch=step / ipe)
        if step % self.cfg.log_interval == 0 or step % ipe == 0:
            if run.int_steps:
                rec = self.record("interval", step, math.exp(min(run.int_loss / run.int_steps,
                                                                 700.0)), None, tps)
                self.emit("log", record=rec)
            run.int_loss, run.int_steps = 0.0, 0
            self.t_int, self.int_tokens = now, 0
        return now

    def end_epoch(self, step: int) -> None:
        """The epoch's record; validate and keep the best model; the schedule sets the
        next epoch's lr (and may end training); checkpoint and plot."""
        run = self.run
        tr = math.exp(min(run.ep_loss / run.ep_steps, 700.0)) if run.ep_steps else None
        run.ep_loss, run.ep_steps = 0.0, 0
        vppl, best = self.validate() if self.vds is not None else (None, None)
        run.converged = run.schedule.epoch_end(step // self.ipe, vppl, best)
        if self.vds is None and self.checkpoints:
            self.save_best()  # the latest weights
        rec = self.record("epoch", step, tr, vppl, None)
        self.emit("epoch", record=rec)
        self.save_checkpoint()
        self.plot()

    def stop_early(self, step: int) -> None:
        """Out of time within an epoch: validate and keep the best model (no lr
        decay), a "stop" record, a checkpoint."""
        vppl = self.validate()[0] if self.vds is not None else None
        if self.vds is None:
            self.save_best()
        rec = self.record("stop", step, None, vppl, None)
        self.emit("epoch", record=rec)
        self.save_checkpoint()
        self.plot()

    def validate(self) -> tuple[float, float | None]:
        """The exact validation perplexity (of the weight average, with --ema) and the
        best one before it; a new best is saved as the model file."""
        run = self.run
        with self.opt.averaged(self.params.flat):
            self.last_eval = evaluate(self.params, self.vds)
        ppl, best = self.last_eval["ppl"], run.best_ppl
        if best is None or ppl < best:
            run.best_ppl = ppl
            self.save_best()
            log.info("valid ppl %.2f (best): saved %s", ppl, self.out_model)
        return ppl, best

    # ------------------------------------------------------------ outputs --
    def check_finite(self) -> None:
        """TrainingDiverged unless the weights (and the optimiser's state) are finite."""
        if not all(K.all_finite(b) for b in [self.params.flat] + self.opt.buffers()):
            step = self.batcher.batches_done
            raise TrainingDiverged(
                f"weights hold NaN/Inf after step {step} (epoch "
                f"{step / self.ipe:.2f}); training stopped, "
                f"{_kept(self.ckpt, self.run.have_ckpt)}; lower --lr or set --clip")

    def save_checkpoint(self) -> None:
        if self.checkpoints:
            self.check_finite()
            with writing(self.ckpt, "the checkpoint"):
                save_train(self.ckpt, self.run, self.batcher, self.model_cfg, self.vocab,
                           self.elapsed())

    def save_best(self) -> None:
        """Write the model file: the weights (their average, with --ema) as they are."""
        self.check_finite()
        with self.opt.averaged(self.params.flat), writing(self.out_model, "the model"):
            save_model(self.out_model, self.params, self.vocab.words,
                       train_config=self.train_meta,
                       extra_meta={"valid_ppl": _json_float(self.run.best_ppl),
                                   "step": self.batcher.batches_done},
                       tokenizer=getattr(self.vocab, "proto", None))  # a subword model's

    def record(self, kind: str, step: int, train_ppl, valid_ppl, tps) -> dict:
        """Append a log record (with the lr in force) to the history and the --log file."""
        run = self.run
        rec = {"kind": kind, "step": step, "epoch": round(step / self.ipe, 4),
               "tokens": step * self.tokens_per_step, "train_ppl": _json_float(train_ppl),
               "valid_ppl": _json_float(valid_ppl), "lr": run.lr,
               "tokens_per_s": _json_float(tps), "elapsed_s": round(self.elapsed(), 3)}
        run.history.append(rec)
        if self.log_path is not None:
            with writing(self.log_path, "the training log"):
                _write_log(self.log_path, run.history,
                           whole=len(run.history) == self.n_resumed + 1)
        return rec

    def plot(self) -> None:
        if self.plot_path is not None:
            with writing(self.plot_path, "the plot"):
                plots.plot_history(self.run.history, self.plot_path)

    def elapsed(self) -> float:
        """Wall seconds of the whole run, earlier invocations included."""
        return self.run.elapsed_before + (time.monotonic() - self.t_start)

    def emit(self, event: str, **kw) -> None:
        if self.progress is not None:
            self.progress({"event": event, **kw})

    def summary(self, stopped_by: str) -> dict:
        run, step, ipe = self.run, self.batcher.batches_done, self.ipe
        summary = {
            "model": os.fspath(self.out_model),
            "checkpoint": os.fspath(self.ckpt),
            "stopped_by": stopped_by,
            "steps": step,
            "epochs": round(step / ipe, 4),
            "tokens": step * self.tokens_per_step,
            "iters_per_epoch": ipe,
            "best_valid_ppl": _json_float(run.best_ppl),
            "last_valid_ppl": _json_float(self.last_eval["ppl"]) if self.last_eval else None,
            "lr": run.lr,
            "elapsed_s": round(self.elapsed(), 3),
            "wall_s_this_run": round(time.monotonic() - self.t_start, 3),
            "train_config": self.cfg.to_dict(),
            "history": run.history,
        }
        self.emit("done", summary=summary)
        log.info("done: %d steps (%.2f epochs)%s", step, step / ipe,
                 f", best valid ppl {run.best_ppl:.2f}" if run.best_ppl is not None else "")
        return summary


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
    return Trainer(config, train_paths, out_model, valid_paths=valid_paths,
                   vocab_path=vocab_path, log_path=log_path, plot_path=plot_path,
                   resume=resume, progress=progress, checkpoints=checkpoints).train()


def resume_advice(out_model: str | os.PathLike) -> str:
    """How to continue an interrupted training run (the line the CLI prints on SIGINT /
    SIGTERM)."""
    ck = checkpoint_path(out_model)
    if ck.exists():
        return f"the same command with --resume continues from {ck}"
    return "no checkpoint was written yet: the same command starts again"
