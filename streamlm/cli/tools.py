"""The smaller commands of the ``streamlm`` CLI: query, report, generate, demo-corpus.

Each is a thin typer command over one library function; ``streamlm.cli.app`` registers
them on its app (the order of ``--help`` is the order there).
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from streamlm.cli.console import Threads, print_json, use_threads
from streamlm.options import Engine, Verbosity

log = logging.getLogger("streamlm")


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
    from streamlm.jobs.demo import generate_demo_corpus

    info = generate_demo_corpus(out, sentences=sentences, seed=seed)
    if json_out:
        print_json(info)


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
        "--engine", help="auto starts a small input on numpy, without numba's start-up.",
                    rich_help_panel="Performance")
    ] = Engine.auto,
    threads: Threads = None,
) -> None:
    """KenLM's query: score stdin, one sentence per line, and print query's output."""
    use_threads(threads)
    from streamlm.cli.query import query

    for text in query(model, "-", verbosity, not no_context, carry, engine):
        sys.stdout.write(text)
        sys.stdout.flush()


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
    from streamlm.jobs.report import (
        PERCENTILES,
        format_report,
        load_cutoffs,
        report,
        save_cutoffs,
    )
    from streamlm.options import parse_numbers

    more = parse_numbers(percentiles, "--percentiles") if percentiles else []
    cuts = parse_numbers(buckets, "--buckets")
    if plot is not None:
        from streamlm.jobs.plots import check_available

        check_available()
    rep = report(scores, percentiles=sorted({*PERCENTILES, *more}), bucket_percentiles=cuts,
                 field=field, cutoffs=load_cutoffs(use_cutoffs) if use_cutoffs else None)
    values = rep.pop("_values")
    if cutoffs is not None:
        save_cutoffs(cutoffs, rep)
        log.info("wrote %s", cutoffs)
    if plot is not None:
        from streamlm.jobs.plots import plot_perplexity_histogram

        plot_perplexity_histogram(values, rep["cutoffs"]["values"], list(rep["buckets"]),
                                  plot, title=", ".join(scores))
        log.info("wrote %s", plot)
    if as_json:
        print_json(rep)
    else:
        sys.stdout.write(format_report(rep))
        sys.stdout.flush()


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
    threads: Threads = None,
) -> None:
    """Sample text from a trained model; <eos> prints as a newline, pieces as their text."""
    use_threads(threads)
    from streamlm.jobs.generate import sample_text

    sys.stdout.writelines(sample_text(model, words=words, temperature=temperature, seed=seed,
                                      prompt=prompt))  # streamed, a piece at a time
    sys.stdout.flush()
