"""The cost of one hand-off to streamlm's threads: streamlm.compute.threads.Pool against a
ThreadPoolExecutor doing the same (what Pool used before it spun).

    python -m bench.bench_pool [--rounds 7] [--maps 3000]

- ``wake-up``: a round trip between two threads over two locks (each waits
  asleep): what waking a sleeping thread costs on this machine;
- ``empty map``: ``map`` of two tasks that only write their index into an array,
  one on the caller, one on the worker (checked: both ran, every time);
- ``task map``: the same with one call of a 100 us kernel in each task (numba,
  nogil, each thread on its own buffer).

Rounds alternate the two pools (A B A B ...); the figures are medians of the
rounds. Writes bench/results/pool.json (with its provenance).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import RESULTS, provenance, this_command


class ExecutorPool:
    """streamlm.compute.threads.Pool as it was: one worker of a ThreadPoolExecutor."""

    def __init__(self, threads: int):
        self.threads = threads
        self._ex = ThreadPoolExecutor(threads - 1)

    def map(self, fn, ranges):
        futs = [self._ex.submit(fn, *r) for r in ranges[1:]]
        try:
            fn(*ranges[0])
        finally:
            errs = [f.exception() for f in futs]
        for e in errs:
            if e is not None:
                raise e

    def close(self):
        self._ex.shutdown()


def wake_up_us(n: int = 3000) -> float:
    a, b = threading.Lock(), threading.Lock()
    a.acquire()
    b.acquire()

    def other():
        for _ in range(n):
            a.acquire()
            b.release()

    t = threading.Thread(target=other)
    t.start()
    t0 = time.perf_counter()
    for _ in range(n):
        a.release()
        b.acquire()
    dt = time.perf_counter() - t0
    t.join()
    return dt / n * 1e6


def map_us(pool, maps: int, work) -> float:
    """us per map of two tasks; checks that both tasks ran in every map."""
    seen = np.zeros(2, dtype=np.int64)

    def task(i):
        work(i)
        seen[i] += 1

    for _ in range(50):
        pool.map(task, [(0,), (1,)])
    seen[:] = 0
    t0 = time.perf_counter()
    for _ in range(maps):
        pool.map(task, [(0,), (1,)])
    dt = time.perf_counter() - t0
    if seen.tolist() != [maps, maps]:
        raise AssertionError(f"tasks ran {seen.tolist()} times, not {maps} each")
    return dt / maps * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--maps", type=int, default=3000)
    ap.add_argument("--out", default=str(RESULTS / "pool.json"))
    args = ap.parse_args(argv)

    from streamlm.compute import kernels as K
    from streamlm.compute.threads import Pool

    small = np.zeros(1 << 14, dtype=np.float32)
    K.sum_squares(small)
    n = int(len(small) * 100e-6 / max(1e-9, _time(lambda: K.sum_squares(small))))
    bufs = [np.zeros(n, dtype=np.float32) for _ in range(2)]  # one per thread

    def kernel(i=0):  # one call of about 100 us, without the GIL
        K.sum_squares(bufs[i])

    new, old = Pool(2), ExecutorPool(2)
    if new.threads < 2:
        raise SystemExit("streamlm's pool runs on one thread here (no BLAS to hold)")
    rows = {"wake-up round trip": [], "empty map, Pool": [], "empty map, executor": [],
            "task map, Pool": [], "task map, executor": []}
    for _ in range(args.rounds):
        rows["wake-up round trip"].append(wake_up_us())
        for name, pool in (("Pool", new), ("executor", old)):
            rows[f"empty map, {name}"].append(map_us(pool, args.maps, lambda i: None))
            rows[f"task map, {name}"].append(map_us(pool, args.maps // 10, kernel))
    new.close()
    old.close()
    med = {k: float(np.median(v)) for k, v in rows.items()}
    res = {"unit": "us", "median": med, "all": rows,
           "task_kernel_us": _time(kernel) * 1e6,
           "ratio_executor_over_pool": {
               "empty map": med["empty map, executor"] / med["empty map, Pool"],
               "task map": med["task map, executor"] / med["task map, Pool"]},
           "provenance": provenance(this_command("bench_pool"), 2)}
    for k, v in med.items():
        print(f"{k:22s} {v:8.1f} us")
    print(f"one task's kernel      {res['task_kernel_us']:8.1f} us")
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")


def _time(fn, n: int = 200) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


if __name__ == "__main__":
    main()
