#!/usr/bin/env bash
# The README's "Filtering a corpus" workflow on a real corpus: PTB valid + test as
# documents of 10 lines each (JSONL and Parquet), scored, reported, bucketed and
# joined back with DuckDB.   bash bench/filter_ptb.sh MODEL.npz [WORKDIR]
set -euo pipefail
model=$(realpath "$1")
work=${2:-$(mktemp -d /tmp/streamlm-filter.XXXXXX)}
here=$(cd "$(dirname "$0")" && pwd)
ptb=${STREAMLM_SHARED_DATA:-$here/../../shared/data}/ptb
mkdir -p "$work" && cd "$work"
python - "$ptb" <<'PY'
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
ptb = sys.argv[1]
lines = [l.strip() for f in ("ptb.valid.txt", "ptb.test.txt")
         for l in open(f"{ptb}/{f}", encoding="utf-8")]
rows = [{"id": f"ptb-{k // 10:05d}", "text": "\n".join(lines[k:k + 10])}
        for k in range(0, len(lines), 10)]
with open("ptb_docs.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
pq.write_table(pa.Table.from_pylist(rows), "ptb_docs.parquet")
PY
streamlm score "$model" ptb_docs.parquet --output scores.parquet --keep id --max-oov-rate 1
streamlm report scores.parquet --cutoffs cutoffs.json --plot histogram.png
streamlm score "$model" ptb_docs.jsonl --cutoffs cutoffs.json --split-buckets buckets/ \
    --output scored.jsonl --keep id --max-oov-rate 1 > /dev/null
wc -l buckets/*.jsonl
python - <<'PY'
import duckdb
print(duckdb.sql("""
    SELECT s.bucket, count(*) AS documents, round(avg(s.perplexity), 1) AS mean_ppl,
           sum(s.tokens) AS tokens
    FROM 'ptb_docs.parquet' d JOIN read_json_auto('scored.jsonl') s USING (id)
    GROUP BY 1 ORDER BY 3"""))
PY
echo "outputs in $work"
