#!/usr/bin/env bash
# The test suite, as CI runs it (the README's second command, .ci/run):
# lint, the whole suite, then the kernel, model and scorer suites again with
# numba's JIT off (the kernels as plain Python: what the compiled code must equal).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
python -m pytest -q "$@"
NUMBA_DISABLE_JIT=1 python -m pytest -q -W ignore::RuntimeWarning \
    tests/test_kernels.py tests/test_model.py tests/test_engine.py tests/test_tokenizer.py \
    tests/test_score.py tests/test_class_softmax.py tests/test_threads.py tests/test_pipeline.py
