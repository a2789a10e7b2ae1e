"""One stream's recurrence on one thread against two (streamlm.nn.cells.TanhRNN.advance_split).

    python -m bench.bench_split [--reps 9] [--steps 2048] [--hidden 100,192,256,384,512,650,1024]

For each H: checks that the two-thread recurrence writes the same bytes as the
one-thread kernel (float32, with resets), then times both in turn (the order
swapped every repetition; the median of --reps), each call a block of --steps
steps of one stream, the panels of Wh made once outside. Prints microseconds
per step and the ratio one thread / two threads, measured in the same run; the
ratio is what sets streamlm.compute.plan.SPLIT_MIN_H. Writes bench/results/split.json (with its
provenance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, provenance, this_command
from streamlm.compute import kernels as K
from streamlm.compute import threads
from streamlm.nn.cells import Block, TanhRNN, panels
from streamlm.nn.params import ModelConfig, Params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--steps", type=int, default=2048)
    ap.add_argument("--hidden", default="100,192,256,384,512,650,1024")
    ap.add_argument("--out", default=str(RESULTS / "split.json"))
    a = ap.parse_args()
    threads.set_num_threads(2)
    pl = threads.pool()
    rows = []
    for H in [int(h) for h in a.hidden.split(",")]:
        rng = np.random.default_rng(H)
        T = a.steps
        Wh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)
        xw = rng.standard_normal((T, 1, H)).astype(np.float32)
        reset = np.zeros((T, 1), dtype=np.uint8)
        reset[::500] = 1
        P = panels(Wh)
        hs1 = np.zeros((T + 1, 1, H), np.float32)
        hs2 = np.zeros((T + 1, 1, H), np.float32)
        cell = TanhRNN(Params.init(ModelConfig(V=2, D=H, H=H), dtype=np.float32), 0)
        blk = Block(1, T, xw, None, hs2, reset, False, P)  # (the cell reads only the block)

        def one(hs1=hs1, xw=xw, P=P, reset=reset):
            K.rnn_forward_rows(hs1[1:], xw, hs1[0], P, reset, 0, 1)

        def two(cell=cell, blk=blk):
            cell.advance_split(blk, pl)

        one()
        two()
        if hs1.tobytes() != hs2.tobytes():
            raise SystemExit(f"H={H}: the two-thread recurrence differs from the one-thread one")
        t1, t2 = [], []
        for i in range(a.reps):
            for f, ts in ((one, t1), (two, t2)) if i % 2 == 0 else ((two, t2), (one, t1)):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
        us1, us2 = np.median(t1) / T * 1e6, np.median(t2) / T * 1e6
        ratio = float(np.median(np.array(t1) / np.array(t2)))
        rows.append({"H": H, "steps": T, "one_thread_us_per_step": us1,
                     "two_threads_us_per_step": us2, "one_over_two": ratio,
                     "wh_kb": H * H * 4 / 1024})
        print(f"H={H:5d} (Wh {H * H * 4 / 1024:6.0f} KB): one thread {us1:7.2f} us/step, two "
              f"{us2:7.2f} us/step, one/two {ratio:.2f}x", flush=True)
    Path(a.out).write_text(json.dumps({"reps": a.reps, "rows": rows, "provenance": provenance(
        this_command("bench_split"), 2)}, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
