"""The choices the commands take, as Enums, and the scoring options, defined once.

The CLI declares its choice options with these Enums (``--help`` lists the
values) and the library converts strings to them in one place, so no job
checks a choice string again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from streamlm.errors import UsageError


class Choice(str, Enum):
    """A string-valued choice: compares equal to its value, prints as it."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value, flag: str):
        """``value`` (a member or its string) as a member; UsageError naming ``flag``."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise UsageError(f"{flag} must be one of {allowed}, got {value!r}") from None


class Reset(Choice):
    """Where the hidden state goes back to zero when scoring."""

    none = "none"  # each input is one stream
    line = "line"  # every line alone (KenLM query)
    doc = "doc"  # every document alone


class Level(Choice):
    """The unit of per-unit score records."""

    line = "line"
    doc = "doc"
    word = "word"


class Docs(Choice):
    """Document boundaries in text."""

    none = "none"
    blank_line = "blank-line"


class Errors(Choice):
    """What to do with invalid UTF-8 in text."""

    strict = "strict"
    replace = "replace"


class Engine(Choice):
    """Which implementation scores: the Numba kernels, plain numpy, or chosen by size."""

    auto = "auto"
    numba = "numba"
    numpy = "numpy"


class Optimizer(Choice):
    sgd = "sgd"
    adam = "adam"


class Softmax(Choice):
    """The output layer: a softmax over all words, or Mikolov's class-factored one."""

    full = "full"
    class_ = "class"


# options of ScoreOptions that change the numbers or records a run produces
# (checked when resuming from a checkpoint and when a Dask rerun skips a shard)
RESULT_OPTIONS = ("reset", "level", "errors", "column")


@dataclass(frozen=True)
class ScoreOptions:
    """How ``streamlm score`` runs: the same object serves the local scorer, the Dask
    scorer, the checkpoint fingerprint and the per-shard result records.

    ``chunk_tokens`` and ``batch`` change speed and memory, never the numbers.
    """

    reset: Reset = Reset.none
    level: Level | None = None
    chunk_tokens: int = 2048
    batch: int = 16
    errors: Errors = Errors.strict
    column: str = "token_id"
    engine: Engine = Engine.auto
    checkpoint_every: int = 1_000_000

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "reset", Reset.parse(self.reset, "--reset"))
        if self.level is not None:
            set_(self, "level", Level.parse(self.level, "--level"))
        set_(self, "errors", Errors.parse(self.errors, "--errors"))
        set_(self, "engine", Engine.parse(self.engine, "--engine"))
        for name in ("chunk_tokens", "batch", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be a positive integer, got {v!r}")

    @property
    def docs(self) -> bool:
        """Whether the inputs must be split into documents."""
        return self.reset == Reset.doc or self.level == Level.doc

    def replace(self, **changes) -> ScoreOptions:
        return dataclasses.replace(self, **changes)

    def result_options(self) -> dict:
        """The options that change results, as plain JSON values."""
        out = {}
        for k in RESULT_OPTIONS:
            v = getattr(self, k)
            out[k] = v.value if isinstance(v, Enum) else v
        return out

    def to_json(self) -> dict:
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), Enum) else v)
                for f in dataclasses.fields(self)}
