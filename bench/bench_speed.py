"""Tokens/s of streamlm against PyTorch (CPU) and numpy, side by side.

    python -m bench.bench_speed            # full run, writes bench/results/speed.json
    python -m bench.bench_speed --quick    # fewer repetitions, D=H=100 only

Each (task, shape, peer) runs in its own persistent subprocess with the
same thread count for every library (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads), so that one
library's thread pool cannot slow another. The orchestrator interleaves the
peers repetition by repetition (the order rotating, so that each peer runs in
every position equally often and, with three or more, never twice in a row),
so a change in the load of the shared machine hits every peer alike; the reported figure is the
median of the timed repetitions (warm-up excluded). Before timing, every worker scores the first two
blocks from a fresh state (the second one checks the carried state and, for
training, the optimiser step) and must agree with the float64 numpy oracle
(tests/reference.py + the book's Adam) to 1e-4 in the mean loss; otherwise
the worker fails and nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from bench.common import (
    CACHE,
    REPO,
    RESULTS,
    Shape,
    batches,
    load_weights,
    oracle_losses,
    provenance,
    ptb_ids,
    this_command,
    weights_file,
)

TOL = 1e-4
V = 10000
TRAIN_NT = (20, 35)
MANY_NT = (20, 100)
SINGLE_T = {"streamlm": 4096, "alt": 4096, "alt2": 4096, "torch": 256, "numpy": 256,
            "reference": 256}


def _peer_base(peer: str) -> str:
    """'streamlm+mkl@256' -> 'streamlm'."""
    return peer.split("@")[0].split("+")[0]


def mkl_available() -> bool:
    """Whether streamlm finds Intel MKL (pip install 'streamlm[mkl]')."""
    from streamlm.compute import blas

    return blas.mkl_blas() is not None


def block_shape(task: str, peer: str) -> tuple[int, int]:
    if task == "train":
        return TRAIN_NT
    if task == "score_many":
        return MANY_NT
    if "@" in peer:  # e.g. streamlm@256: another chunk length
        return (1, int(peer.split("@")[1]))
    return (1, SINGLE_T[_peer_base(peer)])


def worker_process(spec: dict, threads: int) -> dict:
    """The worker's command, directory and environment (every library's thread count).

    ``python -m`` puts its directory first on sys.path: the repository, for this tree's
    streamlm. An A/B peer ('alt', 'alt2') runs from a directory that holds only this tree's
    ``bench`` package, with the streamlm tree of $STREAMLM_BENCH_ALT / $STREAMLM_BENCH_ALT2
    on PYTHONPATH: the peer code is this tree's, the streamlm it drives the other's."""
    env = dict(os.environ)
    for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    cwd = REPO
    base = _peer_base(spec.get("peer", ""))
    if base in ("alt", "alt2"):
        cwd = CACHE / "bench_only"
        cwd.mkdir(parents=True, exist_ok=True)
        if not (cwd / "bench").exists():
            (cwd / "bench").symlink_to(REPO / "bench")
        env["PYTHONPATH"] = os.pathsep.join(
            [os.environ["STREAMLM_BENCH_" + base.upper()], env.get("PYTHONPATH", "")])
    return {"args": [sys.executable, "-m", "bench.bench_speed", "--worker", json.dumps(spec)],
            "cwd": cwd, "env": env}


# ------------------------------------------------------------------ worker --
def make_peer(peer: str, task: str, weights):
    base = _peer_base(peer)
    if base in ("alt", "alt2"):  # A/B runs: another streamlm tree, first on PYTHONPATH
        base = "streamlm"  # (worker_process), e.g. a git archive of HEAD
    if base == "streamlm":
        # "streamlm" is the default install (numpy's OpenBLAS); "streamlm+mkl" the mkl extra
        os.environ["STREAMLM_BLAS"] = "mkl" if "+mkl" in peer else "numpy"
        from bench.streamlm_peer import StreamlmScorer, StreamlmTrainer
        return StreamlmTrainer(weights) if task == "train" else StreamlmScorer(weights)
    if base == "torch":
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        from bench.torch_ref import TorchScorer, TorchTrainer
        return TorchTrainer(weights) if task == "train" else TorchScorer(weights)
    if base == "numpy":
        from bench.numpy_peer import NumpyScorer, NumpyTrainer
        return NumpyTrainer(weights) if task == "train" else NumpyScorer(weights)
    if base == "reference" and task == "train":  # tests/reference.py, float32 weights
        return ReferenceTrainer(weights)
    raise ValueError(peer)


class ReferenceTrainer:
    """tests/reference.py's NumpyRnnlm (the book's layers; float64 softmax) + the
    book's clipping and Adam from common.py: the issue-2 "numpy reference"."""

    def __init__(self, weights):
        from bench.common import AdamState, tests_module

        self.m = tests_module("reference").NumpyRnnlm(weights)
        self.st = AdamState.for_arrays(self.m.params)

    def step(self, xs, ts):
        from bench.common import reference_step

        return reference_step(self.m, self.st, xs, ts)


