"""Shared pieces of the benchmarks: configurations, data, weights, the
book-exact optimiser step and a numpy float64 oracle.

Benchmarks are scripts, not tests (see bench/README.md), run from the repository
root as ``python -m bench.<script>``; each writes its results under bench/results/
with :func:`provenance`. Every
peer (streamlm, PyTorch, numpy) starts from the SAME weights (streamlm's
seeded ``Params.init``, saved to an .npz) and the SAME token ids (PTB train,
V=10000, encoded here by frequency rank), and must reproduce the oracle's
loss to 1e-4 before it is timed.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STREAMLM_SHARED_DATA", REPO.parent / "shared" / "data"))
PTB_TRAIN = SHARED / "ptb" / "ptb.train.txt.gz"
CACHE = Path(os.environ.get("STREAMLM_BENCH_CACHE", "/tmp/streamlm_bench"))
RESULTS = REPO / "bench" / "results"  # the JSON each script writes
FIGURES = REPO / "bench" / "figures"  # the charts

# Optimiser settings shared by every peer (the book's Adam, with the book's
# global-norm clipping as in ch6).
LR = 1e-3
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
MAX_GRAD = 0.25


@dataclass(frozen=True)
class Shape:
    V: int
    D: int
    H: int

    @property
    def name(self) -> str:
        return f"D=H={self.H}" if self.D == self.H else f"D={self.D},H={self.H}"

    def fwd_flop_per_token(self) -> float:
        """2(DH + H^2 + HV): the three matrix products of the forward pass."""
        return 2.0 * (self.D * self.H + self.H * self.H + self.H * self.V)


def ptb_text(k: int) -> Path:
    """PTB train repeated k times as one text file in the cache (made once)."""
    f = CACHE / f"ptb_train_x{k}.txt"
    if not f.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with gzip.open(PTB_TRAIN, "rb") as fh:
            text = fh.read()
        tmp = f.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for _ in range(k):
                out.write(text)
        os.replace(tmp, f)
    return f


def thread_env(threads: int) -> dict:
    """os.environ with every library's thread count set to ``threads``."""
    e = dict(os.environ)
    for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        e[k] = str(threads)
    return e


def _ptb_words() -> list[str]:
    with gzip.open(PTB_TRAIN, "rt", encoding="utf-8") as fh:
        words = []
        for line in fh:
            words.extend(line.split())
            words.append("<eos>")
    return words


def ptb_vocab() -> list[str]:
    """PTB's 10,000 words: <unk>, <eos>, then the others by frequency (ties: first seen)."""
    counts = Counter(_ptb_words())
    rest = [w for w in sorted(counts, key=lambda w: -counts[w]) if w not in ("<unk>", "<eos>")]
    return ["<unk>", "<eos>"] + rest


def ptb_ids() -> np.ndarray:
    """PTB train as int32 ids (rank by frequency, ties by first appearance; <eos> per line)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    f = CACHE / "ptb_train_ids.npy"
    if f.exists():
        return np.load(f, allow_pickle=False)
    words = _ptb_words()
    counts = Counter(words)
    order = {w: i for i, w in enumerate(sorted(counts, key=lambda w: -counts[w]))}
    ids = np.fromiter((order[w] for w in words), dtype=np.int32, count=len(words))
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, ids)
    os.replace(tmp, f)
    return ids


def weights_file(shape: Shape, seed: int = 0) -> Path:
    """An .npz of streamlm's seeded float32 initialisation (plain arrays, no pickle).

    The output bias and the embedding are given some spread so that a wrong
    bias or embedding path changes the loss visibly.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    f = CACHE / f"weights_V{shape.V}_D{shape.D}_H{shape.H}_s{seed}.npz"
    if f.exists():
        return f
    from streamlm.nn.params import ModelConfig, Params

    p = Params.init(ModelConfig(V=shape.V, D=shape.D, H=shape.H), seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed + 1)
    p["embed_W"][...] = rng.standard_normal(p["embed_W"].shape) * 0.1
    p["rnn_b"][...] = rng.standard_normal(shape.H) * 0.1
    p["affine_b"][...] = rng.standard_normal(shape.V) * 0.1
    tmp = f.with_name(f.stem + ".tmp.npz")
    np.savez(tmp, **{n: np.asarray(a) for n, a in p.items()})
    os.replace(tmp, f)
    return f


