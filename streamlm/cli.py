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
