"""The streaming scorer: exact perplexity of text or token shards of any size.

:func:`score` wires the rooms of a scoring job together, in the order the data
flows: the inputs (``streamlm.inputs``: text is tokenised by the rule of
``streamlm.tokenizer``), the model (Numba kernels, or plain numpy for small
jobs), the scheduler that packs tokens into model calls
(``streamlm.schedule``), the accumulator and its record spool
(``streamlm.records``), the checkpoint (``streamlm.checkpoint``) and the
output file (``streamlm.outputs``). The figures are KenLM's
(``streamlm.metrics``).

Token accounting: every line contributes its words plus one ``<eos>``, and
every token is scored (a file of L lines and W words scores W + L tokens);
with documents (``reset="doc"`` or ``level="doc"``) blank lines separate
documents and contribute no token. A token is an OOV when it maps to
``<unk>``. At the start of a stream (and, with ``reset``, of every line or
document) the state is zero and the previous token is ``<eos>``.

Resume: with ``checkpoint``, every ``checkpoint_every`` tokens the per-input
positions, sums, open states and record counts are written atomically; the
records themselves are spooled in ``<checkpoint>.spool/``. Inputs are re-read
from their start on resume (skipped tokens are tokenised again, not scored).
The checkpoint and spool are removed after a successful run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamlm.checkpoint import ScoreCheckpoint
from streamlm.engines import scoring_model
from streamlm.errors import InputError, ModelFileError, UsageError
from streamlm.inputs import open_source
from streamlm.metrics import summarize
from streamlm.options import Engine, Level, ScoreOptions
from streamlm.outputs import write_records
from streamlm.params import Model, load_model
from streamlm.records import UNIT_DTYPE, WORD_DTYPE, Accumulator, Spool
from streamlm.schedule import Scheduler
from streamlm.vocab import Vocab

log = logging.getLogger("streamlm.score")

NUMPY_MAX_TOKENS = 20_000  # engine="auto": inputs estimated below this skip numba


@dataclass
class ScoreResult:
    """What :func:`score` returns: the summary, plus final states for tests."""

    summary: dict
    final_states: dict[int, np.ndarray]  # input index -> (H,) state after its last token
    seconds: float


def score(model, inputs: Sequence[str | os.PathLike], options: ScoreOptions | None = None, *,
          output: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
          progress: Callable[[dict], None] | None = None, **option_values) -> ScoreResult:
    """Score ``inputs`` with ``model`` (a path or a loaded :class:`~streamlm.params.Model`).

    ``options`` (a :class:`~streamlm.options.ScoreOptions`), or its fields as
    keywords (``reset="line"``, ``level="doc"``...). Returns the summary
    (``summary["inputs"]`` per input, the totals at the top level) and the final
    hidden state of each input (``reset="none"``). With ``output`` and a
    ``level``, per-unit records are written to ``output`` (``.parquet`` ->
    Parquet, anything else -> JSONL), atomically and only if the whole run
    succeeds. The engine ``auto`` scores on numpy when the inputs hold fewer
    than about NUMPY_MAX_TOKENS tokens, on the Numba kernels otherwise.
    ``progress``, if given, is called after each model call with a dict
    (``tokens``, ``logprob``, ``perplexity``, ``seconds``, ``scored_this_run``).
    """
    t_start = time.monotonic()
    opts = options or ScoreOptions()
    if option_values:
        opts = opts.replace(**option_values)
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("no inputs given")
    level = opts.level
    if (level is None) != (output is None):
        raise UsageError("--output and --level go together")
    if inputs.count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    output = None if output is None else os.fspath(output)
    if output is not None and os.path.isdir(output):
        raise UsageError(f"{output}: --output is a directory")

    m = model if isinstance(model, Model) else load_model(model)
    try:
        vocab = Vocab(m.vocab, source=m.path)
    except InputError as e:
        raise ModelFileError(f"bad model vocabulary: {e}", m.path) from None
    sources = [open_source(k, p, vocab, docs=opts.docs, errors=opts.errors, column=opts.column)
               for k, p in enumerate(inputs)]
    engine = opts.engine
    if engine == Engine.auto:
        est = sum(s.estimate_tokens() for s in sources)
        engine = Engine.numpy if est <= NUMPY_MAX_TOKENS else Engine.numba

    ckpt = None
    spool_dir: Path | None = None
    tmp_spool = False
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        fp = {"model": m.meta.get("sha256"), "inputs": [s.fingerprint() for s in sources],
              **opts.result_options(), "engine": engine.value,
              "output": None if output is None else os.path.abspath(output)}
        ckpt = ScoreCheckpoint(checkpoint, opts.checkpoint_every, fp)
        spool_dir = Path(checkpoint + ".spool")
    elif level is not None:
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        spool_dir = Path(tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.spool-",
                                          dir=parent))
        tmp_spool = True
    spool = None
    if level is not None:
        spool = Spool(spool_dir, WORD_DTYPE if level == Level.word else UNIT_DTYPE)
    acc = Accumulator(len(sources), vocab.unk_id, level, spool)
    if ckpt is not None:
        ckpt.spool = spool
    since_ckpt = 0

    def after_call(n_tokens: int) -> None:
        nonlocal since_ckpt
        since_ckpt += n_tokens
        if ckpt is not None and since_ckpt >= ckpt.every:
            ckpt.save(acc, scheduler.state)
            since_ckpt = 0
        if progress is not None:
            tok, lp = acc.running()
            progress({"tokens": tok, "logprob": lp, "seconds": time.monotonic() - t_start,
                      "perplexity": math.exp(-lp / tok) if tok else None,
                      "scored_this_run": acc.total_scored})

    scheduler = Scheduler(sources, scoring_model(m.params, engine), eos=vocab.eos_id,
                          H=m.config.H, dtype=m.params.dtype, reset=opts.reset,
                          batch=opts.batch, chunk_tokens=opts.chunk_tokens, acc=acc,
                          after_call=after_call)
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
                ckpt.restore(saved, acc, scheduler.state, m.config.H, m.params.dtype)
                if spool is not None:
                    for i, t in enumerate(acc.t):
                        spool.truncate(i, t.records)
                log.info("resuming from %s: %s tokens already scored", checkpoint,
                         f"{sum(t.scored for t in acc.t):,}")
        scheduler.run()
        for s in sources:  # inputs with no tokens at all
            acc.finish(s.index)
        if spool is not None:
            spool.close_all()
        if ckpt is not None:
            ckpt.save(acc, {})  # everything scored: a rerun only rewrites the output
        if level is not None:
            n = write_records(output, level, spool, sources, vocab, opts.docs)
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
    tot["reset"] = opts.reset.value
    tot["engine"] = engine.value
    tot["seconds"] = round(seconds, 3)
    tot["tokens_per_second"] = (round(acc.total_scored / seconds, 1) if seconds > 0 else None)
    return ScoreResult(tot, scheduler.final_states, seconds)
