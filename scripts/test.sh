#!/usr/bin/env bash
# The test suite, as CI runs it (the README's second command, .ci/run):
# lint, the CLI's tests with the oldest typer, the whole suite, then the kernel, model
# and scorer suites again with numba's JIT off (the kernels as plain Python: what the
# compiled code must equal).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
# The CLI with the oldest typer and rich that pyproject.toml allows (and the click that
# typer pins), put in front of this environment: start-up, every --help, a small score.
floor() { sed -n "s/^ *\"$1>=\([0-9.]*\)\".*/\1/p" pyproject.toml; }
oldest=$(mktemp -d)
trap 'rm -rf "$oldest"' EXIT
python -m pip install -q --disable-pip-version-check --target "$oldest" \
    "typer==$(floor typer)" "rich==$(floor rich)"
PYTHONPATH="$oldest" python -c 'import sys, click, rich, typer
assert all(m.__file__.startswith(sys.argv[1]) for m in (typer, click, rich)), "not them"' "$oldest"
PYTHONPATH="$oldest" python -m pytest -q -p no:cacheprovider \
    tests/test_cli.py tests/test_score_cli.py
python -m pytest -q "$@"
NUMBA_DISABLE_JIT=1 python -m pytest -q -W ignore::RuntimeWarning --durations=10 \
    tests/test_kernels.py tests/test_model.py tests/test_engine.py tests/test_tokenizer.py \
    tests/test_score.py tests/test_class_softmax.py tests/test_threads.py tests/test_pipeline.py \
    tests/test_cells.py
