"""The ``streamlm`` command line: thin typer commands over library functions.

Every command hands off to one library function. Errors that come from the
user's input (:class:`streamlm.errors.StreamlmError`) become exactly one line
on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Optional

import typer

from streamlm import __version__
from streamlm.console import flags_look_like_flags
from streamlm.options import (
    Anneal,
    Docs,
    Engine,
    Errors,
    Level,
    Optimizer,
    PieceModel,
    Reset,
    Softmax,
    Verbosity,
)

flags_look_like_flags()

app = typer.Typer(
    name="streamlm",
    help="Numba-compiled streaming RNN language model: prepare shards, train, score, generate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    level = logging.DEBUG if verbose else (logging.ERROR if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def print_json(obj) -> None:
    """Print exactly one JSON object on stdout (``--json``)."""
    sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- commands --
# (each command: Annotated typer options, then one call into the library)


@app.command("prepare")
def prepare_cmd(
    inputs: Annotated[list[str], typer.Argument(
        help="Text files (plain, .gz, .bz2, .xz) or '-' for stdin, one sentence per line; "
             "JSONL documents (.jsonl, .ndjson, .json, compressed too); Parquet / Arrow "
             "files of documents (a text column; list<int> ids with --vocab). A directory "
             "or quoted glob of document files is its files, sorted.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory.")],
    vocab_size: Annotated[Optional[int], typer.Option(
        "--vocab-size", help="Keep the N most frequent words (incl. <unk>, <eos>).")] = None,
    min_count: Annotated[int, typer.Option(
        "--min-count", help="Drop words seen fewer than K times.")] = 1,
    vocab: Annotated[Optional[str], typer.Option(
        "--vocab", help="Use this vocabulary file (one word per line) instead of building one.")
    ] = None,
    shard_tokens: Annotated[int, typer.Option(
        "--shard-tokens", help="Tokens per Parquet shard.")] = 1_000_000,
    docs: Annotated[Docs, typer.Option(
        "--docs", help="Document boundaries: none, or blank lines between documents.")
    ] = Docs.none,
    errors: Annotated[Errors, typer.Option(
        "--errors", help="Bad input: strict (fail), replace (invalid UTF-8 becomes U+FFFD) "
                         "or skip (bad JSONL / Parquet rows, counted).")] = Errors.strict,
    text_field: Annotated[str, typer.Option(
        "--text-field", help="The text field of JSONL records (a dotted path: meta.content)."
    )] = "text",
    text_column: Annotated[Optional[str], typer.Option(
        "--text-column", help="The text column of Parquet / Arrow documents (default: text)."
    )] = None,
    column: Annotated[Optional[str], typer.Option(
        "--column", help="A list<int> token id column of Parquet / Arrow documents "
                         "(default: input_ids); needs --vocab.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", help="Subword tokens: 'sentencepiece' trains a SentencePiece model on "
                            "the input (byte fallback: nothing is OOV), FILE.model uses that "
                            "one; its pieces are the vocabulary. Needs pip install "
                            "'streamlm\\[sentencepiece]'. Default: words.")] = None,
    pieces: Annotated[Optional[int], typer.Option(
        "--pieces", help="Pieces of the trained model (default 16000).")] = None,
    piece_model: Annotated[Optional[PieceModel], typer.Option(
        "--piece-model", help="The trained model (default unigram).")] = None,
    sample_lines: Annotated[Optional[int], typer.Option(
        "--sample-lines", help="Train on a uniform sample of this many lines of a larger "
                               "input (SentencePiece's own sampling; default 1000000).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the manifest as one JSON object on stdout.")] = False,
) -> None:
    """Turn text or documents into a vocabulary and Parquet token shards (manifest last)."""
    from streamlm.prepare import prepare

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


@app.command("demo-corpus")
def demo_corpus_cmd(
    out: Annotated[str, typer.Argument(
        help="Directory to write train.txt, valid.txt, test.txt.")] = "data/demo",
    sentences: Annotated[int, typer.Option(
        min=30, help="Total sentences (80/10/10 split).")] = 20000,
    seed: Annotated[int, typer.Option(
        help="Random seed: the same seed gives the same files.")] = 0,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Generate the synthetic demo corpus (a seeded toy grammar) as plain text files."""
    from streamlm.demo import generate_demo_corpus

    info = generate_demo_corpus(out, sentences=sentences, seed=seed)
    if json_out:
        print_json(info)


