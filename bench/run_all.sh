#!/usr/bin/env bash
# Run the main benchmarks and write bench/results/REPORT.md (each script writes its
# bench/results/*.json with its provenance; bench/README.md lists the others).
#   bash bench/run_all.sh           full run (tens of minutes on 2 cores)
#   bash bench/run_all.sh --quick   D=H=100 only, fewer repetitions, no 10M-token memory run
# Needs the optional peers: pip install -e '.[bench]' (torch==2.13.0, psutil, mkl)
set -euo pipefail
cd "$(dirname "$0")/.."
export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-2}"
if [[ "${1:-}" == "--quick" ]]; then
  python -m bench.bench_speed --quick
  python -m bench.bench_startup --runs 3 --cold-runs 1
  python -m bench.bench_kernels --quick
  python -m bench.bench_memory --sizes 1
else
  python -m bench.bench_speed
  python -m bench.bench_speed --threads 1 --reps 6 --out bench/results/speed_t1.json
  python -m bench.bench_startup
  python -m bench.bench_kernels
  python -m bench.bench_split
  python -m bench.bench_memory --sizes 1,11
  python -m bench.bench_subword
  python -m bench.bench_shakespeare
  python -m bench.bench_gated
fi
python -m bench.report
