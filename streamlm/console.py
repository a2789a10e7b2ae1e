"""The process around the commands: argv as the commands expect it, and errors as one line.

:func:`run` is what the ``streamlm`` script runs (through ``streamlm.cli.main``):
``-q`` / ``-v`` after a command move in front of it, a
:class:`streamlm.errors.StreamlmError` becomes exactly one line on stderr and
its exit code, and click's usage errors, a broken pipe, a full disk or memory
become one line too, never a traceback.
"""

from __future__ import annotations

import gc
import sys

import typer

from streamlm.errors import StreamlmError


def flags_look_like_flags() -> None:
    """typer's rich help prints a "<bool>" type after every flag (--json <bool>): show
    no type for a flag, as click and every other tool do."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def hoist_global_flags(app, argv: list[str]) -> list[str]:
    """``streamlm score ... -q`` as ``streamlm -q score ...``: -q/-v anywhere after the
    command move in front of it (a value of an option that takes one stays put), unless
    the command has an option of that name itself (``query -v summary``)."""
    cmd = typer.main.get_command(app)  # (typer's vendored click: duck-typed below)
    out, moved, i, sub = [], [], 0, None
    while i < len(argv):
        a = argv[i]
        if sub is None:
            out.append(a)
            if not a.startswith("-"):
                sub = getattr(cmd, "commands", {}).get(a)
                if sub is None:
                    return argv  # unknown command: let click say so
            i += 1
            continue
        opt = next((p for p in sub.params if hasattr(p, "is_flag")
                    and a in p.opts + p.secondary_opts), None)
        if a in _GLOBAL_FLAGS and opt is None:
            moved.append(a)
        elif a == "--":
            out.extend(argv[i:])
            break
        else:
            out.append(a)
            if opt is not None and not opt.is_flag and i + 1 < len(argv):
                out.append(argv[i + 1])  # its value, whatever it looks like
                i += 1
        i += 1
    k = out.index(next(x for x in out if not x.startswith("-"))) if sub is not None else 0
    return out[:k] + moved + out[k:]


def run(app, argv: list[str] | None = None) -> None:
    """Run the typer ``app`` on ``argv`` (default: sys.argv), turning a StreamlmError
    into one stderr line and an exit code, never a traceback."""
    import os

    # see streamlm.numba_setup.light_cache_loads
    os.environ.setdefault("STREAMLM_FAST_START", "1")
    try:
        args = hoist_global_flags(app, sys.argv[1:] if argv is None else list(argv))
        try:
            app(args=args, standalone_mode=False)
        finally:
            # the work is done: what is alive now lives until the exit, so spare the
            # interpreter's last collections a walk over it (0.1-0.2 s with numba loaded)
            gc.freeze()
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
        # typer vendors its own click (typer._click), so match click's exceptions by
        # shape, not by class: a usage error has format_message() and exit_code
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            sys.stderr.write(f"streamlm: error: {e.format_message()} (see --help)\n")
            sys.exit(e.exit_code)
        if type(e).__name__ == "Exit" and hasattr(e, "exit_code"):
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
