"""The ``streamlm`` command line (``app``: the commands; ``console``: the process
around them; ``progress``: what it shows while it works)."""

from streamlm.cli.app import app, hoist_global_flags, main

__all__ = ["app", "hoist_global_flags", "main"]