@app.command("score")
def score_cmd(
    model: Annotated[str, typer.Argument(help="Model file (.npz) written by streamlm train.")],
    inputs: Annotated[list[str], typer.Argument(
        help="Text files (plain, .gz, .bz2, .xz) or '-' for stdin; JSONL documents (.jsonl, "
             ".ndjson, .json, also .gz/.bz2/.xz/.zst); Parquet or Arrow files of documents (a "
             "text column, or list<int> token ids: one row is one document) or of token "
             "shards; prepared directories. A directory or quoted glob of document files "
             "is its files, sorted. Each input is scored on its own and summed into the "
             "total.")],
    reset: Annotated[Reset, typer.Option(
        "--reset", help="Where the state goes back to zero. auto: doc when every input is "
                        "documents (JSONL, Parquet rows), else none; none: each input is one "
                        "stream (state carried across lines); line: every line alone (like "
                        "KenLM query); doc: every document alone (a row, or blank-line "
                        "separated text, or the shards' document boundaries).")
    ] = Reset.auto,
    chunk_tokens: Annotated[int, typer.Option(
        "--chunk-tokens", help="Tokens per stream per model call; memory is bounded by "
                               "batch x chunk-tokens whatever the input size.")] = 2048,
    batch: Annotated[int, typer.Option(
        "--batch", help="Parallel streams per model call (inputs with --reset none, "
                        "lines/documents otherwise); each row keeps its own state.")] = 16,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the summary as exactly one JSON object on stdout (with "
                       "--output -: no summary).")] = False,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Write per-unit scores here, by suffix: .parquet, .jsonl "
                               "(.ndjson, .json) or .csv; '-' streams JSONL to stdout (the "
                               "summary then goes to stderr). A regular file is written "
                               "atomically at the end; a FIFO or device is written to.")
    ] = None,
    level: Annotated[Optional[Level], typer.Option(
        "--level", help="Unit of --output records (default: doc with --reset doc, else "
                        "line).")] = None,
    keep: Annotated[Optional[str], typer.Option(
        "--keep", help="Input columns or JSONL fields to copy into the per-document "
                       "records, comma-separated (id,url), to join the scores back.")
    ] = None,
    cutoffs: Annotated[Optional[str], typer.Option(
        "--cutoffs", help="Cut-offs file of streamlm report: adds a bucket column (head, "
                          "middle, tail).")] = None,
    split_buckets: Annotated[Optional[str], typer.Option(
        "--split-buckets", help="With --cutoffs: copy the input rows, unchanged, into "
                                "DIR/head.parquet, middle, tail (.jsonl for JSONL "
                                "inputs), in input order.")] = None,
    text_field: Annotated[str, typer.Option(
        "--text-field", help="The text field of JSONL records; a dotted path such as "
                             "meta.content reaches into objects.")] = "text",
    text_column: Annotated[Optional[str], typer.Option(
        "--text-column", help="The text column of Parquet / Arrow documents (default: "
                              "text, when the file has one).")] = None,
    column: Annotated[Optional[str], typer.Option(
        "--column", help="The token id column of Parquet / Arrow inputs (default: "
                         "token_id, else input_ids).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", help="Save progress to this file; rerunning the same command "
                             "resumes from it (removed on success).")] = None,
    checkpoint_every: Annotated[str, typer.Option(
        "--checkpoint-every", help="How often to checkpoint: a duration (60s, 5m) or a "
                                   "token count (500000).")] = "60s",
    errors: Annotated[Errors, typer.Option(
        "--errors", help="Bad input. strict: fail with one line naming the file and "
                         "position; replace: invalid UTF-8 in text becomes U+FFFD; skip: "
                         "skip bad JSONL / Parquet rows (invalid JSON, no text field, a "
                         "null) and count them; text is then strict.")] = Errors.strict,
    max_oov_rate: Annotated[float, typer.Option(
        "--max-oov-rate", help="Warn when an input's share of <unk> tokens is above this "
                               "(1 never warns).")] = 0.05,
    progress: Annotated[Optional[bool], typer.Option(
        "--progress/--no-progress", help="Progress on stderr (default: on unless -q).")
    ] = None,
    engine: Annotated[Engine, typer.Option(
        "--engine", help="auto skips numba's ~1 s start-up on small inputs, stdin too "
                         "(numba and numpy agree to ~1e-6).")] = Engine.auto,
    mix: Annotated[Optional[str], typer.Option(
        "--mix", help="Interpolate with this KenLM n-gram model (ARPA or build_binary "
                      "file), token by token: L P_rnn + (1-L) P_ngram. Needs pip install "
                      "'streamlm\\[kenlm]'.")] = None,
    mix_lambda: Annotated[Optional[str], typer.Option(
        "--lambda", help="L, the RNN's weight in --mix (0 to 1), or auto: tuned on "
                         "--tune-on.")] = None,
    tune_on: Annotated[Optional[str], typer.Option(
        "--tune-on", help="Held-out text to tune --lambda auto on (lowest perplexity).")
    ] = None,
    dask: Annotated[Optional[str], typer.Option(
        "--dask", help="Score on a Dask cluster, one task per input: a scheduler address "
                       "(tcp://host:8786) or local:N for N local worker processes. With "
                       "--output DIR, one Parquet file per input; a rerun skips finished "
                       "inputs. Needs pip install 'streamlm\\[dask]'.")] = None,
) -> None:
    """Score text, documents or shards: exact perplexity, the state carried across chunks."""
    from streamlm.metrics import format_summary
    from streamlm.options import ScoreOptions

    cut = None
    if cutoffs is not None:
        from streamlm.report import load_cutoffs

        cut = load_cutoffs(cutoffs)
    opts = ScoreOptions(reset=reset, level=level, chunk_tokens=chunk_tokens, batch=batch,
                        errors=errors, column=column, text_field=text_field,
                        text_column=text_column, engine=engine,
                        checkpoint_every=checkpoint_every, keep=keep or (),
                        cutoffs=None if cut is None else cut.values,
                        bucket_field="perplexity" if cut is None else cut.field,
                        max_oov_rate=None if max_oov_rate >= 1 else max_oov_rate,
                        mix=mix, mix_lambda=mix_lambda, tune_on=tune_on)
    failed: list[dict] = []
    to_stdout = output == "-"
    if dask is not None:
        from streamlm.distributed import score_dask

        if split_buckets is not None or to_stdout:
            from streamlm.errors import UsageError

            raise UsageError("--dask writes one Parquet file per input into --output DIR; "
                             "--split-buckets and --output - run without --dask")
        res = score_dask(model, inputs, dask, opts, output_dir=output,
                         progress=_dask_progress)
        summary, failed = res.summary, res.failed
    else:
        from streamlm.progress import ScoreProgress
        from streamlm.score import score

        show = progress if progress is not None else log.isEnabledFor(logging.INFO)
        with ScoreProgress(show) as report:
            summary = score(model, inputs, opts, output=output, checkpoint=checkpoint,
                            split_buckets=split_buckets, progress=report).summary
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


