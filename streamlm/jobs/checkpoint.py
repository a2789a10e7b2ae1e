"""What a killed job needs to resume: the training and the scoring checkpoints.

Both are :mod:`streamlm.data.store` archives (arrays plus one JSON object, never
pickled), written atomically, so a reader sees the previous checkpoint or the
new one, never a torn file.

* Training (``<model stem>.ckpt.npz``): the weights, the optimiser moments and
  step, the carried hidden state, the batcher position, the dropout
  generator's state, the learning rate, the best validation perplexity and
  the log history. Restoring continues the exact same computation.
* Scoring (``--checkpoint FILE``): per input the position, running sums,
  spooled record count and (documents) rows counted, and the state of every
  open stream or long segment, with a fingerprint of the run (model, inputs,
  options) that a resume must match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from streamlm.data import store
from streamlm.errors import InputError, UsageError
from streamlm.jobs.records import Accumulator, Spool, Totals
from streamlm.nn.optim import DEFAULT_DECAY
from streamlm.nn.params import state_size as params_state_size
from streamlm.version import __version__

log = logging.getLogger(__name__)

TRAIN_FORMAT = "streamlm-checkpoint"
TRAIN_VERSION = 2  # 2: the JSON object under "meta" (was "state")
SCORE_FORMAT = "streamlm-score-checkpoint"
SCORE_VERSION = 4  # 2: "format_version" (was "version"); 3: OOVs' logprob, rows, skipped;
# 4: words and bytes (sums and spooled records); later 4s: a skipped row's "why" too

# TrainConfig fields that shape the trajectory: a resume needs the same values
TRAJECTORY = ("embed", "hidden", "batch", "bptt", "optimizer", "lr", "clip", "seed",
              "dropout", "tie_weights", "softmax", "classes", "old_classes", "ema",
              "anneal", "min_improvement", "cell", "layers", "variational", "lr_decay",
              "decay_after", "init_range")
DEFAULTS = {"ema": 0.0, "anneal": "plateau", "min_improvement": 1.003, "cell": "rnn",
            "layers": 1, "variational": False, "decay_after": None,
            "init_range": 0.0}  # older checkpoints


# ================================================================ training ==
class TrainState:
    """The mutable state of one training run: what a training checkpoint holds."""

    def __init__(self, cfg, params, rng: np.random.Generator, opt, schedule):
        self.cfg = cfg
        self.params = params
        self.rng = rng  # the dropout generator (the model's)
        self.grads = params.zeros_like()
        self.opt = opt  # streamlm.nn.optim.Optimizer: its state (Adam's, the weight average)
        self.schedule = schedule  # streamlm.nn.optim.Schedule: the lr and its state
        self.h: np.ndarray | None = None  # the carried hidden state (N, H)
        self.best_ppl: float | None = None
        self.converged = False  # --anneal mikolov: training has ended
        self.history: list[dict] = []
        self.elapsed_before = 0.0  # wall seconds spent by earlier invocations
        # loss sums since the last log record / epoch start (checkpointed so that
        # the records after a resume are the same as without one)
        self.int_loss = 0.0
        self.int_steps = 0
        self.ep_loss = 0.0
        self.ep_steps = 0
        self.have_ckpt = False  # a checkpoint of this run exists (written or resumed)

    @property
    def lr(self) -> float:
        """The learning rate in force (the schedule's)."""
        return self.schedule.lr


def save_train(path: Path, run: TrainState, batcher, model_cfg, vocab, elapsed: float) -> None:
    """Write the training checkpoint of ``run`` at the batcher's position."""
    meta = {
        "streamlm": __version__,
        "train_config": run.cfg.to_dict(),
        "model_config": dataclasses.asdict(model_cfg),
        "dtype": run.params.dtype.name,
        "vocab_sha256": vocab.sha256(),
        "batcher": batcher.state(),
        "rng": run.rng.bit_generator.state,
        **run.opt.state_meta(),  # adam_t, ema_n
        **run.schedule.state(),  # lr (--anneal mikolov: last_ppl, halving)
        "best_ppl": run.best_ppl,
        "converged": run.converged,
        "history": run.history,
        "elapsed_s": elapsed,
        "int_loss": run.int_loss, "int_steps": run.int_steps,
        "ep_loss": run.ep_loss, "ep_steps": run.ep_steps,
        "has_h": run.h is not None,
    }
    empty = np.zeros(0, dtype=run.params.dtype)
    arrays = {
        "params": run.params.flat,
        **run.opt.state_arrays(),  # adam_m, adam_v, ema (empty when not in use)
        "h": run.h if run.h is not None else empty,
    }
    if run.params.classes is not None:
        arrays["word_class"] = run.params.classes.word_class
    store.save(path, TRAIN_FORMAT, TRAIN_VERSION, meta, arrays)
    run.have_ckpt = True


def restore_train(path: Path, run: TrainState, batcher, model_cfg, vocab) -> None:
    """Load the checkpoint at ``path`` into ``run`` and ``batcher``; refuse one made
    with other trajectory options, another model shape or another vocabulary."""
    if not path.exists():
        raise UsageError(f"cannot resume: no checkpoint at {path}")
    state, arrays = store.load(path, TRAIN_FORMAT, TRAIN_VERSION, what="checkpoint")
    if state["format_version"] != TRAIN_VERSION:
        raise InputError(f"checkpoint version {state['format_version']} is from an older "
                         "streamlm; start again without --resume", path=path)
    for k in ("params", "adam_m", "adam_v", "h"):
        if k not in arrays:
            raise InputError(f"checkpoint lacks the array {k!r}", path=path)
    saved = state["train_config"]  # (older checkpoints: --lr-decay was --anneal's default)
    saved = {**DEFAULTS, "lr_decay": DEFAULT_DECAY.get(saved.get("anneal", "plateau")), **saved}
    for k in TRAJECTORY:
        if saved.get(k) != getattr(run.cfg, k):
            flag = "--" + k.replace("_", "-")
            raise UsageError(f"cannot resume: the checkpoint was made with {flag} "
                             f"{saved.get(k)!r}, this run has {getattr(run.cfg, k)!r} "
                             f"({path})")
    saved_cfg = {"cell": "rnn", "layers": 1, **state["model_config"]}  # (before cells)
    if saved_cfg != dataclasses.asdict(model_cfg):
        raise UsageError(f"cannot resume: checkpoint model {state['model_config']} differs "
                         f"from {dataclasses.asdict(model_cfg)} ({path})")
    if state["vocab_sha256"] != vocab.sha256():
        raise UsageError(f"cannot resume: the checkpoint was made with another vocabulary "
                         f"({path})")
    classes = run.params.classes
    if classes is not None and not np.array_equal(arrays.get("word_class"), classes.word_class):
        raise UsageError(f"cannot resume: the checkpoint's word classes differ from the ones "
                         f"the training data gives now ({path})")
    p = arrays["params"]
    if p.shape != run.params.flat.shape or p.dtype != run.params.dtype:
        raise InputError("checkpoint parameter buffer has the wrong size or dtype", path=path)
    batcher.restore(state["batcher"])
    run.params.flat[...] = p
    run.opt.load_state(arrays, state, path)
    run.h = arrays["h"].astype(run.params.dtype) if state["has_h"] else None
    if run.h is not None and run.h.shape != (run.cfg.batch, params_state_size(model_cfg)):
        raise InputError("checkpoint state has the wrong shape", path=path)
    run.rng.bit_generator.state = state["rng"]
    run.schedule.load(state)
    run.best_ppl = state["best_ppl"]
    run.converged = bool(state.get("converged", False))
    run.history = list(state["history"])
    run.elapsed_before = float(state["elapsed_s"])
    run.int_loss, run.int_steps = float(state["int_loss"]), int(state["int_steps"])
    run.ep_loss, run.ep_steps = float(state["ep_loss"]), int(state["ep_steps"])
    run.have_ckpt = True


# ================================================================= scoring ==
class ScoreCheckpoint:
    """The scoring checkpoint at ``path`` for one run's ``fingerprint`` (the model's
    checksum, the inputs and the result options), written every ``every``: a token
    count (500000) or a duration ("60s", "5m"; see options.parse_every), by ``clock``
    (seconds; default time.monotonic)."""

    def __init__(self, path: str, every, fingerprint: dict, clock=None):
        import time

        from streamlm.options import parse_every

        self.path = path
        self.every_tokens, self.every_s = parse_every(every)
        self.fingerprint = fingerprint
        self.spool: Spool | None = None
        self._clock = clock or time.monotonic
        self._since = 0  # tokens since the last save
        self._last = self._clock()

    def due(self, n_tokens: int) -> bool:
        """Count ``n_tokens`` more scored; True when the next checkpoint is due."""
        self._since += n_tokens
        if self.every_tokens is not None:
            return self._since >= self.every_tokens
        return self._clock() - self._last >= self.every_s

    def load(self) -> dict | None:
        """The saved run (``inputs``: Totals as JSON, ``state``, ``_states``: arrays),
        or None when there is no checkpoint yet."""
        p = self.path
        if not os.path.exists(p):
            return None
        try:
            meta, arrays = store.load(p, SCORE_FORMAT, SCORE_VERSION, what="score checkpoint",
                                      error=UsageError)
            if meta["format_version"] != SCORE_VERSION:
                raise UsageError(f"{p}: score checkpoint of an older streamlm")
        except UsageError as e:
            raise UsageError(f"{e}; delete it to start again") from None
        fp = meta.get("fingerprint", {})
        for k, v in self.fingerprint.items():
            if json.loads(json.dumps(v)) != fp.get(k):
                raise UsageError(f"{p}: checkpoint was written for a different run ({k} "
                                 "differs); delete it or use another --checkpoint file")
        meta["_states"] = {k: v for k, v in arrays.items() if k.startswith("h_")}
        meta["_extra"] = {k: v for k, v in arrays.items() if k.startswith("dyn_")}
        return meta

    def save(self, acc: Accumulator, state: dict, extra=None) -> None:
        """Sync the spool, then write the sums, positions and open states (``state``:
        input -> streamlm.jobs.schedule.Carried), and ``extra``: (arrays named dyn_*,
        a JSON-able dict) of dynamic evaluation's adapted weights."""
        if self.spool is not None:
            self.spool.sync()
        meta = {"fingerprint": self.fingerprint,
                "inputs": [t.to_json() for t in acc.t],
                "state": {str(i): {"prev": int(c.prev), "seg_offset": int(c.seg_offset),
                                   "key": int(c.key)}
                          for i, c in state.items()}}
        arrays = {f"h_{i}": np.asarray(c.h) for i, c in state.items()}
        if extra is not None:
            arrays.update(extra[0])
            meta["dynamic"] = extra[1]
        store.save(self.path, SCORE_FORMAT, SCORE_VERSION, meta, arrays)
        self._since, self._last = 0, self._clock()
        log.debug("checkpoint: %s tokens", f"{sum(t.scored for t in acc.t):,}")

    def restore(self, saved: dict, acc: Accumulator, state: dict, S: int, dtype) -> None:
        """Put a loaded checkpoint back into the accumulator and the scheduler's state
        (input -> streamlm.jobs.schedule.Carried; ``S`` floats of state each)."""
        from streamlm.jobs.schedule import Carried

        if len(saved["inputs"]) != len(acc.t):
            raise UsageError(f"{self.path}: checkpoint has a different number of inputs")
        acc.t = [Totals.from_json(d) for d in saved["inputs"]]
        for k, d in saved.get("state", {}).items():
            h = saved["_states"][f"h_{k}"]
            if h.shape != (S,):
                raise UsageError(f"{self.path}: checkpoint state has the wrong shape")
            state[int(k)] = Carried(h.astype(dtype), int(d["prev"]), int(d["seg_offset"]),
                                    int(d["key"]))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
