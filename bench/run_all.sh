#!/usr/bin/env bash
# Run every benchmark and write bench/RESULTS.md.
#   bench/run_all.sh           full run (tens of minutes on 2 cores)
#   bench/run_all.sh --quick   D=H=100 only, fewer repetitions, no 10M-token memory run
# Needs the optional peers: pip install -e '.[bench]' (torch==2.13.0, psutil, mkl)
set -euo pipefail
cd "$(dirname "$0")/.."
export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-2}"
if [[ "${1:-}" == "--quick" ]]; then
  python bench/bench_speed.py --quick
  python bench/bench_startup.py --runs 3 --cold-runs 1
  python bench/bench_kernels.py --quick
  python bench/bench_memory.py --sizes 1
else
  python bench/bench_speed.py
  python bench/bench_speed.py --threads 1 --reps 6 --out bench/results_speed_t1.json
  python bench/bench_startup.py
  python bench/bench_kernels.py
  python bench/bench_split.py
  python bench/bench_memory.py --sizes 1,11
  python bench/bench_subword.py
  python bench/bench_shakespeare.py
fi
python bench/report.py