@app.command("query")
def query_cmd(
    model: Annotated[str, typer.Argument(help="Model file (.npz) written by streamlm train.")],
    verbosity: Annotated[Optional[list[Verbosity]], typer.Option(
        "--verbosity", "-v", metavar="summary|sentence|word",
        help="What to print, as KenLM's query -v (repeatable): word (word=id length "
             "log10prob), sentence (Total: <log10> OOV: <n>), summary (perplexities, OOVs, "
             "tokens). Default: all three.")] = None,
    no_context: Annotated[bool, typer.Option(
        "-n", "--no-sentence-context", help="Do not wrap lines in <s> and </s> (KenLM's -n): "
                                            "each line starts from a null context.")] = False,
    carry: Annotated[bool, typer.Option(
        "--carry", help="Keep the state across lines: the text as one stream (KenLM starts "
                        "every line again).")] = False,
    engine: Annotated[Engine, typer.Option(
        "--engine", help="auto starts a small input on numpy, without numba's start-up.")
    ] = Engine.auto,
) -> None:
    """KenLM's query: score stdin, one sentence per line, and print query's output."""
    from streamlm.query import query

    for text in query(model, "-", verbosity, not no_context, carry, engine):
        sys.stdout.write(text)
        sys.stdout.flush()


@app.command("report")
def report_cmd(
    scores: Annotated[list[str], typer.Argument(
        help="Score files of streamlm score --output (.parquet, .jsonl, .csv), per document "
             "or per line.")],
    percentiles: Annotated[Optional[str], typer.Option(
        "--percentiles", help="More percentiles to print, comma-separated (95,99); p10 "
                              "... p90 always.")] = None,
    buckets: Annotated[str, typer.Option(
        "--buckets", help="The percentiles that cut the buckets (CCNet: 30,60 gives head, "
                          "middle, tail).")] = "30,60",
    field: Annotated[str, typer.Option(
        "--field", help="perplexity, or perplexity_excl_oov.")] = "perplexity",
    cutoffs: Annotated[Optional[str], typer.Option(
        "--cutoffs", help="Write the cut-offs to this JSON file, for streamlm score "
                          "--cutoffs / --split-buckets.")] = None,
    use_cutoffs: Annotated[Optional[str], typer.Option(
        "--use-cutoffs", help="Count the buckets with the cut-offs of this file (from "
                              "another corpus) instead of this corpus's percentiles.")
    ] = None,
    plot: Annotated[Optional[str], typer.Option(
        "--plot", help="Draw a histogram of per-document perplexity (log x) with the "
                       "cut-offs to this PNG (needs matplotlib).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the report as one JSON object on stdout.")] = False,
) -> None:
    """Percentiles, mean, corpus perplexity, OOV rate and CCNet buckets of scored documents."""
    from streamlm.options import parse_numbers
    from streamlm.report import (
        PERCENTILES,
        format_report,
        load_cutoffs,
        report,
        save_cutoffs,
    )

    more = parse_numbers(percentiles, "--percentiles") if percentiles else []
    cuts = parse_numbers(buckets, "--buckets")
    if plot is not None:
        from streamlm.plots import check_available

        check_available()
    rep = report(scores, percentiles=sorted({*PERCENTILES, *more}), bucket_percentiles=cuts,
                 field=field, cutoffs=load_cutoffs(use_cutoffs) if use_cutoffs else None)
    values = rep.pop("_values")
    if cutoffs is not None:
        save_cutoffs(cutoffs, rep)
        log.info("wrote %s", cutoffs)
    if plot is not None:
        from streamlm.plots import plot_perplexity_histogram

        plot_perplexity_histogram(values, rep["cutoffs"]["values"], list(rep["buckets"]),
                                  plot, title=", ".join(scores))
        log.info("wrote %s", plot)
    if as_json:
        print_json(rep)
    else:
        sys.stdout.write(format_report(rep))
        sys.stdout.flush()


