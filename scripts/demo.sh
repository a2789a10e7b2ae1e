#!/usr/bin/env bash
# The main job on the demo corpus that streamlm generates under data/:
# generate text -> prepare shards -> train a small model -> score the test file.
set -euo pipefail
cd "$(dirname "$0")/.."
D=data/demo
streamlm demo-corpus "$D"
streamlm prepare "$D/train.txt" --out "$D/train"
streamlm prepare "$D/valid.txt" --out "$D/valid" --vocab "$D/train/vocab.txt"
streamlm train "$D/train" --valid "$D/valid" --out "$D/model.npz" \
    --embed 64 --hidden 64 --batch 16 --bptt 20 --epochs 3 --optimizer adam --lr 0.005 \
    --log "$D/train_log.jsonl"
streamlm score "$D/model.npz" "$D/test.txt" --output "$D/test_lines.parquet" --level line
streamlm generate "$D/model.npz" --words 30 --seed 1