def load_weights(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: np.array(z[k]) for k in z.files}


def batches(ids: np.ndarray, N: int, T: int, count: int, start: int = 0):
    """``count`` consecutive (xs, ts) blocks of N rows at offsets i*(L//N) (the book's batcher)."""
    L = len(ids) - 1
    jump = L // N
    offs = np.arange(N) * jump
    out = []
    for k in range(count):
        pos = (offs[:, None] + start + k * T + np.arange(T)[None, :]) % L
        out.append((ids[pos].astype(np.int32), ids[pos + 1].astype(np.int32)))
    return out


# ------------------------------------------------------------ numpy oracle --
def oracle_losses(weights: dict, blocks, train: bool) -> list[float]:
    """float64 losses of consecutive blocks with a carried state: tests/reference.py's
    NumpyRnnlm, the one numpy reference of tests and benchmarks.

    train=True: after each block, one Adam step (book form) with global-norm
    clipping; the loss list then shows the optimiser's effect too.
    """
    m = tests_module("reference").NumpyRnnlm(
        {k: v.astype(np.float64) for k, v in weights.items()})
    st = AdamState.for_arrays(m.params) if train else None
    return [float(reference_step(m, st, xs, ts) if train else m.loss(xs, ts))
            for xs, ts in blocks]


def reference_step(m, st: AdamState, xs, ts) -> float:
    """One training step of tests/reference.py's NumpyRnnlm ``m`` on the block (xs, ts):
    its loss and gradients, then the book's clipping and Adam (``st``)."""
    loss, g = m.forward_backward(xs, ts)
    g.pop("h0")
    clip_and_adam(m.params, g, st)
    return loss


class AdamState:
    def __init__(self, m, v):
        self.m, self.v, self.t = m, v, 0

    @classmethod
    def for_arrays(cls, p: dict):
        return cls({k: np.zeros_like(a) for k, a in p.items()},
                   {k: np.zeros_like(a) for k, a in p.items()})


def clip_and_adam(p: dict, g: dict, st: AdamState) -> None:
    """The book's clip_grads + Adam (bias correction folded into lr_t), numpy."""
    total = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in g.values()))
    rate = MAX_GRAD / (total + 1e-6)
    st.t += 1
    lr_t = LR * math.sqrt(1.0 - BETA2 ** st.t) / (1.0 - BETA1 ** st.t)
    for k in p:
        gk = g[k] * rate if rate < 1 else g[k]
        st.m[k] += (1 - BETA1) * (gk - st.m[k])
        st.v[k] += (1 - BETA2) * (gk ** 2 - st.v[k])
        p[k] -= lr_t * st.m[k] / (np.sqrt(st.v[k]) + EPS)


def tests_module(name: str):
    """tests/<name>.py (a plain numpy reference) imported by its path: tests/ is not a
    package, and the benchmarks change no sys.path."""
    import importlib.util

    mod = sys.modules.get(f"_tests_{name}")
    if mod is None:
        spec = importlib.util.spec_from_file_location(f"_tests_{name}",
                                                      REPO / "tests" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


# -------------------------------------------------------------- provenance --
def this_command(module: str) -> list[str]:
    """The command that is running: ``python -m bench.<module>`` and its arguments."""
    return ["python", "-m", f"bench.{module}", *sys.argv[1:]]


def provenance(command: list[str], threads: int | None) -> dict:
    """Where a results file's figures came from: the commit (and whether the tree had
    uncommitted changes), the date, the CPU, the CPUs this process may use, the
    thread count (None: each command's default) and the command that made it."""
    import datetime
    import platform
    import subprocess

    def git(*args) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    from streamlm.compute import cpus

    versions = {}
    for mod in ("numpy", "numba", "pyarrow", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", None)
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cpus_available": cpus.available_cpus(), "threads": threads,
            "python": platform.python_version(), "versions": versions,
            "command": " ".join(command)}