def _dask_progress(ev: dict) -> None:
    if ev.get("error"):
        log.error("streamlm: shard failed: %s", ev["error"])
    else:
        log.info("[%d/%d] scored %s", ev["done"], ev["total"], ev["path"])


@app.command("train")
def train_cmd(
    shards: Annotated[list[str], typer.Argument(
        help="A directory made by `streamlm prepare`, or Parquet/Arrow files (then --vocab).")],
    out: Annotated[str, typer.Option("--out", "-o", help=(
        "Model file to write (.npz); holds the best model by valid ppl. The checkpoint "
        "goes next to it as <name>.ckpt.npz."))],
    valid: Annotated[Optional[list[str]], typer.Option(
        "--valid", help="Validation shards (a prepared directory); exact ppl after each "
                        "epoch, lr / 4 when it does not improve.")] = None,
    vocab: Annotated[Optional[str], typer.Option(
        "--vocab", help="Vocabulary file, required when SHARDS are raw Parquet/Arrow files.")
    ] = None,
    embed: Annotated[int, typer.Option("--embed", help="Embedding size D.")] = 256,
    hidden: Annotated[int, typer.Option("--hidden", help="Hidden size H.")] = 256,
    batch: Annotated[int, typer.Option("--batch", help="Parallel streams N per batch.")] = 32,
    bptt: Annotated[int, typer.Option("--bptt", help="Time steps T per truncated-BPTT block.")
    ] = 35,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train.")] = 10,
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", help="Stop after this many minutes of wall time (this invocation); "
                              "the model is validated and saved first.")] = None,
    optimizer: Annotated[Optimizer, typer.Option(
        "--optimizer", help="The book's SGD or Adam.")] = Optimizer.adam,
    lr: Annotated[float, typer.Option("--lr", help="Initial learning rate.")] = 0.002,
    clip: Annotated[float, typer.Option(
        "--clip", help="Clip the gradient's global norm to this (0: no clipping).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and dropout.")
    ] = 0,
    dropout: Annotated[float, typer.Option(
        "--dropout", help="Dropout rate on the embedding and RNN outputs (not recurrent).")
    ] = 0.25,
    tie_weights: Annotated[bool, typer.Option(
        "--tie-weights/--no-tie-weights",
        help="Share the embedding with the output projection (needs --embed == --hidden).")
    ] = False,
    softmax: Annotated[Softmax, typer.Option(
        "--softmax", help="The output layer: a softmax over all V words, or Mikolov's "
                          "class-factored softmax (exact, O(H (C + V/C)) per token).")
    ] = Softmax.full,
    classes: Annotated[Optional[int], typer.Option(
        "--classes", help="Classes C of --softmax class, by frequency binning "
                          "(default: about sqrt(V)).")] = None,
    old_classes: Annotated[bool, typer.Option(
        "--old-classes", help="Bin --softmax class classes by count/total instead of "
                              "sqrt(count/total) (rnnlm's -old-classes).")] = False,
    ema: Annotated[float, typer.Option(
        "--ema", help="Keep an exponential moving average of the weights with this decay "
                      "per step (0.999; 0: off): validation and the model file use it.")
    ] = 0.0,
    anneal: Annotated[Anneal, typer.Option(
        "--anneal", help="When to lower the lr: plateau (/ 4 when the valid ppl does not "
                         "improve) or mikolov (rnnlm: halve every epoch once the valid entropy "
                         "gains less than --min-improvement, stop when it does so again).")
    ] = Anneal.plateau,
    min_improvement: Annotated[float, typer.Option(
        "--min-improvement", help="--anneal mikolov's threshold (rnnlm's -min-improvement).")
    ] = 1.003,
    log_interval: Annotated[int, typer.Option(
        "--log-interval", help="Steps between progress lines / log records.")] = 100,
    log_file: Annotated[Optional[str], typer.Option(
        "--log", help="Write one JSON record per log interval and per epoch to this .jsonl.")
    ] = None,
    plot: Annotated[Optional[str], typer.Option(
        "--plot", help="Draw the train/valid perplexity curves to this PNG (needs matplotlib).")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", help="Steps between checkpoints (0: only at epoch ends).")
    ] = 1000,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the checkpoint next to --out (same options).")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a summary as one JSON object on stdout.")] = False,
) -> None:
    """Train the RNN LM with truncated BPTT; keep the best model by validation perplexity."""
    from streamlm.progress import TrainProgress
    from streamlm.train import TrainConfig, train

    cfg = TrainConfig(embed=embed, hidden=hidden, batch=batch, bptt=bptt, epochs=epochs,
                      max_minutes=max_minutes, optimizer=optimizer, lr=lr, clip=clip, seed=seed,
                      dropout=dropout, tie_weights=tie_weights, softmax=softmax,
                      classes=classes, old_classes=old_classes, log_interval=log_interval,
                      checkpoint_every=checkpoint_every, ema=ema, anneal=anneal,
                      min_improvement=min_improvement)
    with TrainProgress() as reporter:
        summary = train(cfg, shards, out, valid_paths=valid, vocab_path=vocab,
                        log_path=log_file, plot_path=plot, resume=resume, progress=reporter)
    if as_json:
        print_json({k: v for k, v in summary.items() if k != "history"})


@app.command("generate")
def generate_cmd(
    model: Annotated[str, typer.Argument(help="A model file written by `streamlm train`.")],
    words: Annotated[int, typer.Option(
        "--words", "-n", help="Number of tokens to sample (words, or a subword model's "
                              "pieces).")] = 100,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="Softmax temperature (> 0; < 1 is more conservative).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same text).")] = 0,
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", help="Words to condition on (unknown words read as <unk>).")] = None,
) -> None:
    """Sample text from a trained model; <eos> prints as a newline, pieces as their text."""
    from streamlm.generate import sample_text

    sys.stdout.writelines(sample_text(model, words=words, temperature=temperature, seed=seed,
                                      prompt=prompt))  # streamed, a piece at a time
    sys.stdout.flush()


# ------------------------------------------------------------------- main --
def hoist_global_flags(argv: list[str]) -> list[str]:
    """``streamlm score ... -q`` as ``streamlm -q score ...`` (see streamlm.console)."""
    from streamlm.console import hoist_global_flags as hoist

    return hoist(app, argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (streamlm.console.run): one stderr line for a StreamlmError."""
    from streamlm.console import run

    run(app, argv)
