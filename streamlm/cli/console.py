"""The process around the commands: argv as the commands expect it, and errors as one line.

:func:`run` is what the ``streamlm`` script runs (through ``streamlm.cli.app.main``):
``-q`` / ``-v`` after a command move in front of it, a
:class:`streamlm.errors.StreamlmError` becomes exactly one line on stderr and
its exit code, and click's usage errors, a broken pipe, a full disk or memory
become one line too, never a traceback.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
from typing import Annotated, NoReturn, Optional

import typer

from streamlm.errors import StreamlmError


def flags_look_like_flags() -> None:
    """typer's rich help prints a "<bool>" type after every flag (--json <bool>): show
    no type for a flag, as click and every other tool do.

    Only typer >= 0.29 asks ``TyperOption.display_type_rich`` for the type; older ones
    have no such method and print no type for a flag already (0.27-0.28 show "<int>",
    older ones click's INTEGER): there this does nothing. Calling it twice wraps once."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_streamlm_flags", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and getattr(self, "metavar", None) is None:
            return None
        return shown(self, ctx)

    display_type_rich._streamlm_flags = True
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


# What the running command is doing, for the line an interruption prints: set by the
# command (cli.py) before its work starts.
_doing: dict = {"what": None, "resume": None}
# The signal that interrupted the command (signal.SIGINT or SIGTERM), if one did.
_received: list[int] = []
_INTERRUPT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def doing(what: str, resume=None) -> None:
    """Say what the command is doing (``"scoring"``), and how to resume it if it is
    interrupted: ``resume`` is a callable returning that advice (or None when there
    is nothing to resume from), asked only when an interruption happens."""
    _doing["what"], _doing["resume"] = what, resume


def _on_signal(signum, frame) -> None:
    """SIGINT and SIGTERM: unwind the command as Ctrl-C does (every ``finally`` runs: temp
    files and spools go, checkpoints already written stay), remembering which."""
    _received.append(signum)
    raise KeyboardInterrupt


def _install_signal_handlers() -> None:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # (signal handlers can only be set from the main thread)
    for sig in _INTERRUPT_CODES:
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, _on_signal)


def _interrupted() -> NoReturn:
    """One line on stderr saying what was interrupted and how to resume; exit 130
    (SIGINT) or 143 (SIGTERM), the shell's 128 + the signal's number."""
    sig = _received[0] if _received else signal.SIGINT
    name = signal.Signals(sig).name
    what = _doing["what"]
    line = f"streamlm: interrupted by {name}" + (f" while {what}" if what else "")
    advice = None
    if _doing["resume"] is not None:
        try:
            advice = _doing["resume"]()
        except Exception:  # noqa: BLE001 (the advice is a courtesy)
            advice = None
    if advice:
        line += f"; {advice}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.exit(_INTERRUPT_CODES.get(sig, 130))


def run(app, argv: list[str] | None = None) -> None:
    """Run the typer ``app`` on ``argv`` (default: sys.argv), turning a StreamlmError
    into one stderr line and an exit code, never a traceback.

    The exit code is the truth: 0 only when the command succeeded; a command's
    ``typer.Exit(code)`` (which typer returns rather than raises outside its
    standalone mode) is the process's code; SIGINT exits 130 and SIGTERM 143
    after one line saying what was interrupted."""
    import os

    # see streamlm.compute.numba_setup.light_cache_loads
    os.environ.setdefault("STREAMLM_FAST_START", "1")
    _install_signal_handlers()
    try:
        args = hoist_global_flags(app, sys.argv[1:] if argv is None else list(argv))
        try:
            rv = app(args=args, standalone_mode=False)
        finally:
            # the work is done: what is alive now lives until the exit, so spare the
            # interpreter's last collections a walk over it (0.1-0.2 s with numba loaded)
            gc.freeze()
    except StreamlmError as e:
        if _received:  # an error raised while unwinding from a signal
            _interrupted()
        sys.stderr.write(f"streamlm: error: {e}\n")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        _exit_with(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except Exception as e:  # click usage errors and the like
        if _received:
            _interrupted()
        # typer vendors its own click (typer._click), so match click's exceptions by
        # shape, not by class: a usage error has format_message() and exit_code
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            sys.stderr.write(f"streamlm: error: {e.format_message()} (see --help)\n")
            sys.exit(e.exit_code)
        if type(e).__name__ in ("Exit", "Abort"):
            if type(e).__name__ == "Abort":
                _interrupted()
            _exit_with(getattr(e, "exit_code", 1))
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
    # outside typer's standalone mode, an Exit raised by a command (or typer's own
    # Exit(130) for a KeyboardInterrupt) comes back as the app's return value
    if isinstance(rv, int) and not isinstance(rv, bool):
        _exit_with(rv)
    if _received:
        _interrupted()


def _exit_with(code) -> NoReturn:
    code = 0 if code is None else int(code)
    if _received or code == 130:
        _interrupted()
    sys.exit(code)


# --threads, on every command that computes (streamlm.compute.cpus)
Threads = Annotated[Optional[int], typer.Option(
    "--threads", envvar="STREAMLM_THREADS", min=1, show_default=False,
    help="Threads to compute on. Default: the CPUs this process may use (its affinity mask "
         "and cgroup CPU quota, not the machine's count).", rich_help_panel="Performance")]


def use_threads(n: Optional[int]) -> None:
    from streamlm.compute import cpus

    cpus.set_threads(n)


def print_json(obj) -> None:
    """Print exactly one JSON object on stdout (``--json``)."""
    sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")
    sys.stdout.flush()
