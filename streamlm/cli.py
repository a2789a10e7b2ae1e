"""The ``streamlm`` command line: thin typer commands over library functions.

Every command hands off to one library function. Errors that come from the
user's input (:class:`streamlm.errors.StreamlmError`) become exactly one line
on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional

import typer
from typing import Annotated

from streamlm import __version__
from streamlm.errors import StreamlmError

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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")] = False,
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
        help="Text files (plain, .gz, .bz2, .xz) or '-' for stdin; one sentence per line.")],
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
    docs: Annotated[str, typer.Option(
        "--docs", help="Document boundaries: none | blank-line.")] = "none",
    errors: Annotated[str, typer.Option(
        "--errors", help="Invalid UTF-8: strict (fail) | replace.")] = "strict",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the manifest as one JSON object on stdout.")] = False,
) -> None:
    """Turn text into a vocabulary and Parquet token shards (DIR/manifest.json last)."""
    from streamlm.data import prepare

    m = prepare(inputs, out, vocab_size=vocab_size, min_count=min_count, vocab_path=vocab,
                shard_tokens=shard_tokens, docs=docs, errors=errors)
    if as_json:
        print_json(m)
    else:
        log.info("prepared %s: %s tokens in %d shard(s), vocabulary %s words, %s <unk>",
                 out, f"{m['num_tokens']:,}", len(m["shards"]), f"{m['vocab']['size']:,}",
                 f"{m['unk_tokens']:,}")


@app.command("demo-corpus")
def demo_corpus_cmd(
    out: Annotated[str, typer.Argument(help="Directory to write train.txt, valid.txt, test.txt.")] = "data/demo",
    sentences: Annotated[int, typer.Option(min=30, help="Total sentences (80/10/10 split).")] = 20000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Generate the synthetic demo corpus (a seeded toy grammar) as plain text files."""
    from streamlm.demo import generate_demo_corpus

    info = generate_demo_corpus(out, sentences=sentences, seed=seed)
    if json_out:
        print_json(info)


# ------------------------------------------------------------------- main --
def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning StreamlmError into one stderr line."""
    try:
        app(args=argv, standalone_mode=False)
    except StreamlmError as e:
        sys.stderr.write(f"streamlm: error: {e}\n")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("streamlm: aborted\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.stderr.write("streamlm: interrupted\n")
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show(file=sys.stderr)
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, BrokenPipeError):
            sys.exit(1)
        if isinstance(e, MemoryError):
            sys.stderr.write("streamlm: error: out of memory\n")
            sys.exit(1)
        if isinstance(e, OSError):
            name = getattr(e, "filename", None)
            where = f"{name}: " if name else ""
            sys.stderr.write(f"streamlm: error: {where}{e.strerror or e}\n")
            sys.exit(1)
        raise
