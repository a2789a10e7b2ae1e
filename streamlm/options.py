"""The choices the commands take, as Enums, and the scoring options, defined once.

The CLI declares its choice options with these Enums (``--help`` lists the
values) and the library converts strings to them in one place, so no job
checks a choice string again.
"""

from __future__ import annotations

import dataclasses
import os
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

    auto = "auto"  # doc for document inputs (JSONL, Parquet rows), else none
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
    """What to do with bad input: invalid UTF-8 in text, a bad JSONL or Parquet row."""

    strict = "strict"  # one error line, exit 2
    replace = "replace"  # invalid UTF-8 becomes U+FFFD
    skip = "skip"  # a bad row (invalid JSON, no text, a null) is skipped and counted


class Engine(Choice):
    """Which implementation scores: the Numba kernels, plain numpy, or chosen by size."""

    auto = "auto"
    numba = "numba"
    numpy = "numpy"


class Verbosity(Choice):
    """What ``streamlm query`` prints (KenLM query's ``-v``)."""

    summary = "summary"
    sentence = "sentence"
    word = "word"


class Optimizer(Choice):
    sgd = "sgd"
    adam = "adam"


class Softmax(Choice):
    """The output layer: a softmax over all words, or Mikolov's class-factored one."""

    full = "full"
    class_ = "class"


class Cell(Choice):
    """The recurrent cell (streamlm.nn.cells): the tanh RNN, the LSTM or the GRU."""

    rnn = "rnn"
    lstm = "lstm"
    gru = "gru"


class Anneal(Choice):
    """When training lowers the learning rate."""

    plateau = "plateau"  # x --lr-decay (1/4) when the valid ppl does not improve (the book)
    step = "step"  # x --lr-decay at each epoch end from --decay-after on (Zaremba et al.)
    mikolov = "mikolov"  # rnnlm: halve every epoch once the gain is small, then stop


class PieceModel(Choice):
    """The SentencePiece model ``prepare --tokenizer sentencepiece`` trains."""

    unigram = "unigram"
    bpe = "bpe"


# options of ScoreOptions that change the numbers or records a run produces
# (checked when resuming from a checkpoint and when a Dask rerun skips a shard)
RESULT_OPTIONS = ("reset", "level", "errors", "column", "text_field", "text_column", "keep",
                  "cutoffs", "bucket_field", "mix", "mix_lambda", "tune_on", "dynamic",
                  "dynamic_lr", "dynamic_decay", "dynamic_segment", "dynamic_stats",
                  "dynamic_stats_on")
# ... of them, those added after checkpoints and Dask records first held the others:
# left out while unset (unset is what every earlier run did), so that those still match
LATER_OPTIONS = ("dynamic_stats_on",)


