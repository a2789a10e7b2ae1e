"""Progress on stderr for the CLI: a rich bar on a TTY, plain log lines otherwise.

The jobs report progress through a callback that takes a small dict; these
are the CLI's callbacks. Library code never prints.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("streamlm")


class ScoreProgress:
    """Running perplexity, tokens/s, percentage and ETA on stderr (by the bytes of
    the inputs read, where their sizes are known): a rich bar on a TTY, a plain line
    every 10 s otherwise. Yields the callback (None when disabled)."""

    def __init__(self, enabled: bool, tty: bool | None = None, every_s: float = 10.0):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = every_s
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
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.live = Progress(TextColumn("scoring"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self.live.start()
            self.task = self.live.add_task("", total=None)
        return self._update

    def _update(self, info: dict) -> None:
        now = self._time()
        if now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        text, frac = describe(info)
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


def describe(info: dict) -> tuple[str, float | None]:
    """The progress line of a scoring callback's dict, and the fraction done."""
    ppl = info.get("perplexity")
    rate = info["scored_this_run"] / info["seconds"] if info["seconds"] > 0 else 0.0
    text = (f"{info['tokens']:,} tokens  ppl {ppl:.2f}  {rate:,.0f} tok/s"
            if ppl is not None else f"{info['tokens']:,} tokens")
    return text, info.get("fraction")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainProgress:
    """The CLI's ``progress`` callback: a rich bar on a TTY, plain lines otherwise.

    Use as a context manager. The bar shows steps, tokens/s, running train
    perplexity, lr and ETA; off a TTY one line per log record goes to the
    ``streamlm`` logger (stderr).
    """

    def __init__(self, tty: bool | None = None):
        self.tty = sys.stderr.isatty() if tty is None else tty
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
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]:.2f}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TextColumn("ppl {task.fields[ppl]:.1f}"), TextColumn("lr {task.fields[lr]:.3g}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False)
        self._progress.start()
        self._task = self._progress.add_task("train", total=ev["total_steps"],
                                             completed=ev["step"], epoch=0.0, tps=0.0,
                                             ppl=float("nan"), lr=float("nan"))

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "start":
            if self.tty:
                self._start_bar(ev)
            return
        if self._progress is not None:
            if kind == "step":
                self._progress.update(self._task, completed=ev["step"], epoch=ev["epoch"],
                                      tps=ev["tokens_per_s"], ppl=ev["train_ppl"], lr=ev["lr"])
            elif kind == "epoch":
                r = ev["record"]
                self._progress.console.log(_format_record(r))
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
