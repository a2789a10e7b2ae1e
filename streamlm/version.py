"""streamlm's version: the one in pyproject.toml, as the installed package says it."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("streamlm")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
