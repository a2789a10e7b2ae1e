import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyarrow import feather

from streamlm.data.batcher import Batcher
from streamlm.data.shards import open_dataset
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError
from streamlm.jobs.prepare import prepare


# ------------------------------------------------------------- helpers --
def write_parquet(path, ids, row_group, column="token_id", type=None):
    type = type or pa.int32()
    pq.write_table(pa.table({column: pa.array(ids, type=type)}), path, row_group_size=row_group)


def write_feather(path, ids, chunk, column="token_id"):
    feather.write_feather(pa.table({column: pa.array(ids, type=pa.int64())}), path,
                          chunksize=chunk)


def naive_batches(corpus, N, T, nbatches, time_idx=0):
    """The book's train_custom_loop batching, in memory."""
    xs_all, ts_all = corpus[:-1], corpus[1:]
    data_size = len(xs_all)
    jump = data_size // N
    offsets = [i * jump for i in range(N)]
    out = []
    for _ in range(nbatches):
        bx = np.empty((N, T), dtype=np.int32)
        bt = np.empty((N, T), dtype=np.int32)
        for t in range(T):
            for i, off in enumerate(offsets):
                bx[i, t] = xs_all[(off + time_idx) % data_size]
                bt[i, t] = ts_all[(off + time_idx) % data_size]
            time_idx += 1
        out.append((bx, bt))
    return out


