"""Exceptions that the CLI turns into exactly one line on stderr.

Library code raises :class:`StreamlmError` (or a subclass) with a message that
already names the file and the position; the CLI prints ``error: <message>``
and exits non-zero, without a traceback.
"""

from __future__ import annotations

import os


class StreamlmError(Exception):
    """An error caused by the user's input or environment, not by a bug."""

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 position: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.position = position
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if position:
            parts.append(position)
        parts.append(message)
        super().__init__(": ".join(parts))


class InputError(StreamlmError):
    """Bad input data: corrupt, truncated, wrong schema, ids out of range, empty..."""

    exit_code = 2


class VocabularyMismatch(InputError):
    """Token ids made with another vocabulary than the one they are read with (a model's)."""


class ModelFileError(StreamlmError):
    """A model file that is missing, truncated, edited or not a streamlm model."""

    exit_code = 2


class UsageError(StreamlmError):
    """A bad option value or combination."""

    exit_code = 2


class TrainingDiverged(StreamlmError):
    """Training produced a NaN or Inf loss."""

    exit_code = 3


def read_small_file(path: str, what: str) -> bytes:
    """The bytes of a small file read whole (a vocabulary, a tokeniser model), or one
    InputError naming it: a directory, a missing file, one that cannot be read."""
    if os.path.isdir(path):
        raise InputError(f"is a directory, not a {what}", path=path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"no such {what}", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", path=path) from None
