"""The command line before typer parses it: global flags given after the command.

Split out of :mod:`streamlm.cli` to keep that module a list of thin commands.
"""

from __future__ import annotations

_GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def hoist_global_flags(cmd, argv: list[str]) -> list[str]:
    """``streamlm score ... -q`` as ``streamlm -q score ...``: -q/-v anywhere after the
    command move in front of it (a value of an option that takes one stays put).
    ``cmd``: the app's click group (typer's vendored click: duck-typed below)."""
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
        if a in _GLOBAL_FLAGS:
            moved.append(a)
        elif a == "--":
            out.extend(argv[i:])
            break
        else:
            out.append(a)
            opt = next((p for p in sub.params if hasattr(p, "is_flag")
                        and a in p.opts + p.secondary_opts), None)
            if opt is not None and not opt.is_flag and i + 1 < len(argv):
                out.append(argv[i + 1])  # its value, whatever it looks like
                i += 1
        i += 1
    k = out.index(next(x for x in out if not x.startswith("-"))) if sub is not None else 0
    return out[:k] + moved + out[k:]
