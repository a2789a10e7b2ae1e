"""The streaming scorer: exact perplexity of text or token shards of any size.

:func:`score` wires the rooms of a scoring job together, in the order the data
flows: the inputs (``streamlm.data.inputs``: text is tokenised by the rule of
``streamlm.data.tokenizer``), the model (Numba kernels, or plain numpy for small
jobs), the scheduler that packs tokens into model calls
(``streamlm.jobs.schedule``), the accumulator and its record spool
(``streamlm.jobs.records``), the checkpoint (``streamlm.jobs.checkpoint``) and the
output file (``streamlm.jobs.outputs``). The figures are KenLM's
(``streamlm.jobs.metrics``).

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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamlm.compute import cpus, plan
from streamlm.data.atomic import check_writable, writing
from streamlm.data.inputs import (
    DocSource,
    ShardSource,
    expand_inputs,
    fingerprint,
    is_stream,
    open_source,
)
from streamlm.data.text import forget_preread
from streamlm.data.vocab import Vocab
from streamlm.errors import UsageError
from streamlm.jobs import mix as mixing
from streamlm.jobs.checkpoint import ScoreCheckpoint
from streamlm.jobs.metrics import summarize
from streamlm.jobs.outputs import check_output, is_special, write_records, write_split
from streamlm.jobs.records import MIX_WORD_DTYPE, UNIT_DTYPE, WORD_DTYPE, Accumulator, Spool, Totals
from streamlm.jobs.schedule import Scheduler
from streamlm.nn.engines import scoring_model
from streamlm.nn.params import Model, load_model
from streamlm.options import Engine, Level, Reset, ScoreOptions

log = logging.getLogger("streamlm.jobs.score")



@dataclass
class ScoreResult:
    """What :func:`score` returns: the summary, plus final states for tests."""

    summary: dict
    final_states: dict[int, np.ndarray]  # input index -> (H,) state after its last token
    seconds: float


def _load(path, prefetch: bool) -> Model:
    """load_model(path); with ``prefetch``, on a thread of its own while this one
    imports the kernels (numba): the load is mostly copies and a checksum, which
    run without the GIL, and the import mostly Python, which needs it. At V=100k,
    H=256 (a 208 MB file) the load takes 0.25-1 s and the import 0.3 s."""
    if not prefetch:
        return load_model(path)
    box: dict = {}

    def load() -> None:
        try:
            box["model"] = load_model(path)
        except BaseException as e:  # noqa: BLE001 (raised again below, on the caller)
            box["error"] = e

    t = threading.Thread(target=load, name="streamlm-load", daemon=True)
    t.start()
    try:
        import streamlm.nn.model  # noqa: F401 (what scoring_model will need)
    finally:
        t.join()
    if "error" in box:
        raise box["error"]
    return box["model"]


def _threads(engine: Engine) -> int:
    """The threads the model computes on (numba; the numpy engine: one)."""
    if engine == Engine.numpy:
        return 1
    from streamlm.compute import threads

    return threads.get_num_threads()


def score(model, inputs: Sequence[str | os.PathLike], options: ScoreOptions | None = None, *,
          output: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
          split_buckets: str | os.PathLike | None = None,
          progress: Callable[[dict], None] | None = None, _mixer=None,
          _vocab_warned: bool = False, save_adapted: str | os.PathLike | None = None,
          compare_static: bool = False, **option_values) -> ScoreResult:
    """Score ``inputs`` with ``model`` (a path or a loaded :class:`~streamlm.nn.params.Model`).

    ``options`` (a :class:`~streamlm.options.ScoreOptions`), or its fields as
    keywords (``reset="line"``, ``level="doc"``...). Returns the summary
    (``summary["inputs"]`` per input, the totals at the top level) and the final
    hidden state of each input (``reset="none"``).

    ``reset="auto"`` is ``doc`` when every input is documents (JSONL, Parquet rows)
    and ``none`` otherwise. With ``output``, per-unit records are written there
    (see :mod:`streamlm.jobs.outputs`), at ``level`` (default: ``doc`` with
    ``reset="doc"``, else ``line``), once the whole run succeeded. With
    ``split_buckets`` (a directory) and ``cutoffs``, the input rows are copied,
    unchanged, into one file per bucket. The engine ``auto`` scores on numpy
    when the inputs hold fewer than about plan.NUMPY_MAX_TOKENS tokens, on the Numba
    kernels otherwise. ``progress``, if given, is called after each model call
    with a dict (``tokens``, ``logprob``, ``perplexity``, ``seconds``,
    ``scored_this_run``, ``fraction``: of the inputs scored, by size, or None).

    With ``mix`` (a KenLM model) and ``mix_lambda`` L, every token is scored by
    ``L P_rnn + (1 - L) P_ngram`` (:mod:`streamlm.jobs.mix`); ``mix_lambda="auto"``
    first tunes L on ``tune_on``. ``summary["mix"]`` then says what was mixed and
    gives each model's figures alone on the same tokens.
    """
    t_start = time.monotonic()
    forget_preread()  # anything a failed job in this process read ahead
    opts = options or ScoreOptions()
    if option_values:
        opts = opts.replace(**option_values)
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("no inputs given")
    if inputs.count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    inputs = expand_inputs(inputs, column=opts.column, text_column=opts.text_column)
    output = None if output is None else os.fspath(output)
    if output is not None:
        check_output(output, inputs)
        check_writable(output, "--output")
    split_dir = None if split_buckets is None else os.fspath(split_buckets)
    if split_dir is not None:
        if opts.cutoffs is None:
            raise UsageError("--split-buckets needs --cutoffs (from streamlm report)")
        if os.path.exists(split_dir) and not os.path.isdir(split_dir):
            raise UsageError(f"{split_dir}: --split-buckets must be a directory")
        check_writable(os.path.join(split_dir, "head.parquet"), "--split-buckets")
    if checkpoint is not None:
        check_writable(checkpoint, "--checkpoint")

    m = model if isinstance(model, Model) else _load(
        model, plan.likely_numba(opts.engine.value, inputs) and cpus.threads() > 1)
    vocab = m.vocabulary()  # a subword model's tokenises raw text itself
    opts = _resolve(opts, inputs, output, split_dir)
    owner = f"the model {m.path}" if m.path else "the model"
    sources = [open_source(k, p, vocab, docs=opts.docs, errors=opts.errors, column=opts.column,
                           text_column=opts.text_column, text_field=opts.text_field,
                           owner=owner)
               for k, p in enumerate(inputs)]
    opts = _resolve_reset(opts, sources, output, split_dir)
    mixer, mix_info = _mixer, None
    if opts.mix is not None:
        mixer, opts, mix_info = _setup_mix(m, vocab, opts, inputs)
    if mixer is not None:
        mixer.bind(sources)
    level = opts.level
    fingerprints = None if checkpoint is None else [s.fingerprint() for s in sources]
    engine = opts.engine
    adapter, dyn_info = None, None
    if opts.dynamic is not None:  # (the model learns as it scores: the Numba kernels)
        if engine == Engine.numpy:
            raise UsageError("--dynamic learns as it scores: it runs on --engine numba")
        engine = Engine.numba
        if save_adapted is not None:
            check_writable(save_adapted, "--save-adapted")
        from streamlm.jobs.dynamic_tuning import prepare

        adapter, dyn_info = prepare(m, vocab, opts)
    elif save_adapted is not None or compare_static:
        raise UsageError("--save-adapted and --compare-static go with --dynamic")
    if engine == Engine.auto:
        est = sum(s.estimate_tokens() for s in sources)
        engine = Engine(plan.engine_for("auto", est))

    ckpt = None
    spool_dir: Path | None = None
    tmp_spool = False
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        fp = {"model": m.meta.get("sha256"), "inputs": fingerprints,
              **opts.result_options(), "engine": engine.value,
              "output": None if output is None else os.path.abspath(output),
              "split_buckets": None if split_dir is None else os.path.abspath(split_dir)}
        if opts.mix is not None:
            fp["mix_model"] = fingerprint(opts.mix)
        ckpt = ScoreCheckpoint(checkpoint, opts.checkpoint_every, fp)
        spool_dir = Path(checkpoint + ".spool")
    elif level is not None:
        with writing(output, "the records"):
            spool_dir = Path(_spool_dir(output))
        tmp_spool = True
    spool = None
    records_for = output if output is not None else split_dir
    if level is not None:
        word = MIX_WORD_DTYPE if mix_info is not None else WORD_DTYPE
        with writing(records_for or checkpoint, "the records"):
            spool = Spool(spool_dir, word if level == Level.word else UNIT_DTYPE)
    acc = Accumulator(len(sources), vocab.unk_id, level, spool, mixer)

    def finished(i: int) -> None:  # an input read to its end: keep what its reader counted
        acc.t[i].unk_literal = sources[i].unk_literal

    acc.on_finish = finished
    if ckpt is not None:
        ckpt.spool = spool

    def after_call(n_tokens: int) -> None:
        if ckpt is not None and ckpt.due(n_tokens):
            extra = None if adapter is None else (adapter.state_arrays(), adapter.state_meta())
            with writing(checkpoint, "the checkpoint"):
                ckpt.save(acc, scheduler.state, extra)
        if progress is not None:
            tok, lp = acc.running()
            progress({"tokens": tok, "logprob": lp, "seconds": time.monotonic() - t_start,
                      "perplexity": math.exp(-lp / tok) if tok else None,
                      "scored_this_run": acc.total_scored, "fraction": _fraction(sources, acc)})

    if adapter is not None:
        from streamlm.jobs import dynamic

        rnn = adapter.rnn
        scheduler = dynamic.DynamicScheduler(sources, adapter, eos=vocab.eos_id,
                                             reset=opts.reset.value, acc=acc,
                                             after_call=after_call, dtype=m.params.dtype)
    else:
        rnn = scoring_model(m.params, engine)
        scheduler = Scheduler(sources, rnn, eos=vocab.eos_id,
                              state_size=rnn.state_size, dtype=m.params.dtype,
                              reset=opts.reset, batch=opts.batch,
                              chunk_tokens=opts.chunk_tokens, acc=acc, after_call=after_call,
                              threads=_threads(engine))
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
                ckpt.restore(saved, acc, scheduler.state, rnn.state_size, m.params.dtype)
                if adapter is not None and saved.get("dynamic") is not None:
                    adapter.load_state(saved["_extra"], saved["dynamic"])
                if spool is not None:
                    for i, t in enumerate(acc.t):
                        spool.truncate(i, t.records)
                log.info("resuming from %s: %s tokens already scored", checkpoint,
                         f"{sum(t.scored for t in acc.t):,}")
        with writing(records_for, "the records"):  # (spooled beside it, or in the spool)
            scheduler.run()
        for s in sources:  # inputs with no tokens at all
            acc.finish(s.index)
        if spool is not None:
            spool.close_all()
        if ckpt is not None:
            with writing(checkpoint, "the checkpoint"):
                ckpt.save(acc, {})  # everything scored: a rerun only rewrites the outputs
        if save_adapted is not None:
            _save_adapted(save_adapted, adapter, m)
        cut = None if opts.cutoffs is None else (opts.cutoffs, opts.bucket_field)
        if split_dir is not None:
            with writing(split_dir, "the buckets"):
                counts = write_split(split_dir, spool, sources, acc.t, cut)
            log.info("wrote %s: %s", split_dir, ", ".join(
                f"{k} {v:,} rows" for k, v in counts.items()))
        if output is not None:
            with writing(output, "the records"):
                n = write_records(output, level, spool, sources, acc.t, vocab, opts.docs,
                                  keep=opts.keep, cutoffs=cut)
            log.info("wrote %s: %s %s records", "stdout" if output == "-" else output,
                     f"{n:,}", level)
        ok = True
    finally:
        forget_preread()
        if spool is not None:
            spool.close_all()
        if ok and ckpt is not None:
            ckpt.remove()  # before the spool: a checkpoint never outlives its spool
        # the spool goes with the run, unless a checkpoint written by it needs it
        if spool_dir is not None and (ok or tmp_spool or not os.path.exists(checkpoint)):
            shutil.rmtree(spool_dir, ignore_errors=True)

    unchecked = [u for s in sources for u in s.unchecked]  # token ids, once the job is done
    if unchecked and not _vocab_warned:
        from streamlm.data.manifest import warn_unchecked

        warn_unchecked(unchecked, owner)
    per = []
    docs_in = [t for s, t in zip(sources, acc.t) if isinstance(s, DocSource)]
    for s, t in zip(sources, acc.t):
        d = {"path": s.name}
        d.update(summarize(t.scored, t.oov, t.logprob, t.logprob_oov, t.words, t.nbytes))
        d["oov_rate"] = t.oov / t.scored if t.scored else None
        d["unk_literal"] = t.unk_literal  # of the OOVs (None: token ids cannot tell)
        if isinstance(s, DocSource):
            d["rows"], d["skipped_rows"] = t.rows, len(t.skipped)
        if mix_info is not None:
            d["mix"] = mixing.summary(t.scored, t.mix, t.oov)
        per.append(d)
        _warn_oov(d, opts.max_oov_rate)
        _warn_unscored(t, d)
    tot = summarize(sum(t.scored for t in acc.t), sum(t.oov for t in acc.t),
                    math.fsum(t.logprob for t in acc.t), math.fsum(t.logprob_oov for t in acc.t),
                    sum(t.words for t in acc.t), sum(t.nbytes for t in acc.t))
    tot["oov_rate"] = tot["oov"] / tot["tokens"] if tot["tokens"] else None
    lits = [t.unk_literal for t in acc.t]
    tot["unk_literal"] = None if None in lits else sum(lits)
    if docs_in:
        tot["rows"] = sum(t.rows for t in docs_in)
        tot["skipped_rows"] = sum(len(t.skipped) for t in docs_in)
    if mix_info is not None:
        sums = {k: math.fsum(t.mix[k] for t in acc.t if t.mix) for k in mixing.SUMS}
        tot["mix"] = {**mix_info, **mixing.summary(tot["tokens"], sums, tot["oov"])}
    if dyn_info is not None:
        tot["dynamic"] = dynamic.summary(adapter, dyn_info, tot["tokens"], opts.reset.value)
        if compare_static:  # the same tokens scored by the trained weights as they are
            st = score(m, inputs, opts.replace(dynamic=None, dynamic_lr=None,
                                               dynamic_decay=None, dynamic_stats=None,
                                               dynamic_stats_on=None, tune_on=None,
                                               max_oov_rate=None,
                                               engine=Engine.numba),
                       _vocab_warned=True).summary
            tot["dynamic"].update(static_perplexity=st["perplexity"],
                                  static_logprob=st["logprob"])
    seconds = time.monotonic() - t_start
    tot["inputs"] = per
    tot["model"] = m.path
    tot["tokenizer"] = vocab.tokenizer
    tot["reset"] = opts.reset.value
    tot["level"] = None if level is None else level.value
    tot["engine"] = engine.value
    tot["seconds"] = round(seconds, 3)
    tot["tokens_per_second"] = (round(acc.total_scored / seconds, 1) if seconds > 0 else None)
    return ScoreResult(tot, scheduler.final_states, seconds)


def _setup_mix(m: Model, vocab: Vocab, opts: ScoreOptions, inputs: list[str]):
    """The n-gram model of ``--mix``, its Mixer, and L (tuned on ``tune_on`` for auto):
    (mixer, the options with L, what the summary says was mixed)."""
    if vocab.tokenizer != "word":
        raise UsageError(f"--mix interpolates word probabilities: {m.path or 'the model'} is a "
                         f"{vocab.tokenizer} (subword) model")
    for p in [*inputs, *([opts.tune_on] if opts.tune_on else [])]:
        if is_stream(p):
            what = "stdin ('-')" if p == "-" else f"a pipe ({p})"
            raise UsageError(f"--mix reads every input twice (once for each model); {what} "
                             "can be read once: give a file")
    ngram = mixing.load_ngram(opts.mix)
    info = {"ngram_model": os.fspath(opts.mix), "lambda": opts.mix_lambda, "tuned_on": None}
    if opts.mix_lambda == "auto":
        collect = mixing.Mixer(ngram, None, vocab)
        tune_opts = ScoreOptions(reset=opts.reset, chunk_tokens=opts.chunk_tokens,
                                 batch=opts.batch, errors=opts.errors, column=opts.column,
                                 text_field=opts.text_field, text_column=opts.text_column,
                                 engine=opts.engine, max_oov_rate=None)
        score(m, [opts.tune_on], tune_opts, _mixer=collect)
        rnn, ng = collect.collected()
        lam, ppl = mixing.best_lambda(rnn, ng)
        info.update({"lambda": lam, "tuned_on": os.fspath(opts.tune_on),
                     "tune_tokens": len(rnn), "tune_perplexity": ppl,
                     "tune_perplexity_rnn": math.exp(-rnn.mean()),
                     "tune_perplexity_ngram": math.exp(-ng.mean())})
        log.info("--lambda auto: %.4f (on %s: perplexity %.2f mixed, %.2f the RNN alone, "
                 "%.2f the n-gram alone)", lam, opts.tune_on, ppl,
                 info["tune_perplexity_rnn"], info["tune_perplexity_ngram"])
        opts = opts.replace(mix_lambda=lam, tune_on=None)
    return mixing.Mixer(ngram, opts.mix_lambda, vocab), opts, info


def _resolve(opts: ScoreOptions, inputs: list[str], output: str | None,
             split_dir: str | None) -> ScoreOptions:
    """Checks of the options that need no input opened."""
    if opts.level is not None and output is None and split_dir is None:
        raise UsageError("--level sets the unit of the --output records; give --output too")
    if split_dir is not None and opts.level not in (None, Level.doc):
        raise UsageError("--split-buckets splits documents: use --level doc (or no --level)")
    return opts


def _resolve_reset(opts: ScoreOptions, sources: list, output: str | None,
                   split_dir: str | None) -> ScoreOptions:
    """``reset=auto`` and the default level, from the inputs; the checks that need them."""
    all_docs = all(isinstance(s, DocSource) for s in sources)
    if opts.reset == Reset.auto:
        opts = opts.replace(reset=Reset.doc if all_docs else Reset.none)
    level = opts.level
    if level is None and (output is not None or split_dir is not None):
        level = Level.doc if (opts.reset == Reset.doc or split_dir is not None) else Level.line
        opts = opts.replace(level=level)
    if split_dir is not None and not all_docs:
        raise UsageError("--split-buckets copies rows of JSONL or Parquet documents; "
                         f"{next(s.name for s in sources if not isinstance(s, DocSource))} "
                         "is not documents")
    if opts.keep:
        if level != Level.doc:
            raise UsageError("--keep copies columns of the input rows into per-document "
                             "records: use --level doc")
        bad = next((s for s in sources if not isinstance(s, DocSource)), None)
        if bad is not None:
            raise UsageError(f"{bad.name}: --keep copies fields of JSONL or Parquet "
                             "documents; this input is text or token ids")
        from streamlm.data.rows import check_keep

        for s in sources:  # a field in no row (a typo): an error now, not a null column
            check_keep(s.path, s.fmt, opts.keep)
    if opts.cutoffs is not None and level == Level.word:
        raise UsageError("--cutoffs adds a bucket to line or document records, not words")
    if level == Level.doc:
        for s in sources:
            if isinstance(s, ShardSource) and not s.dataset.has_docs:
                raise UsageError(f"{s.name}: no document boundaries in these shards (no "
                                 "doc_start column or list<int> rows); use --level line")
    return opts


def _spool_dir(output: str | None) -> str:
    """A new directory for the record spool: beside a regular output file, else in the
    temp directory (stdout, a FIFO, a device; or no output: --split-buckets only)."""
    if output is None or output == "-" or is_special(output):
        return tempfile.mkdtemp(prefix="streamlm-spool-")
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.spool-", dir=parent)


def _fraction(sources: list, acc: Accumulator) -> float | None:
    """The share of the inputs scored so far (not read: reading runs ahead), by their
    size on disk (None if unknown)."""
    done = weight = 0.0
    for s, t in zip(sources, acc.t):
        p = (1.0, float(s.size or 1)) if t.done else s.progress(t.scored)
        if p is None:
            return None
        done += p[0] * p[1]
        weight += p[1]
    return done / weight if weight > 0 else None


def _warn_unscored(t: Totals, d: dict) -> None:
    """One warning line each for what an input (its Totals ``t``, its summary ``d``) left
    unscored: bad rows skipped (how many, and the first: where and why), and no tokens
    at all."""
    n = d.get("skipped_rows") or 0
    if n:
        first = t.why or f"row {min(t.skipped)}"
        log.warning("warning: %s: skipped %s bad row%s (first: %s)", d["path"], f"{n:,}",
                    "" if n == 1 else "s", first)
    if not d["tokens"]:
        log.warning("warning: %s: no tokens to score", d["path"])


def _warn_oov(d: dict, max_rate: float | None) -> None:
    """A warning when the input's OOVs, not counting a literal ``<unk>`` of the text
    (normalised text, as PTB's: not a word the model lacks), are above ``max_rate``."""
    literal = d.get("unk_literal") or 0
    if max_rate is None or not d["tokens"] or (d["oov"] - literal) / d["tokens"] <= max_rate:
        return
    rate = (d["oov"] - literal) / d["tokens"]
    also = f"; {literal:,} more are a literal <unk> of the text" if literal else ""
    px = d.get("perplexity_excl_oov")
    log.warning("warning: %s: %.1f%% of its %s tokens are OOVs (<unk>)%s, above "
                "--max-oov-rate %.3g%%: its perplexity (%s) rewards them; the perplexity "
                "excluding OOVs (%s) does not (a model with this text's vocabulary would "
                "say more)", d["path"], 100 * rate, f"{d['tokens']:,}", also, 100 * max_rate,
                "n/a" if d["perplexity"] is None else f"{d['perplexity']:.2f}",
                "n/a" if px is None else f"{px:.2f}")


def resume_advice(checkpoint: str | None, dask: str | None, output: str | None):
    """A callable saying how to resume an interrupted score job (for the line the CLI
    prints on SIGINT / SIGTERM), or None when there is nothing to resume from."""
    def advice() -> str | None:
        if dask is not None and output is not None:
            return f"the same command scores only the inputs not finished in {output}"
        if checkpoint is None:
            return None
        if os.path.exists(checkpoint):
            return f"the same command resumes from {checkpoint}"
        return f"no checkpoint was written yet ({checkpoint}): the same command starts again"

    return advice


def _save_adapted(path, adapter, m) -> None:
    """The adapted weights as a model file (the trained model's vocabulary, tokeniser and
    training meta; ``adapted_from`` its checksum)."""
    from streamlm.nn.params import save_model

    with writing(path, "the adapted model"):
        save_model(path, adapter.weights(), m.vocab, train_config=m.meta.get("train_config"),
                   extra_meta={"adapted_from": m.meta.get("sha256"),
                               "dynamic": adapter.settings.to_json()},
                   tokenizer=m.tokenizer)
    log.info("wrote %s: the adapted model", path)
