"""Progress on stderr for the CLI: a rich bar on a TTY, plain log lines otherwise.

The jobs report progress through a callback that takes a small dict; these
are the CLI's callbacks. Library code never prints.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("streamlm")


class StderrHandler(logging.StreamHandler):
    """Log records to ``sys.stderr`` as it is when each one is written: a live rich
    bar swaps in a proxy that prints them above the bar (a handler that kept the
    stderr of its set-up would write through the bar)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # (StreamHandler sets it; sys.stderr it stays)
        pass


def _bar():
    """A bar of at most 40 columns that gives way, so that the line fits in 80."""
    from rich.progress import BarColumn
    from rich.table import Column

    return BarColumn(bar_width=None, table_column=Column(max_width=40))


class ScoreProgress:
    """Running perplexity, tokens/s, percentage and ETA on stderr (by the tokens
    scored, where the inputs' sizes are known): a rich bar on a TTY (80 columns
    hold it), a plain line every 10 s otherwise. Yields the callback (None when
    disabled)."""

    def __init__(self, enabled: bool, tty: bool | None = None, every_s: float = 10.0,
                 console=None):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = every_s
        self.console = console  # the bar's rich Console (default: stderr's)
        self.live = None
        self.last = 0.0

    def __enter__(self):
        if not self.enabled:
            return None
        import time

        self._time = time.monotonic
        self.last = time.monotonic()
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # stdout is the records' (--output -): only stderr goes above the bar
            self.live = Progress(_bar(), TaskProgressColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console or Console(stderr=True),
                                 transient=True, redirect_stdout=False)
            self.live.start()
            self.task = self.live.add_task("", total=None)
        return self._update

    def _update(self, info: dict) -> None:
        now = self._time()
        if now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        text, frac = describe(info, short=self.live is not None)
        if self.live is not None:
            if frac is not None:
                self.live.update(self.task, description=text, total=1.0, completed=frac)
            else:
                self.live.update(self.task, description=text)
        else:
            eta = ""
            if frac is not None and frac > 0:
                left = info["seconds"] * (1 - frac) / frac
                eta = f"  {100 * frac:.1f}%  ETA {_clock(left)}"
            log.info("score: %s%s", text, eta)

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
        return False


def describe(info: dict, short: bool = False) -> tuple[str, float | None]:
    """The progress line of a scoring callback's dict, and the fraction done;
    ``short``: counts as 12.3M, for the bar."""
    ppl = info.get("perplexity")
    rate = info["scored_this_run"] / info["seconds"] if info["seconds"] > 0 else 0.0
    count = _short if short else "{:,.0f}".format
    text = f"{count(info['tokens'])} tokens"
    if ppl is not None:
        text += f"  ppl {_ppl(ppl, 2) if short else format(ppl, '.2f')}  {count(rate)} tok/s"
    return text, info.get("fraction")


def _short(n: float) -> str:
    """99,999 / 123.5k / 12.3M / 1.2G: at most seven characters."""
    if n < 99_999.5:
        return f"{n:,.0f}"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= 0.99995 * div:  # (999,950 is 1.0M, not 1000.0k)
            return f"{n / div:.1f}{unit}"
    return f"{n:,.0f}"  # (not reached: n >= 1e3 here)


def _ppl(ppl: float, digits: int) -> str:
    """A perplexity in at most nine characters: 123.45, 12345.6, 1.23e+05."""
    return f"{ppl:.{digits}f}" if ppl < 1e4 else (f"{ppl:.1f}" if ppl < 1e5 else f"{ppl:.3g}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainProgress:
    """The CLI's ``progress`` callback: a rich bar on a TTY, plain lines otherwise.

    Use as a context manager. The bar shows the epoch, tokens/s, running train
    perplexity, lr and ETA (80 columns hold it; the figures once the first step
    gave them); every epoch's record is a log line (the ``streamlm`` logger, on
    stderr, above the bar), and off a TTY every log interval's too.
    """

    def __init__(self, tty: bool | None = None, enabled: bool = True, console=None):
        self.tty = (sys.stderr.isatty() if tty is None else tty) and enabled
        self.console = console  # the bar's rich Console (default: stderr's)
        self._progress = None
        self._task = None

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _start_bar(self, ev: dict) -> None:
        from rich.console import Console
        from rich.progress import (
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]:.2f}"), _bar(),
            TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console or Console(stderr=True),
            transient=False, redirect_stdout=False)
        self._progress.start()
        ipe = ev.get("iters_per_epoch") or 1
        self._task = self._progress.add_task("", total=ev["total_steps"],
                                             completed=ev["step"], epoch=ev["step"] / ipe)

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "start":
            if self.tty:
                self._start_bar(ev)
            return
        if self._progress is not None:
            if kind == "step":
                text = (f"{_short(ev['tokens_per_s'])} tok/s  ppl {_ppl(ev['train_ppl'], 1)}"
                        f"  lr {ev['lr']:.3g}")
                self._progress.update(self._task, completed=ev["step"], epoch=ev["epoch"],
                                      description=text)
            elif kind == "epoch":  # a plain log line, printed above the bar
                log.info("%s", _format_record(ev["record"]))
            elif kind == "done":
                self._progress.stop()
                self._progress = None
            return
        if kind in ("log", "epoch"):
            log.info("%s", _format_record(ev["record"]))


def _format_record(r: dict) -> str:
    head = {"epoch": "end of epoch", "stop": "stopped at epoch"}.get(r.get("kind"), "epoch")
    parts = [f"{head} {r['epoch']:.2f}", f"step {r['step']}"]
    if r.get("train_ppl") is not None:
        parts.append(f"train ppl {r['train_ppl']:.2f}")
    if r.get("valid_ppl") is not None:
        parts.append(f"valid ppl {r['valid_ppl']:.2f}")
    parts.append(f"lr {r['lr']:.4g}")
    if r.get("tokens_per_s") is not None:
        parts.append(f"{r['tokens_per_s']:,.0f} tok/s")
    parts.append(f"{r['elapsed_s']:.0f} s")
    return ", ".join(parts)
