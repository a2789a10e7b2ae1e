"""Progress on stderr for the CLI: a rich bar on a TTY, plain log lines otherwise.

The jobs report progress through a callback that takes a small dict; these
are the CLI's callbacks. Library code never prints.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("streamlm")


class ScoreProgress:
    """Running perplexity and tokens/s on stderr: a rich line on a TTY, plain lines
    every 10 s otherwise. Yields the callback (None when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
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
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.live = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=Console(stderr=True),
                                 transient=True)
            self.live.start()
            self.task = self.live.add_task("scoring", total=None)
        return self._update

    def _update(self, info: dict) -> None:
        now = self._time()
        if now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        ppl = info.get("perplexity")
        rate = info["scored_this_run"] / info["seconds"] if info["seconds"] > 0 else 0.0
        text = (f"{info['tokens']:,} tokens  perplexity {ppl:.2f}  {rate:,.0f} tokens/s"
                if ppl is not None else f"{info['tokens']:,} tokens")
        if self.live is not None:
            self.live.update(self.task, description=text)
        else:
            log.info("score: %s", text)

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
        return False


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
