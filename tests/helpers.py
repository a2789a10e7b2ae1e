"""Helpers shared by the test modules: the one way to run the real CLI in a
subprocess (and to kill it mid-work), the one-error-line check, and a small
learnable corpus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np


def script(*args) -> list[str]:
    """The installed ``streamlm`` console script with ARGS as an argv list, as a user's
    job runs it: the one beside this interpreter (``pip install -e .`` puts it there),
    else ``python -m streamlm``."""
    from pathlib import Path

    exe = Path(sys.executable).with_name("streamlm")
    if exe.exists():
        return [str(exe), *map(str, args)]
    return [sys.executable, "-m", "streamlm", *map(str, args)]


command = script  # every CLI test runs the real executable


def _env() -> dict:
    return dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")


def run(*args, stdin=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Run the real CLI; returns the CompletedProcess (stdout/stderr decoded)."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    r = subprocess.run(command(*args), input=stdin, cwd=cwd, check=False,
                       capture_output=True, timeout=timeout, env=_env())
    return subprocess.CompletedProcess(r.args, r.returncode,
                                       r.stdout.decode("utf-8", "replace"),
                                       r.stderr.decode("utf-8", "replace"))


def cli(*args, stdin=None, cwd=None, timeout=300):
    """Run the real CLI; returns (exit code, stdout, stderr)."""
    r = run(*args, stdin=stdin, cwd=cwd, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def kill_when(args, ready, *, delay: float = 0.0, timeout: float = 120) -> int:
    """Start the CLI with ``args``; once ``ready()`` is true, wait ``delay`` seconds
    and SIGKILL it. Returns the exit code: -SIGKILL when the kill landed while
    it ran, 0 when it finished first."""
    p = subprocess.Popen(command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=_env())
    try:
        t0 = time.monotonic()
        while p.poll() is None and not ready() and time.monotonic() - t0 < timeout:
            time.sleep(0.005)
        if p.poll() is None and delay:
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    return p.returncode


KILLED = -signal.SIGKILL


def assert_one_error_line(rc, err, *needles):
    """A failed run: non-zero exit, exactly one stderr line holding every needle."""
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def markov_text(n_lines: int, seed: int, words: list[str], chain: int = 0,
                lengths: tuple[int, int] = (3, 12)) -> str:
    """Sentences from a tiny Markov chain over ``words`` (learnable, not trivial):
    each word has 3 possible successors (chain ``chain``); ``seed`` draws the walk;
    sentence lengths are drawn from ``range(*lengths)``."""
    V = len(words)
    nxt = np.random.default_rng(chain).integers(0, V, size=(V, 3))
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        w = int(rng.integers(V))
        sent = []
        for _ in range(int(rng.integers(*lengths))):
            sent.append(words[w])
            w = int(nxt[w, rng.integers(3)])
        lines.append(" ".join(sent))
    return "\n".join(lines) + "\n"


def fifo(path, data: bytes):
    """A named pipe at ``path`` whose writer (a daemon thread) sends ``data`` once
    a reader opens it: what a shell's ``<(cmd)`` gives a command."""
    import threading

    os.mkfifo(path)

    def write():
        with open(path, "wb") as f:
            f.write(data)

    threading.Thread(target=write, daemon=True).start()
    return path
