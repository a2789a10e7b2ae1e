"""Fuzzing (hypothesis, bounded in time): arbitrary bytes into the text tokeniser
and mutated files into the shard reader. Each must either work or raise
StreamlmError (one clear line); nothing else may escape, and ids handed out are
always in range."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamlm.data.shards import open_dataset
from streamlm.data.text import iter_pieces
from streamlm.data.tokenizer import encode
from streamlm.data.vocab import Vocab
from streamlm.errors import StreamlmError

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
VOCAB = Vocab(["<unk>", "<eos>", "a", "b", "é", "日"])


def _encode_all(path, errors):
    total = 0
    for blk in encode(iter_pieces(path, errors=errors), VOCAB, docs=False):
        ids = blk.ids
        assert ids.dtype == np.int32
        assert ids.size == 0 or (ids.min() >= 0 and ids.max() < len(VOCAB))
        total += ids.size
    return total


@FUZZ
@given(data=st.binary(max_size=400), gz=st.booleans(), cut=st.integers(0, 400))
def test_tokeniser_never_crashes(tmp_path_factory, data, gz, cut):
    d = tmp_path_factory.mktemp("fz")
    p = d / ("x.txt.gz" if gz else "x.txt")
    raw = gzip.compress(data) if gz else data
    if gz and cut:
        raw = raw[: max(0, len(raw) - cut % len(raw))]  # truncated or intact
    p.write_bytes(raw)
    for errors in ("strict", "replace"):
        try:
            n = _encode_all(p, errors)
        except StreamlmError as e:
            assert str(p) in str(e)
            continue
        assert n >= data.count(b"\n")  # at least one <eos> per line


def _parquet_bytes(ids, row_group):
    buf = io.BytesIO()
    pq.write_table(pa.table({"token_id": pa.array(ids, pa.int32())}), buf,
                   row_group_size=row_group)
    return buf.getvalue()


def _feather_bytes(ids):
    buf = io.BytesIO()
    feather.write_feather(pa.table({"token_id": pa.array(ids, pa.int32())}), buf)
    return buf.getvalue()


@FUZZ
@given(ids=st.lists(st.integers(-3, 9), min_size=0, max_size=60),
       row_group=st.integers(1, 20), arrow=st.booleans(),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
       cut=st.integers(0, 64))
def test_shard_reader_never_crashes(tmp_path_factory, ids, row_group, arrow, flips, cut):
    raw = bytearray(_feather_bytes(ids) if arrow else _parquet_bytes(ids, row_group))
    for pos, x in flips:
        raw[pos % len(raw)] ^= x
    if cut:
        raw = raw[: max(0, len(raw) - cut)]
    p = tmp_path_factory.mktemp("fz") / ("x.arrow" if arrow else "x.parquet")
    p.write_bytes(bytes(raw))
    V = 6
    try:
        ds = open_dataset([str(p)], vocab_size=V)
        seen = 0
        for chunk in ds.iter_chunks(7):
            assert chunk.ids.dtype == np.int32
            assert chunk.ids.min() >= 0 and chunk.ids.max() < V
            seen += chunk.ids.size
        assert seen == ds.num_tokens
    except StreamlmError as e:
        assert str(p) in str(e)