def parse_every(value) -> tuple[int | None, float | None]:
    """A checkpoint interval: (tokens, None) for a count ("500000"), (None, seconds)
    for a duration ("60s", "5m", "1h"); UsageError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UsageError(f"--checkpoint-every must be positive, got {value}")
        return value, None
    text = str(value).strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text[-1:] in units:
            seconds = float(text[:-1]) * units[text[-1]]
            if seconds > 0:
                return None, seconds
        elif int(text) >= 1:
            return int(text), None
    except ValueError:
        pass
    raise UsageError(f"--checkpoint-every must be a token count or a duration such as 60s "
                     f"or 5m, got {value!r}")


def parse_lambda(value) -> float | str | None:
    """``--lambda``: a number in [0, 1] (the RNN's weight in a mix) or ``auto``."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        lam = float(value)
    except (TypeError, ValueError):
        lam = float("nan")
    if not 0.0 <= lam <= 1.0:  # NaN too
        raise UsageError(f"--lambda must be a number from 0 to 1 (the RNN's weight in the "
                         f"mix) or auto, got {value!r}")
    return lam


def parse_numbers(text: str, flag: str) -> list[float]:
    """"30,60" as [30.0, 60.0]; UsageError naming ``flag`` otherwise."""
    try:
        out = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        out = []
    if not out:
        raise UsageError(f"{flag} takes numbers separated by commas, got {text!r}")
    return out


# --dynamic's defaults (docs/scoring.md, "Dynamic evaluation"; measured by
# bench/bench_dynamic_segment.py): each method's (lr, decay), the tokens per step
DYNAMIC_DEFAULTS = {"rms": (2.4e-3, 1e-2), "sgd": (0.05, 0.0)}
DYNAMIC_SEGMENT = 100


@dataclass(frozen=True)
class ScoreOptions:
    """How ``streamlm score`` runs: the same object serves the local scorer, the Dask
    scorer, the checkpoint fingerprint and the per-shard result records.

    ``chunk_tokens`` and ``batch`` change speed and memory, never the numbers.
    """

    reset: Reset = Reset.auto
    level: Level | None = None
    chunk_tokens: int = 2048
    batch: int = 16
    errors: Errors = Errors.strict
    column: str | None = None  # token ids: token_id, else input_ids
    text_field: str = "text"  # of JSONL records (a dotted path)
    text_column: str | None = None  # of Parquet / Arrow documents (default: text)
    engine: Engine = Engine.auto
    checkpoint_every: int | str = "60s"
    keep: tuple[str, ...] = ()  # input columns / fields copied into the records
    cutoffs: tuple[float, ...] | None = None  # perplexity cut-offs of the buckets
    bucket_field: str = "perplexity"  # the record field the cut-offs cut
    max_oov_rate: float | None = 0.05  # warn above this (None: never)
    mix: str | None = None  # a KenLM model to interpolate with (streamlm.jobs.mix)
    mix_lambda: float | str | None = None  # the RNN's weight in the mix, or "auto"
    tune_on: str | None = None  # held-out text to tune mix_lambda="auto" (or --dynamic) on
    dynamic: str | None = None  # dynamic evaluation: rms, sgd or auto (streamlm.jobs.dynamic)
    dynamic_lr: float | None = None  # its step (None: the method's default)
    dynamic_decay: float | None = None  # its decay toward the trained weights
    dynamic_segment: int = DYNAMIC_SEGMENT  # tokens per step, from each stream's (or unit's) start
    dynamic_stats: str | None = None  # the gradients' RMS statistics (made from tune_on)
    dynamic_stats_on: str | None = None  # text to measure them on (None: tune_on)

    def __post_init__(self):
        set_ = object.__setattr__
        if isinstance(self.keep, str):
            set_(self, "keep", tuple(k.strip() for k in self.keep.split(",") if k.strip()))
        set_(self, "keep", tuple(self.keep))
        if len(set(self.keep)) != len(self.keep):
            raise UsageError(f"--keep names a column twice: {','.join(self.keep)}")
        if self.cutoffs is not None:
            c = tuple(float(x) for x in self.cutoffs)
            if not c or any(b <= a for a, b in zip(c, c[1:])) or any(x != x for x in c):
                raise UsageError(f"cut-offs must be increasing numbers, got {list(c)}")
            set_(self, "cutoffs", c)
        if self.bucket_field not in ("perplexity", "perplexity_excl_oov"):
            raise UsageError(f"bucket field must be perplexity or perplexity_excl_oov, got "
                             f"{self.bucket_field!r}")
        if self.max_oov_rate is not None and not 0 <= self.max_oov_rate <= 1:
            raise UsageError(f"--max-oov-rate must be in [0, 1], got {self.max_oov_rate}")
        set_(self, "reset", Reset.parse(self.reset, "--reset"))
        if self.level is not None:
            set_(self, "level", Level.parse(self.level, "--level"))
        set_(self, "errors", Errors.parse(self.errors, "--errors"))
        set_(self, "engine", Engine.parse(self.engine, "--engine"))
        for name in ("chunk_tokens", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be a positive integer, got {v!r}")
        set_(self, "mix_lambda", parse_lambda(self.mix_lambda))
        for name in ("mix", "tune_on"):  # paths as strings (checkpoints keep them as JSON)
            if getattr(self, name) is not None:
                set_(self, name, os.fspath(getattr(self, name)))
        for name in ("dynamic_stats", "dynamic_stats_on"):
            if getattr(self, name) is not None:
                set_(self, name, os.fspath(getattr(self, name)))
        if self.dynamic is not None and self.dynamic not in ("rms", "sgd", "auto"):
            raise UsageError(f"--dynamic must be rms, sgd or auto, got {self.dynamic!r}")
        if self.dynamic is None and (self.dynamic_lr is not None or self.dynamic_decay
                                     is not None or self.dynamic_stats is not None
                                     or self.dynamic_stats_on is not None):
            raise UsageError("--dynamic-lr, --dynamic-decay, --dynamic-stats and "
                             "--dynamic-stats-on go with --dynamic rms|sgd|auto")
        if self.dynamic == "sgd" and self.dynamic_stats_on is not None:
            raise UsageError("--dynamic-stats-on measures the RMS statistics of --dynamic "
                             "rms|auto; --dynamic sgd takes none")
        if self.dynamic is not None and self.mix is not None:
            raise UsageError("--dynamic and --mix cannot be combined (the n-gram model "
                             "does not adapt); score twice")
        if self.dynamic == "auto" and self.tune_on is None:
            raise UsageError("--dynamic auto needs --tune-on FILE, held-out text to tune "
                             "its step and decay on")
        if self.mix is None and self.dynamic is None and (
                self.mix_lambda is not None or self.tune_on is not None):
            flag = "--lambda" if self.mix_lambda is not None else "--tune-on"
            raise UsageError(f"{flag} is for a mix with an n-gram model: give --mix "
                             "KENLM_MODEL too")
        if self.mix is not None and self.mix_lambda is None:
            raise UsageError("--mix needs --lambda L (the RNN's weight, 0 to 1), or --lambda "
                             "auto --tune-on FILE")
        if self.mix_lambda == "auto" and self.tune_on is None:
            raise UsageError("--lambda auto needs --tune-on FILE, held-out text to tune it on")
        if self.tune_on is not None and self.mix is not None and self.mix_lambda != "auto":
            raise UsageError(f"--tune-on tunes --lambda auto; --lambda {self.mix_lambda} "
                             "leaves nothing to tune")
        tokens, _ = parse_every(self.checkpoint_every)
        if tokens is not None:  # "500000" and 500000 are the same option
            set_(self, "checkpoint_every", tokens)

    @property
    def docs(self) -> bool:
        """Whether text inputs must be split into documents (at blank lines)."""
        return self.reset == Reset.doc or self.level == Level.doc

    def replace(self, **changes) -> ScoreOptions:
        return dataclasses.replace(self, **changes)

    def result_options(self) -> dict:
        """The options that change results, as plain JSON values."""
        return {k: _json(getattr(self, k)) for k in RESULT_OPTIONS
                if k not in LATER_OPTIONS or getattr(self, k) is not None}

    def to_json(self) -> dict:
        return {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _json(v):
    if isinstance(v, Enum):
        return v.value
    return list(v) if isinstance(v, tuple) else v
