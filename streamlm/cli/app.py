"""The ``streamlm`` command line: thin typer commands over library functions.

Every command hands off to one library function. Errors that come from the
user's input (:class:`streamlm.errors.StreamlmError`) become exactly one line
on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from streamlm.cli.console import Threads, doing, flags_look_like_flags, print_json, use_threads
from streamlm.cli.tools import demo_corpus_cmd, generate_cmd, query_cmd, report_cmd
from streamlm.options import (
    DYNAMIC_DEFAULTS,
    DYNAMIC_SEGMENT,
    Anneal,
    Docs,
    Engine,
    Errors,
    Level,
    Optimizer,
    PieceModel,
    Reset,
    Softmax,
)
from streamlm.options import Cell as CellKind
from streamlm.version import __version__

flags_look_like_flags()

app = typer.Typer(
    name="streamlm",
    help="Numba-compiled streaming RNN language model: prepare shards, train, score, generate.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    pretty_exceptions_enable=False,
    # typer < 0.20 left this default unresolved: help showed "streamlm\[dask]" as typed
    rich_markup_mode="rich",
)

log = logging.getLogger("streamlm")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"streamlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the version and exit."),
    ] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Debug logging on stderr.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
) -> None:
    from streamlm.cli.progress import StderrHandler

    level = logging.DEBUG if verbose else (logging.ERROR if quiet else logging.INFO)
    # plain lines, the same everywhere; above a progress bar while one is live
    logging.basicConfig(level=level, format="%(message)s", handlers=[StderrHandler()],
                        force=True)


# ---------------------------------------------------------------- commands --
# (each command: Annotated typer options, then one call into the library)


@app.command("prepare")
def prepare_cmd(
    inputs: Annotated[list[str], typer.Argument(
        help="Text files (plain, .gz, .bz2, .xz; '-' for stdin), one sentence a line; JSONL or "
             "Parquet / Arrow documents (list<int> ids with --vocab); a directory or quoted glob "
             "is its files, sorted.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory.")],
    vocab_size: Annotated[Optional[int], typer.Option(
        "--vocab-size", help="Keep the N most frequent words (incl. <unk>, <eos>).",
                        rich_help_panel="Vocabulary")] = None,
    min_count: Annotated[int, typer.Option(
        "--min-count", help="Drop words seen fewer than K times.",
                       rich_help_panel="Vocabulary")] = 1,
    vocab: Annotated[Optional[str], typer.Option(
        "--vocab", help="Use this vocabulary file (one word per line) instead of building one.",
                   rich_help_panel="Vocabulary")
    ] = None,
    shard_tokens: Annotated[int, typer.Option(
        "--shard-tokens", help="Tokens per Parquet shard.")] = 1_000_000,
    docs: Annotated[Docs, typer.Option(
        "--docs", help="Document boundaries: none, or blank lines between documents.",
                  rich_help_panel="Inputs")
    ] = Docs.none,
    errors: Annotated[Errors, typer.Option(
        "--errors", help="Bad input: strict (fail), replace (invalid UTF-8 becomes U+FFFD) "
                         "or skip (bad JSONL / Parquet rows, counted).",
                    rich_help_panel="Inputs")] = Errors.strict,
    text_field: Annotated[str, typer.Option(
        "--text-field", help="The text field of JSONL records (a dotted path: meta.content).",
                        rich_help_panel="Inputs"
    )] = "text",
    text_column: Annotated[Optional[str], typer.Option(
        "--text-column", help="The text column of Parquet / Arrow documents (default: text).",
                         rich_help_panel="Inputs"
    )] = None,
    column: Annotated[Optional[str], typer.Option(
        "--column", help="A list<int> token id column of Parquet / Arrow documents "
                         "(default: input_ids); needs --vocab.", rich_help_panel="Inputs")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", help="sentencepiece: train a SentencePiece model on the input (nothing is "
                            "OOV); FILE.model: use that one. Needs pip install "
                            "'streamlm\\[sentencepiece]'. Default: words.",
                       rich_help_panel="Subword tokens")] = None,
    pieces: Annotated[Optional[int], typer.Option(
        "--pieces", help="Pieces of the trained model (default 16000).",
                    rich_help_panel="Subword tokens")] = None,
    piece_model: Annotated[Optional[PieceModel], typer.Option(
        "--piece-model", help="The trained model (default unigram).",
                         rich_help_panel="Subword tokens")] = None,
    sample_lines: Annotated[Optional[int], typer.Option(
        "--sample-lines", help="Train on a uniform sample of this many lines of a larger "
                               "input (SentencePiece's own sampling; default 1000000).",
                          rich_help_panel="Subword tokens")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the manifest as one JSON object on stdout.")] = False,
    threads: Threads = None,
) -> None:
    """Turn text or documents into a vocabulary and Parquet token shards (manifest last)."""
    use_threads(threads)
    from streamlm.jobs.prepare import prepare

    doing(f"preparing {out}", lambda: "no dataset was written (it is valid only once its "
          "manifest.json exists): run the same command again")
    m = prepare(inputs, out, vocab_size=vocab_size, min_count=min_count, vocab_path=vocab,
                shard_tokens=shard_tokens, docs=docs, errors=errors, text_field=text_field,
                text_column=text_column, column=column, tokenizer=tokenizer, pieces=pieces,
                piece_model=piece_model, sample_lines=sample_lines)
    if as_json:
        print_json(m)
    else:
        log.info("prepared %s: %s tokens in %d shard(s), vocabulary %s words, %s <unk>",
                 out, f"{m['num_tokens']:,}", len(m["shards"]), f"{m['vocab']['size']:,}",
                 f"{m['unk_tokens']:,}")


app.command("demo-corpus")(demo_corpus_cmd)


@app.command("score")
def score_cmd(
    model: Annotated[str, typer.Argument(help="Model file (.npz) written by streamlm train.")],
    inputs: Annotated[list[str], typer.Argument(
        help="Text files (plain, .gz, .bz2, .xz; '-' for stdin), JSONL or Parquet / Arrow "
             "documents, token shards, prepared directories; a directory or quoted glob is its "
             "files, sorted. Each input is scored on its own, then summed.")],
    reset: Annotated[Reset, typer.Option(
        "--reset", help="Where the state goes back to zero: none (each input one stream), line "
                        "(every line, as KenLM), doc (every document); auto: doc for documents, "
                        "else none.", rich_help_panel="Inputs")
    ] = Reset.auto,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the summary as one JSON object on stdout.")] = False,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Per-unit scores to .parquet, .jsonl or .csv, written at the end; "
                               "'-': JSONL on stdout (the summary then on stderr).",
                          rich_help_panel="Output records")
    ] = None,
    level: Annotated[Optional[Level], typer.Option(
        "--level", help="Unit of the records (default: doc with --reset doc, else line).",
                   rich_help_panel="Output records")] = None,
    keep: Annotated[Optional[str], typer.Option(
        "--keep", help="Input columns or JSONL fields to copy into per-document records (id,url).",
                  rich_help_panel="Output records")
    ] = None,
    cutoffs: Annotated[Optional[str], typer.Option(
        "--cutoffs", help="Cut-offs file of streamlm report: adds a bucket column (head, middle, "
                          "tail).", rich_help_panel="Output records")] = None,
    split_buckets: Annotated[Optional[str], typer.Option(
        "--split-buckets", help="With --cutoffs: copy the input rows, unchanged, into DIR/head, "
                                "middle, tail.", rich_help_panel="Output records")] = None,
    text_field: Annotated[str, typer.Option(
        "--text-field", help="The text field of JSONL records (a dotted path: meta.content).",
                        rich_help_panel="Inputs")] = "text",
    text_column: Annotated[Optional[str], typer.Option(
        "--text-column", help="The text column of Parquet / Arrow documents (default: text).",
                         rich_help_panel="Inputs")] = None,
    column: Annotated[Optional[str], typer.Option(
        "--column", help="The token id column of Parquet / Arrow inputs (default: token_id, else "
                         "input_ids).", rich_help_panel="Inputs")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", help="Save progress to this file; the same command resumes from it "
                             "(removed on success).", rich_help_panel="Resume")] = None,
    checkpoint_every: Annotated[str, typer.Option(
        "--checkpoint-every", help="A duration (60s, 5m) or a token count (500000).",
                              rich_help_panel="Resume")] = "60s",
    errors: Annotated[Errors, typer.Option(
        "--errors", help="Bad input: strict (fail), replace (invalid UTF-8 as U+FFFD), skip (bad "
                         "JSONL / Parquet rows, counted).",
                    rich_help_panel="Inputs")] = Errors.strict,
    max_oov_rate: Annotated[float, typer.Option(
        "--max-oov-rate", help="Warn when an input's share of OOVs (not counting a literal <unk> "
                               "in the text) is above this (1: never).")] = 0.05,
    progress: Annotated[Optional[bool], typer.Option(
        "--progress/--no-progress", help="Progress on stderr (default: on unless -q).")
    ] = None,
    chunk_tokens: Annotated[int, typer.Option(
        "--chunk-tokens", help="Tokens per stream per model call (memory: batch x chunk-tokens).",
                          rich_help_panel="Performance")] = 2048,
    batch: Annotated[int, typer.Option(
        "--batch", help="Parallel streams per model call.", rich_help_panel="Performance")] = 16,
    engine: Annotated[Engine, typer.Option(
        "--engine", help="auto: numpy for small inputs (no numba start-up); the two agree to "
                         "~1e-6.", rich_help_panel="Performance")] = Engine.auto,
    mix: Annotated[Optional[str], typer.Option(
        "--mix", help="Interpolate with this KenLM model (ARPA or binary), token by token: L P_rnn"
                      " + (1-L) P_ngram. Needs pip install 'streamlm\\[kenlm]'.",
                 rich_help_panel="Mixing with KenLM")] = None,
    mix_lambda: Annotated[Optional[str], typer.Option(
        "--lambda", help="L, the RNN's weight (0 to 1), or auto: tuned on --tune-on.",
                    rich_help_panel="Mixing with KenLM")] = None,
    tune_on: Annotated[Optional[str], typer.Option(
        "--tune-on", help="Held-out text to tune --lambda auto (or --dynamic) on.",
                     rich_help_panel="Mixing with KenLM")
    ] = None,
    dynamic: Annotated[Optional[str], typer.Option(
        "--dynamic", metavar="rms|sgd|auto",
        help="Adapt as it scores: Krause's rms, Mikolov's sgd, or auto (tuned on "
             "--tune-on).",
        rich_help_panel="Dynamic evaluation")
    ] = None,
    dynamic_lr: Annotated[Optional[float], typer.Option(
        "--dynamic-lr", help="The step size (default: rms "
                             f"{DYNAMIC_DEFAULTS['rms'][0]:g}, sgd "
                             f"{DYNAMIC_DEFAULTS['sgd'][0]:g}).",
        rich_help_panel="Dynamic evaluation")] = None,
    dynamic_decay: Annotated[Optional[float], typer.Option(
        "--dynamic-decay", help="The pull toward the trained weights per step (default: "
                                f"rms {DYNAMIC_DEFAULTS['rms'][1]:g}, sgd "
                                f"{DYNAMIC_DEFAULTS['sgd'][1]:g}).",
        rich_help_panel="Dynamic evaluation")] = None,
    dynamic_segment: Annotated[int, typer.Option(
        "--dynamic-segment", help="Tokens per step, from each stream's (or line's, "
                                  "document's) start.", rich_help_panel="Dynamic evaluation")
    ] = DYNAMIC_SEGMENT,
    dynamic_stats: Annotated[Optional[str], typer.Option(
        "--dynamic-stats", help="RMS statistics of --dynamic rms: read, or measured "
                                "and written here.",
        rich_help_panel="Dynamic evaluation")] = None,
    dynamic_stats_on: Annotated[Optional[str], typer.Option(
        "--dynamic-stats-on", metavar="FILE",
        help="Measure them on this text (best: training text), not --tune-on.",
        rich_help_panel="Dynamic evaluation")
    ] = None,
    save_adapted: Annotated[Optional[str], typer.Option(
        "--save-adapted", help="Write the adapted model here (the input is never "
                               "changed).", rich_help_panel="Dynamic evaluation")
    ] = None,
    compare_static: Annotated[bool, typer.Option(
        "--compare-static", help="Also score the same tokens with the trained weights, in "
                                 "the summary.", rich_help_panel="Dynamic evaluation")] = False,
    dask: Annotated[Optional[str], typer.Option(
        "--dask", help="A scheduler (tcp://host:8786) or local:N: one task per input; with "
                       "--output DIR, a Parquet file each, and a rerun skips finished ones. Needs "
                       "pip install 'streamlm\\[dask]'.", rich_help_panel="Cluster")] = None,
    threads: Threads = None,
) -> None:
    """Score text, documents or shards: exact perplexity, the state carried across chunks."""
    use_threads(threads)
    from streamlm.jobs.metrics import format_summary
    from streamlm.options import ScoreOptions

    cut = None
    if cutoffs is not None:
        from streamlm.jobs.report import load_cutoffs

        cut = load_cutoffs(cutoffs)
    opts = ScoreOptions(reset=reset, level=level, chunk_tokens=chunk_tokens, batch=batch,
                        errors=errors, column=column, text_field=text_field,
                        text_column=text_column, engine=engine,
                        checkpoint_every=checkpoint_every, keep=keep or (),
                        cutoffs=None if cut is None else cut.values,
                        bucket_field="perplexity" if cut is None else cut.field,
                        max_oov_rate=None if max_oov_rate >= 1 else max_oov_rate,
                        mix=mix, mix_lambda=mix_lambda, tune_on=tune_on, dynamic=dynamic,
                        dynamic_lr=dynamic_lr, dynamic_decay=dynamic_decay,
                        dynamic_segment=dynamic_segment, dynamic_stats=dynamic_stats,
                        dynamic_stats_on=dynamic_stats_on)
    failed: list[dict] = []
    to_stdout = output == "-"
    from streamlm.jobs.score import resume_advice

    doing("scoring", resume_advice(checkpoint, dask, output))
    if dask is not None:
        from streamlm.jobs.distributed import score_dask

        if split_buckets is not None or to_stdout:
            from streamlm.errors import UsageError

            raise UsageError("--dask writes one Parquet file per input into --output DIR; "
                             "--split-buckets and --output - run without --dask")
        res = score_dask(model, inputs, dask, opts, output_dir=output,
                         progress=_dask_progress)
        summary, failed = res.summary, res.failed
    else:
        from streamlm.cli.progress import ScoreProgress
        from streamlm.jobs.score import score

        show = progress if progress is not None else log.isEnabledFor(logging.INFO)
        with ScoreProgress(show) as report:
            summary = score(model, inputs, opts, output=output, checkpoint=checkpoint,
                            split_buckets=split_buckets, progress=report,
                            save_adapted=save_adapted, compare_static=compare_static).summary
    if to_stdout:  # stdout holds the records: the summary goes to stderr, or nowhere
        if not as_json:
            sys.stderr.write(format_summary(summary))
    elif as_json:
        print_json(summary)
    else:
        sys.stdout.write(format_summary(summary))
        sys.stdout.flush()
    if failed:
        sys.stderr.write(f"streamlm: error: {len(failed)} of {len(inputs)} inputs failed "
                         f"(first: {failed[0]['error']})\n")
        raise typer.Exit(4)


app.command("query")(query_cmd)
app.command("report")(report_cmd)


def _dask_progress(ev: dict) -> None:
    if ev.get("error"):
        log.error("streamlm: shard failed: %s", ev["error"])
    else:
        log.info("[%d/%d] scored %s", ev["done"], ev["total"], ev["path"])


@app.command("train")
def train_cmd(
    shards: Annotated[list[str], typer.Argument(
        help="A directory made by streamlm prepare, or Parquet / Arrow shards (then --vocab).")],
    out: Annotated[str, typer.Option(
        "--out", "-o", help="Model file to write (.npz): the best by valid ppl; the checkpoint "
                            "goes beside it (<name>.ckpt.npz).", rich_help_panel="Data")],
    valid: Annotated[Optional[list[str]], typer.Option(
        "--valid", help="Validation shards: exact ppl after each epoch.",
                   rich_help_panel="Data")] = None,
    vocab: Annotated[Optional[str], typer.Option(
        "--vocab", help="Vocabulary file, for raw Parquet / Arrow shards.", rich_help_panel="Data")
    ] = None,
    embed: Annotated[int, typer.Option("--embed", help="Embedding size D.",
                                                  rich_help_panel="Model")] = 256,
    hidden: Annotated[int, typer.Option("--hidden", help="Hidden size H.",
                                                    rich_help_panel="Model")] = 256,
    cell: Annotated[CellKind, typer.Option(
        "--cell", help="The recurrent cell: rnn (tanh, the book's ch. 5), lstm (ch. 6) or gru "
                       "(PyTorch's).", rich_help_panel="Model")] = CellKind.rnn,
    layers: Annotated[int, typer.Option(
        "--layers", help="Stacked recurrent layers.", rich_help_panel="Model")] = 1,
    init_range: Annotated[float, typer.Option(
        "--init-range", help="Every weight uniform(-R, R) (Zaremba: 0.05; PyTorch's example: "
                             "0.1); 0: Xavier normal, the embedding N(0, 0.01).",
        rich_help_panel="Model")] = 0.0,
    batch: Annotated[int, typer.Option("--batch", help="Parallel streams N per batch.",
                                                  rich_help_panel="Training")] = 32,
    bptt: Annotated[int, typer.Option("--bptt", help="Time steps T per truncated-BPTT block.",
                                                rich_help_panel="Training")
    ] = 35,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train.",
                                                    rich_help_panel="Training")] = 10,
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", help="Stop after this many minutes (this run); the model is validated and"
                              " saved first.", rich_help_panel="Training")] = None,
    optimizer: Annotated[Optimizer, typer.Option(
        "--optimizer", help="The book's SGD or Adam.",
                       rich_help_panel="Optimisation")] = Optimizer.adam,
    lr: Annotated[float, typer.Option("--lr", help="Initial learning rate.",
                                              rich_help_panel="Optimisation")] = 0.002,
    clip: Annotated[float, typer.Option(
        "--clip", help="Clip the gradient's global norm to this (0: no clipping).",
                  rich_help_panel="Optimisation")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and dropout.",
                                                rich_help_panel="Training")
    ] = 0,
    dropout: Annotated[float, typer.Option(
        "--dropout", help="Dropout after the embedding, between layers and before the output "
                          "layer (not recurrent).", rich_help_panel="Model")
    ] = 0.25,
    variational: Annotated[bool, typer.Option(
        "--variational/--no-variational",
        help="The same dropout mask at every step of a stream (Gal and Ghahramani).",
        rich_help_panel="Model")] = False,
    tie_weights: Annotated[bool, typer.Option(
        "--tie-weights/--no-tie-weights",
        help="Share the embedding with the output layer (--embed == --hidden).",
        rich_help_panel="Model")
    ] = False,
    softmax: Annotated[Softmax, typer.Option(
        "--softmax", help="full, or Mikolov's class-factored softmax (exact; O(H (C + V/C)) a "
                          "token).", rich_help_panel="Model")
    ] = Softmax.full,
    classes: Annotated[Optional[int], typer.Option(
        "--classes", help="Classes C of --softmax class (default: about sqrt(V)).",
                     rich_help_panel="Model")] = None,
    old_classes: Annotated[bool, typer.Option(
        "--old-classes", help="Bin classes by count/total, not sqrt(count/total) (rnnlm).",
                         rich_help_panel="Model")] = False,
    ema: Annotated[float, typer.Option(
        "--ema", help="Average the weights with this decay per step (0.999; 0: off) for validation"
                      " and the model file.", rich_help_panel="Optimisation")
    ] = 0.0,
    anneal: Annotated[Anneal, typer.Option(
        "--anneal", help="plateau: lr x --lr-decay when the valid ppl does not improve; step: "
                         "lr x --lr-decay after every epoch from --decay-after on (Zaremba); "
                         "mikolov: rnnlm's halving (--min-improvement).",
        rich_help_panel="Optimisation")
    ] = Anneal.plateau,
    lr_decay: Annotated[Optional[float], typer.Option(
        "--lr-decay", help="The factor in (0, 1] --anneal multiplies the lr by (default: "
                           "plateau 0.25, step 0.5, mikolov 0.5).",
        rich_help_panel="Optimisation")
    ] = None,
    decay_after: Annotated[Optional[int], typer.Option(
        "--decay-after", help="--anneal step: epochs at the initial lr (default 4; medium "
                              "model: 6).", rich_help_panel="Optimisation")
    ] = None,
    min_improvement: Annotated[float, typer.Option(
        "--min-improvement", help="--anneal mikolov's threshold (rnnlm's -min-improvement).",
                             rich_help_panel="Optimisation")
    ] = 1.003,
    log_interval: Annotated[int, typer.Option(
        "--log-interval", help="Steps between progress lines / log records.")] = 100,
    log_file: Annotated[Optional[str], typer.Option(
        "--log", help="Write a JSON record per log interval and epoch to this .jsonl.")
    ] = None,
    plot: Annotated[Optional[str], typer.Option(
        "--plot", help="Draw the perplexity curves to this PNG (needs matplotlib).")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", help="Steps between checkpoints (0: only at epoch ends).",
                              rich_help_panel="Resume")
    ] = 1000,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the checkpoint beside --out (same options).",
                    rich_help_panel="Resume")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a summary as one JSON object on stdout.")] = False,
    threads: Threads = None,
) -> None:
    """Train the RNN LM with truncated BPTT; keep the best model by validation perplexity."""
    use_threads(threads)
    from streamlm.cli.progress import TrainProgress
    from streamlm.jobs.train import TrainConfig, train

    cfg = TrainConfig(embed=embed, hidden=hidden, batch=batch, bptt=bptt, epochs=epochs,
                      max_minutes=max_minutes, optimizer=optimizer, lr=lr, clip=clip, seed=seed,
                      dropout=dropout, variational=variational, cell=cell, layers=layers,
                      init_range=init_range,
                      tie_weights=tie_weights, softmax=softmax,
                      classes=classes, old_classes=old_classes, log_interval=log_interval,
                      checkpoint_every=checkpoint_every, ema=ema, anneal=anneal,
                      min_improvement=min_improvement, lr_decay=lr_decay,
                      decay_after=decay_after)
    from streamlm.jobs.train import resume_advice

    doing("training", lambda: resume_advice(out))
    with TrainProgress(enabled=log.isEnabledFor(logging.INFO)) as reporter:
        summary = train(cfg, shards, out, valid_paths=valid, vocab_path=vocab,
                        log_path=log_file, plot_path=plot, resume=resume, progress=reporter)
    if as_json:
        print_json({k: v for k, v in summary.items() if k != "history"})


app.command("generate")(generate_cmd)


# ------------------------------------------------------------------- main --
def hoist_global_flags(argv: list[str]) -> list[str]:
    """``streamlm score ... -q`` as ``streamlm -q score ...`` (see streamlm.cli.console)."""
    from streamlm.cli.console import hoist_global_flags as hoist

    return hoist(app, argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (streamlm.cli.console.run): one stderr line for a StreamlmError."""
    from streamlm.cli.console import run

    run(app, argv)