def run_block(obj, task, xs, ts) -> float:
    if task == "train":
        return float(obj.step(xs, ts))
    return float(np.mean(obj.nll(xs, ts)))


def sgemm_peer(spec: dict) -> None:
    """The machine's SGEMM rate as one more interleaved peer: each repetition
    times numpy float32 700xH @ Hx10000 products (same threads as the others)."""
    H = spec["H"]
    rng = np.random.default_rng(0)
    a = rng.random((700, H), dtype=np.float32)
    b = rng.random((H, V), dtype=np.float32)
    c = np.empty((700, V), np.float32)
    k = max(1, int(spec["flop_per_rep"] // (2 * 700 * H * V)))
    for _ in range(2):
        np.matmul(a, b, out=c)
    print(json.dumps({"ok": True, "flop_per_rep": k * 2 * 700 * H * V}), flush=True)
    for line in sys.stdin:
        if line.strip() != "rep":
            break
        t1 = time.perf_counter()
        for _ in range(k):
            np.matmul(a, b, out=c)
        print(json.dumps({"dt": time.perf_counter() - t1}), flush=True)


def worker(spec: dict) -> None:
    """A persistent peer process: check, warm up, then one timed repetition per
    'rep' line on stdin (the orchestrator interleaves the peers rep by rep)."""
    task, peer = spec["task"], spec["peer"]
    if peer == "sgemm":
        sgemm_peer(spec)
        return
    weights = load_weights(spec["weights"])
    ids = ptb_ids()
    N, T = block_shape(task, peer)
    # correctness first, from a fresh state
    t0 = time.perf_counter()
    obj = make_peer(peer, task, weights)
    check = batches(ids, N, T, 2)
    losses = [run_block(obj, task, xs, ts) for xs, ts in check]
    first_call = time.perf_counter() - t0
    want = spec["oracle"]
    err = max(abs(a - b) for a, b in zip(losses, want))
    head = {"ok": bool(err <= TOL), "losses": losses, "oracle": want, "err": err,
            "first_call_s": first_call, "N": N, "T": T}
    if not head["ok"]:
        print(json.dumps(head), flush=True)
        return
    # timing, on the following blocks (state carried on)
    blocks_per_rep = max(1, int(spec["rep_tokens"] // (N * T)))
    head["tokens_per_rep"] = blocks_per_rep * N * T
    nblocks = blocks_per_rep * (spec["reps"] + spec["warmup"])
    data = batches(ids, N, T, nblocks, start=2 * T)
    k = 0
    for _ in range(spec["warmup"]):
        for _ in range(blocks_per_rep):
            run_block(obj, task, *data[k % nblocks])
            k += 1
    print(json.dumps(head), flush=True)
    for line in sys.stdin:
        if line.strip() != "rep":
            break
        t1 = time.perf_counter()
        for _ in range(blocks_per_rep):
            run_block(obj, task, *data[k % nblocks])
            k += 1
        print(json.dumps({"dt": time.perf_counter() - t1}), flush=True)


def sgemm_worker(spec: dict) -> dict:
    """numpy float32 700xH @ HxV, median GFLOP/s."""
    out = {}
    rng = np.random.default_rng(0)
    for H in spec["H"]:
        a = rng.random((700, H), dtype=np.float32)
        b = rng.random((H, V), dtype=np.float32)
        c = np.empty((700, V), np.float32)
        ts = []
        for _ in range(25):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            ts.append(time.perf_counter() - t0)
        out[str(H)] = 2 * 700 * H * V / float(np.median(ts[5:])) / 1e9
    return out


# ------------------------------------------------------------ orchestrator --
def call_worker(spec: dict, threads: int) -> dict:
    r = subprocess.run(**worker_process(spec, threads), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"worker {spec.get('task')} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


class Peer:
    """A persistent worker process for one peer; ``rep()`` times one repetition."""

    def __init__(self, spec: dict, threads: int):
        self.spec = spec
        self.proc = subprocess.Popen(**worker_process(spec, threads), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"worker {spec['task']} {spec['peer']} died "
                               f"(exit {self.proc.returncode})")
        self.head = json.loads(line)

    def rep(self) -> float:
        self.proc.stdin.write("rep\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["dt"]

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def versions() -> dict:
    import numba

    out = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = None
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    out["streamlm_commit"] = rev
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    out["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    return out


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="D=H=100 only, fewer repetitions.")
    ap.add_argument("--hidden", default="100,650",
                    help="Comma-separated D=H sizes (default 100,650).")
    ap.add_argument("--tasks", default="train,score_many,score_single", help="Tasks to run.")
    ap.add_argument("--peers", default="streamlm,streamlm+mkl,torch,numpy",
                    help="Peers to run: streamlm (with numpy's OpenBLAS), streamlm+mkl (with "
                         "Intel MKL, skipped when not installed), torch, numpy (a fast float32 "
                         "numpy peer), "
                         "reference (tests/reference.py, training only), and 'alt', 'alt2' "
                         "(the streamlm packages in $STREAMLM_BENCH_ALT, "
                         "$STREAMLM_BENCH_ALT2, for A/B runs).")
    ap.add_argument("--reps", type=int, default=10,
                    help="Timed repetitions per peer (interleaved between peers).")
    ap.add_argument("--threads", type=int, default=2, help="Threads for every library.")
    ap.add_argument("--pause", type=float, default=0.3,
                    help="Seconds of idle before each peer's repetition.")
    ap.add_argument("--out", default=str(RESULTS / "speed.json"), help="JSON results file.")
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("task") == "sgemm":
            print(json.dumps(sgemm_worker(spec)))
        else:
            worker(spec)
        return
    hidden = [100] if args.quick else [int(h) for h in args.hidden.split(",")]
    reps = min(4, args.reps) if args.quick else args.reps
    peers = args.peers.split(",")
    if "streamlm+mkl" in peers and not mkl_available():
        print("streamlm+mkl: MKL not installed (pip install 'streamlm[mkl]'), skipped",
              file=sys.stderr)
        peers.remove("streamlm+mkl")
    tasks = args.tasks.split(",")
    ids = ptb_ids()
    results = {"machine": machine(), "versions": versions(), "threads": args.threads,
               "reps": reps, "tol": TOL, "runs": [],
               "provenance": provenance(this_command("bench_speed"), args.threads)}
    print("sgemm rate ... ", end="", file=sys.stderr, flush=True)
    results["sgemm_gflops"] = call_worker({"task": "sgemm", "H": hidden}, args.threads)
    print(results["sgemm_gflops"], file=sys.stderr)
    for H in hidden:
        shape = Shape(V, H, H)
        wf = weights_file(shape)
        weights = load_weights(wf)
        for task in tasks:
            task_peers = [p for p in peers if not (p == "reference" and task != "train")]
            if task == "score_single":
                task_peers += [f"{p}@256" for p in ("streamlm", "streamlm+mkl") if p in peers]
            oracle = {}
            for peer in task_peers:
                N, T = block_shape(task, peer)
                if (N, T) not in oracle:
                    oracle[(N, T)] = oracle_losses(weights, batches(ids, N, T, 2), task == "train")
            fwd = shape.fwd_flop_per_token()
            per_tok = 3 * fwd if task == "train" else fwd
            # aim for ~0.5 s per repetition for the fastest peer
            rep_tokens = max(700, int(results["sgemm_gflops"][str(H)] * 1e9 * 0.25 / per_tok))
            workers = {}
            try:
                workers["sgemm"] = Peer({"task": task, "peer": "sgemm", "H": H,
                                         "flop_per_rep": 0.25e9 * results["sgemm_gflops"][str(H)]},
                                        args.threads)
                for peer in task_peers:
                    N, T = block_shape(task, peer)
                    spec = {"task": task, "peer": peer, "weights": str(wf),
                            "oracle": oracle[(N, T)], "reps": reps, "warmup": 1,
                            "rep_tokens": rep_tokens}
                    if _peer_base(peer) in ("numpy", "reference"):
                        spec["rep_tokens"] = max(N * T, rep_tokens // 4)
                    w = Peer(spec, args.threads)
                    workers[peer] = w
                    h = w.head
                    if not h["ok"]:
                        raise SystemExit(f"{peer} {task} H={H}: loss {h['losses']} != oracle "
                                         f"{h['oracle']} (err {h['err']:.2e})")
                times = {p: [] for p in ["sgemm"] + task_peers}
                peers_all = ["sgemm"] + task_peers
                for r in range(reps):
                    # rotate, never reverse: with the order reversed every other
                    # repetition, the peers at both ends ran twice back to back at
                    # each boundary (warm caches) and came out ~10% faster at D=H=650
                    k = r % len(peers_all)
                    order = peers_all[k:] + peers_all[:k]
                    for peer in order:
                        # let the last peer's idle BLAS/OpenMP threads stop spinning
                        # (OpenBLAS and torch's OpenMP busy-wait after a call): the
                        # peer after the SGEMM one otherwise ran ~10% slower
                        time.sleep(args.pause)
                        times[peer].append(workers[peer].rep())
            finally:
                for w in workers.values():
                    w.close()
            gf = [workers["sgemm"].head["flop_per_rep"] / t / 1e9 for t in times["sgemm"]]
            results.setdefault("sgemm_same_time", []).append(
                {"H": H, "task": task, "gflops": gf, "median": float(np.median(gf))})
            print(f"H={H} {task:12s} SGEMM (interleaved): median {np.median(gf):.0f} GFLOP/s",
                  file=sys.stderr, flush=True)
            for peer in task_peers:
                res = dict(workers[peer].head, task=task, peer=peer, H=H, times=times[peer],
                           loadavg=os.getloadavg()[0])
                tps = [res["tokens_per_rep"] / t for t in res["times"]]
                print(f"H={H} {task:12s} {peer:13s}: median {np.median(tps):9.0f} tok/s"
                      f"  (check err {res['err']:.1e}, first call {res['first_call_s']:.2f}s)",
                      file=sys.stderr, flush=True)
                results["runs"].append(res)
    from streamlm.data.atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
