"""Where one training step / scoring call goes: per-phase wall and CPU time.

    python -m bench.profile_step [--hidden 100] [--task train|score_many|score_single]
                                 [--torch] [--steps 20]

streamlm: every parallel phase of streamlm.nn.model (each ``threads.Pool.map`` call,
named after the function it runs), the serial glue between them, and the
optimiser kernels. CPU time is the process CPU time over the phase: CPU/wall
near the thread count means both threads were busy, near 1 means one was
waiting (or the machine is oversubscribed). With --torch, the top operators
of torch.profiler for the same step. Prints a table (markdown) on stdout.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

from bench.common import Shape, batches, load_weights, ptb_ids, weights_file


def profile_streamlm(weights, task, steps, N, T):
    from bench.streamlm_peer import StreamlmScorer, StreamlmTrainer
    from streamlm.compute import kernels as K
    from streamlm.compute.threads import Pool
    from streamlm.nn import model as Mm

    acc = defaultdict(lambda: [0.0, 0.0, 0])
    orig_map = Pool.map

    def timed_map(self, fn, ranges):
        t0, c0 = time.perf_counter(), time.process_time()
        orig_map(self, fn, ranges)
        a = acc[f"map:{getattr(fn, '__name__', 'fn')}"]
        a[0] += time.perf_counter() - t0
        a[1] += time.process_time() - c0
        a[2] += 1

    def wrap(name, f):
        def g(*args, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            r = f(*args, **kw)
            a = acc[name]
            a[0] += time.perf_counter() - t0
            a[1] += time.process_time() - c0
            a[2] += 1
            return r
        return g

    obj = StreamlmTrainer(weights) if task == "train" else StreamlmScorer(weights)
    ids = ptb_ids()
    data = batches(ids, N, T, steps + 3)
    run = (lambda xs, ts: obj.step(xs, ts)) if task == "train" else obj.nll
    for xs, ts in data[:3]:
        run(xs, ts)
    Pool.map = timed_map
    saved = {}
    for name in ("sum_squares", "adam_update", "embedding_backward"):
        saved[name] = getattr(K, name)
        setattr(K, name, wrap(f"kernel:{name}", saved[name]))
    model_cls = Mm.RNNLM
    saved_fwd, saved_bwd, saved_nll = model_cls.forward, model_cls.backward, model_cls.nll
    model_cls.forward = wrap("RNNLM.forward (total)", saved_fwd)
    model_cls.backward = wrap("RNNLM.backward (total)", saved_bwd)
    model_cls.nll = wrap("RNNLM.nll (total)", saved_nll)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for xs, ts in data[3:]:
            run(xs, ts)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        Pool.map = orig_map
        for name, f in saved.items():
            setattr(K, name, f)
        model_cls.forward, model_cls.backward, model_cls.nll = saved_fwd, saved_bwd, saved_nll
    rows = [("whole step/call", wall, cpu, steps)]
    rows += [(k, v[0], v[1], v[2]) for k, v in sorted(acc.items(), key=lambda kv: -kv[1][0])]
    return rows


def profile_torch(weights, task, steps, N, T):
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.torch_ref import TorchScorer, TorchTrainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    obj = TorchTrainer(weights) if task == "train" else TorchScorer(weights)
    run = obj.step if task == "train" else obj.nll
    data = batches(ptb_ids(), N, T, steps + 3)
    for xs, ts in data[:3]:
        run(xs, ts)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for xs, ts in data[3:]:
            run(xs, ts)
    wall = time.perf_counter() - t0
    return wall, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=100, help="D = H.")
    ap.add_argument("--task", default="train", choices=["train", "score_many", "score_single"])
    ap.add_argument("--steps", type=int, default=20, help="Steps / calls profiled.")
    ap.add_argument("--torch", action="store_true", help="Also profile the PyTorch peer.")
    args = ap.parse_args(argv)
    N, T = {"train": (20, 35), "score_many": (20, 100), "score_single": (1, 4096)}[args.task]
    weights = load_weights(weights_file(Shape(10000, args.hidden, args.hidden)))
    rows = profile_streamlm(weights, args.task, args.steps, N, T)
    from streamlm.compute import blas

    print(f"### streamlm {args.task}, D=H={args.hidden}, N={N}, T={T}, {args.steps} calls, "
          f"BLAS: {blas.name()}\n")
    print("| phase | calls | wall ms / call | CPU/wall |")
    print("|---|---:|---:|---:|")
    for name, wall, cpu, n in rows:
        per = wall / max(1, n) if name != "whole step/call" else wall / args.steps
        print(f"| {name} | {n} | {per * 1e3:.2f} | {cpu / wall if wall else 0:.2f} |")
    if args.torch:
        tN, tT = (1, 256) if args.task == "score_single" else (N, T)
        wall, table = profile_torch(weights, args.task, args.steps, tN, tT)
        print(f"\n### torch {args.task}, N={tN}, T={tT}: {wall / args.steps * 1e3:.1f} ms / call "
              f"(under the profiler)\n\n```\n{table}\n```")


if __name__ == "__main__":
    main()
