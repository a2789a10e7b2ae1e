"""Dask scale-out: tokens/s of `streamlm score --dask local:1` against `local:2`.

Splits PTB train into 4 text shards, scores them with a random-init model
(V=10000, D=H=100) first locally (the reference totals), then on LocalClusters
of 1 and 2 single-threaded worker processes, checks the merged totals equal the
local ones (1e-9 relative), and only then reports wall times. The wall time
includes the cluster start-up and each worker's model load; the `score` time
excludes them (the slowest task's own seconds).

    python -m bench.bench_dask [--shards 4] [--out bench/results/dask.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, SHARED, provenance, this_command

PTB = SHARED / "ptb"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--out", default=str(RESULTS / "dask.json"))
    args = ap.parse_args()

    from streamlm.data.vocab import Vocab
    from streamlm.jobs.distributed import score_dask
    from streamlm.jobs.prepare import prepare
    from streamlm.jobs.score import score
    from streamlm.nn.params import ModelConfig, Params, save_model

    tmp = Path(tempfile.mkdtemp(prefix="streamlm-dask-bench-"))
    lines = gzip.open(PTB / "ptb.train.txt.gz", "rt").read().splitlines(keepends=True)
    prepare([str(PTB / "ptb.train.txt.gz")], tmp / "vocab")
    vocab = Vocab.load(tmp / "vocab" / "vocab.txt")
    model = tmp / "m.npz"
    save_model(model, Params.init(ModelConfig(V=len(vocab), D=100, H=100), seed=0), vocab.words)
    per = math.ceil(len(lines) / args.shards)
    inputs = []
    for k in range(args.shards):
        p = tmp / f"shard-{k}.txt"
        p.write_text("".join(lines[k * per:(k + 1) * per]))
        inputs.append(str(p))

    t0 = time.perf_counter()
    local = score(str(model), inputs, engine="numba", batch=1).summary
    t_local = time.perf_counter() - t0
    results = {"inputs": len(inputs), "tokens": local["tokens"],
               "local_1_process_batch1_s": round(t_local, 2), "runs": []}
    for n in (1, 2):
        t0 = time.perf_counter()
        res = score_dask(str(model), inputs, f"local:{n}")
        wall = time.perf_counter() - t0
        s = res.summary
        assert not res.failed, res.failed
        assert s["tokens"] == local["tokens"]
        assert math.isclose(s["logprob"], local["logprob"], rel_tol=1e-9), (s, local)
        results["runs"].append({"workers": n, "wall_s": round(wall, 2),
                                "tokens_per_s": round(s["tokens"] / wall)})
        print(f"local:{n}: {wall:.1f} s wall, {s['tokens'] / wall:,.0f} tokens/s",
              file=sys.stderr)
    r1, r2 = results["runs"]
    results["speedup_2_over_1"] = round(r1["wall_s"] / r2["wall_s"], 2)
    results["cpu_count"] = os.cpu_count()
    results["provenance"] = provenance(this_command("bench_dask"), 1)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