# --------------------------------------------------------- property test --
@st.composite
def layouts(draw):
    L = draw(st.integers(2, 300))
    V = draw(st.integers(2, 50))
    seed = draw(st.integers(0, 2**31 - 1))
    corpus = np.random.default_rng(seed).integers(0, V, L).astype(np.int32)
    cuts = sorted(draw(st.lists(st.integers(1, L - 1), max_size=4, unique=True)))
    files = []
    for lo, hi in zip([0, *cuts], [*cuts, L]):
        files.append((hi - lo, draw(st.integers(1, 64)), draw(st.sampled_from(["pq", "fe"]))))
    N = draw(st.integers(1, max(1, min(8, (L - 1)))))
    T = draw(st.integers(1, max(1, (L - 1) // N)))
    return corpus, V, files, N, T


@settings(max_examples=50, deadline=None)
@given(layout=layouts(), nb=st.integers(1, 12), split=st.integers(0, 12))
def test_batcher_equals_naive(layout, nb, split):
    corpus, V, files, N, T = layout
    with tempfile.TemporaryDirectory() as d:
        paths, pos = [], 0
        for k, (n, rg, kind) in enumerate(files):
            p = Path(d) / f"f{k:02d}.{'parquet' if kind == 'pq' else 'arrow'}"
            (write_parquet if kind == "pq" else write_feather)(p, corpus[pos:pos + n], rg)
            paths.append(str(p))
            pos += n
        ds = open_dataset(paths, vocab_size=V)
        assert ds.num_tokens == len(corpus)
        # sequential and random access agree with the corpus
        got = np.concatenate([c.ids for c in ds.iter_chunks(7)])
        np.testing.assert_array_equal(got, corpus)
        a = min(split, len(corpus))
        np.testing.assert_array_equal(ds.read(a, len(corpus) - a), corpus[a:])
        assert [c.start for c in ds.iter_chunks(5, start=a)][:1] in ([a], [])

        b = Batcher(ds, N, T)
        assert b.iters_per_epoch == (len(corpus) - 1) // (N * T)
        want = naive_batches(corpus, N, T, nb + split)
        for bx, bt in want[:split]:
            xs, ts = b.next_batch()
            assert xs.flags.c_contiguous and xs.dtype == np.int32 and xs.shape == (N, T)
            np.testing.assert_array_equal(xs, bx)
            np.testing.assert_array_equal(ts, bt)
        state = json.loads(json.dumps(b.state()))
        # resume in a fresh dataset + batcher
        b2 = Batcher(open_dataset(paths, vocab_size=V), N, T)
        b2.restore(state)
        for bx, bt in want[split:]:
            xs, ts = b2.next_batch()
            np.testing.assert_array_equal(xs, bx)
            np.testing.assert_array_equal(ts, bt)


def test_batcher_book_example():
    # hand-derived from the book's formula: L=11, L'=10, N=2, T=3, jump=5
    corpus = np.arange(11, dtype=np.int32)
    with tempfile.TemporaryDirectory() as d:
        write_parquet(Path(d) / "a.parquet", corpus, 4)
        b = Batcher(open_dataset(d, vocab_size=11), 2, 3)
        assert b.iters_per_epoch == 1
        xs, ts = b.next_batch()
        assert xs.tolist() == [[0, 1, 2], [5, 6, 7]]
        assert ts.tolist() == [[1, 2, 3], [6, 7, 8]]
        xs, ts = b.next_batch()
        assert xs.tolist() == [[3, 4, 5], [8, 9, 0]]
        assert ts.tolist() == [[4, 5, 6], [9, 10, 1]]  # wrap: target of xs=0 is corpus[1]
        with pytest.raises(InputError, match="needs at least 13"):
            Batcher(open_dataset(d, vocab_size=11), 3, 4)
        with pytest.raises(UsageError, match="time_idx|fingerprint"):
            b.restore({**b.state(), "fingerprint": "x"})
        with pytest.raises(UsageError, match="bptt"):
            Batcher(open_dataset(d, vocab_size=11), 2, 2).restore(b.state())


def test_batcher_doc_start_list_column(tmp_path):
    docs = [[1, 2, 3], [], [4, 5], [6, 7, 8, 9]]
    pq.write_table(pa.table({"token_id": pa.array(docs, type=pa.list_(pa.int16()))}),
                   tmp_path / "d.parquet", row_group_size=2)
    ds = open_dataset(tmp_path / "d.parquet", vocab_size=10)
    assert ds.has_docs and ds.num_tokens == 9
    chunks = list(ds.iter_chunks(100))
    assert np.concatenate([c.ids for c in chunks]).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert np.flatnonzero(np.concatenate([c.doc_start for c in chunks])).tolist() == [0, 3, 5]
    b = Batcher(ds, 2, 2)
    xs, _ = b.next_batch()
    assert xs.tolist() == [[1, 2], [5, 6]]
    assert b.doc_start.tolist() == [[True, False], [False, True]]
    assert not b.doc_start.flags.writeable


# ----------------------------------------------------------- prepared dir --
@pytest.fixture
def prepared(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a b c\n\nd e\nf\n\n\ng h i j\n" * 50)
    out = tmp_path / "prep"
    m = prepare([str(text)], out, shard_tokens=97, docs="blank-line", row_group_tokens=16)
    return out, m


def test_prepared_roundtrip(prepared):
    out, m = prepared
    ds = open_dataset(out)
    assert ds.has_docs and ds.vocab is not None
    assert ds.num_tokens == m["num_tokens"] == 50 * (10 + 4)
    ids = np.concatenate([c.ids for c in ds.iter_chunks(1000)])
    words = ds.vocab.decode(ids)
    assert words[:6] == ["a", "b", "c", "<eos>", "d", "e"]
    docs = np.concatenate([c.doc_start for c in ds.iter_chunks(1000)])
    # 2 blank-line runs per repetition (the last doc runs into the next repetition)
    assert docs.sum() == m["num_documents"] == 1 + 2 * 50
    assert len(m["shards"]) == -(-ds.num_tokens // 97)
    assert open_dataset(out, verify=True).num_tokens == ds.num_tokens
    sources = {c.source for c in ds.iter_chunks(10)}
    assert sources == {s["file"] for s in m["shards"]}


def test_vocab_mismatch(prepared):
    out, _ = prepared
    other = Vocab.from_words(["<unk>", "<eos>", "zz"])
    with pytest.raises(InputError, match=r"vocab\.txt: the given vocabulary .* differs"):
        open_dataset(out, vocab=other)
    (out / "vocab.txt").write_text("<unk>\n<eos>\nb\na\nc\nd\ne\nf\ng\nh\ni\nj\n")
    with pytest.raises(InputError, match=r"vocab\.txt: vocabulary does not match the manifest"):
        open_dataset(out)


def test_manifest_checks(prepared):
    out, m = prepared
    mp = out / "manifest.json"
    bad = dict(m, shards=[dict(m["shards"][0], file="../escape.parquet")])
    mp.write_text(json.dumps(bad))
    with pytest.raises(InputError, match="not a plain file name"):
        open_dataset(out)
    bad = dict(m, shards=[dict(m["shards"][0], tokens=5)])
    mp.write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"shard-00000\.parquet: shard has 97 tokens"):
        open_dataset(out)
    mp.write_text("{")
    with pytest.raises(InputError, match="unreadable manifest"):
        open_dataset(out)
    mp.unlink()
    with pytest.raises(InputError, match="incomplete `prepare`"):
        open_dataset(out)


def test_shard_sha_verify(prepared):
    out, m = prepared
    p = out / m["shards"][1]["file"]
    t = pq.read_table(p)
    ids = t.column("token_id").to_numpy().copy()
    ids[0] = (ids[0] + 1) % 12
    pq.write_table(pa.table({"token_id": pa.array(ids, pa.int32()),
                             "doc_start": t.column("doc_start")}), p, row_group_size=16)
    if p.stat().st_size == m["shards"][1]["bytes"]:
        with pytest.raises(InputError, match="sha256 differs"):
            open_dataset(out, verify=True)
    else:
        with pytest.raises(InputError, match="replaced or incomplete"):
            open_dataset(out)


# ------------------------------------------------------------ validation --
def test_missing_column(tmp_path):
    pq.write_table(pa.table({"ids": [1, 2], "other": [3, 4]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"x\.parquet: no column 'token_id'; available "
                                         r"columns: ids, other"):
        open_dataset(tmp_path / "x.parquet")
    assert open_dataset(tmp_path / "x.parquet", column="ids").num_tokens == 2


def test_non_integer_column(tmp_path):
    pq.write_table(pa.table({"token_id": [1.0, 2.0]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"x\.parquet: column 'token_id' has type double"):
        open_dataset(tmp_path)
    feather.write_feather(pa.table({"token_id": ["a"]}), tmp_path / "y.feather")
    with pytest.raises(InputError, match=r"y\.feather: column 'token_id' has type string"):
        open_dataset(tmp_path / "y.feather")


def test_nulls(tmp_path):
    write_parquet(tmp_path / "n.parquet", [1, 2, 3, None, 5], 2)
    ds = open_dataset(tmp_path / "n.parquet", vocab_size=10)
    assert ds.num_tokens == 5
    with pytest.raises(InputError, match=r"n\.parquet: row group 1, row 1 \(file row 3\): null"):
        list(ds.iter_chunks(10))
    pq.write_table(pa.table({"token_id": pa.array([[1], [2, None]], pa.list_(pa.int32()))}),
                   tmp_path / "l.parquet")
    with pytest.raises(InputError, match=r"l\.parquet: row group 0, row 1 .*null token id"):
        open_dataset(tmp_path / "l.parquet").read(0, 3)


@pytest.mark.parametrize("bad,V", [(-1, 10), (10, 10), (2**31, None)])
def test_ids_out_of_range(tmp_path, bad, V):
    write_parquet(tmp_path / "r.parquet", [1, 2, 3, 4, bad, 5], 3, type=pa.int64())
    ds = open_dataset(tmp_path / "r.parquet", vocab_size=V)
    with pytest.raises(InputError, match=rf"r\.parquet: row group 1, row 1 \(file row 4\): "
                                         rf"token id {bad} outside"):
        assert ds.read(0, 2).tolist() == [1, 2]  # block 0 is fine
        Batcher(ds, 1, 5).next_batch()


def test_ids_out_of_range_feather_list(tmp_path):
    feather.write_feather(pa.table({"token_id": pa.array([[1, 2], [3, 99]])}),
                          tmp_path / "f.arrow")
    ds = open_dataset(tmp_path / "f.arrow", vocab=Vocab.from_words(["<unk>", "<eos>", "a", "b"]))
    with pytest.raises(InputError, match=r"f\.arrow: record batch 0, row 1: token id 99 outside"):
        list(ds.iter_chunks(4))


def test_empty_dataset(tmp_path):
    write_parquet(tmp_path / "e.parquet", [], 10)
    with pytest.raises(InputError, match=r"e\.parquet: empty dataset"):
        open_dataset(tmp_path / "e.parquet")
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(InputError, match=r"nothing_here: no \.parquet"):
        open_dataset(tmp_path / "nothing_here")


def test_corrupt_and_truncated(tmp_path):
    write_parquet(tmp_path / "good.parquet", np.arange(1000), 100)
    blob = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=r"trunc\.parquet: cannot read Parquet"):
        open_dataset(tmp_path / "trunc.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"hello world, not parquet")
    with pytest.raises(InputError, match=r"junk\.parquet: not a Parquet or Arrow"):
        open_dataset(tmp_path / "junk.parquet")
    # data pages damaged but footer intact: caught when the block is read
    bad = bytearray(blob)
    bad[8:400] = b"\x00" * 392
    (tmp_path / "pages.parquet").write_bytes(bytes(bad))
    with pytest.raises(InputError, match=r"pages\.parquet"):
        ds = open_dataset(tmp_path / "pages.parquet", vocab_size=1000)
        list(ds.iter_chunks(1000))
    with pytest.raises(InputError, match=r"missing\.parquet: no such file"):
        open_dataset(tmp_path / "missing.parquet")


def test_explicit_order_kept(tmp_path):
    write_parquet(tmp_path / "a.parquet", [1, 1], 5)
    write_parquet(tmp_path / "b.parquet", [2, 2], 5)
    ds = open_dataset([tmp_path / "b.parquet", tmp_path / "a.parquet"])
    assert ds.read(0, 4).tolist() == [2, 2, 1, 1]
    assert open_dataset(tmp_path).read(0, 4).tolist() == [1, 1, 2, 2]
