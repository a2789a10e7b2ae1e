"""Helpers shared by the test modules: running the real CLI, the one-error-line
check, and a small learnable corpus."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def cli(*args, stdin=None, timeout=300):
    """Run ``python -m streamlm ARGS``; returns (exit code, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", "streamlm", *map(str, args)], input=stdin,
                       check=False, capture_output=True, timeout=timeout)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


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
    import os
    import threading

    os.mkfifo(path)

    def write():
        with open(path, "wb") as f:
            f.write(data)

    threading.Thread(target=write, daemon=True).start()
    return path
