import bz2
import gzip
import lzma

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from line_reference import per_line_pieces

from streamlm.data.text import _BOM, LineBatch, iter_lines, iter_pieces, open_binary
from streamlm.errors import InputError


def naive_lines(data: bytes):
    """(index, byte_offset, words) from the whole text at once."""
    out = []
    off = 0
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    for i, p in enumerate(parts):
        out.append((i, off, p.decode("utf-8").split()))
        off += len(p) + 1
    return out


def test_iter_lines_basic(tmp_path):
    data = b" a b \n\n  \nc\td\r\nlast"
    p = tmp_path / "t.txt"
    p.write_bytes(data)
    got = [tuple(x) for x in iter_lines(p)]
    assert got == naive_lines(data)
    assert got[-1] == (4, data.index(b"last"), ["last"])
    assert got[3][2] == ["c", "d"]


@pytest.mark.parametrize("opener,ext", [(gzip.open, ".gz"), (bz2.open, ".bz2"),
                                        (lzma.open, ".xz")])
def test_compressed_same_lines(tmp_path, opener, ext):
    data = "x y\nçé ü\n\nz\n".encode() * 100
    p = tmp_path / f"t.txt{ext}"
    with opener(p, "wb") as f:
        f.write(data)
    assert [tuple(x) for x in iter_lines(p)] == naive_lines(data)
    # magic bytes win without the extension
    q = tmp_path / "noext"
    q.write_bytes(p.read_bytes())
    assert [tuple(x) for x in iter_lines(q)] == naive_lines(data)


def test_extension_without_magic(tmp_path):
    p = tmp_path / "plain.gz"
    p.write_bytes(b"not gzip\n")
    with pytest.raises(InputError, match=r"plain\.gz.*not gz-compressed"):
        open_binary(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match=r"nope\.txt: no such file"):
        open_binary(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="is a directory"):
        open_binary(tmp_path)


def test_truncated_gzip(tmp_path):
    data = b"".join(b"word%d other\n" % i for i in range(50000))
    blob = gzip.compress(data)
    p = tmp_path / "t.txt.gz"
    p.write_bytes(blob[: len(blob) // 2])
    got = []
    with pytest.raises(InputError, match=r"t\.txt\.gz: line (\d+), byte (\d+): corrupt or trunc"
                       ) as e:
        for line in iter_lines(p):
            got.append(line)  # noqa: PERF402 (keep lines read before the error)
    # lines before the damage were handed out; the error names the line after them
    line_no, byte = map(int, e.value.position.replace("line ", "").replace("byte ", "")
                        .split(", "))
    assert len(got) > 1000 and line_no == len(got) + 1
    assert got[-1].byte_offset < byte <= len(data) // 2 + 10000
    assert [tuple(x) for x in got] == naive_lines(data)[: len(got)]


def test_corrupt_gzip_body(tmp_path):
    blob = bytearray(gzip.compress(b"hello world\n" * 1000))
    blob[30:40] = b"\xff" * 10
    p = tmp_path / "bad.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=r"bad\.gz: .*corrupt or truncated"):
        list(iter_lines(p))


def test_invalid_utf8_position(tmp_path):
    data = b"ok line\nsecond \xc3\xa9 fine\nthird has \xff here\n"
    p = tmp_path / "u.txt"
    p.write_bytes(data)
    bad = data.index(b"\xff")
    with pytest.raises(InputError, match=rf"u\.txt: line 3, byte {bad}: invalid UTF-8"):
        list(iter_lines(p))
    got = list(iter_lines(p, errors="replace"))
    assert got[2].words == ["third", "has", "\ufffd", "here"]


def test_invalid_utf8_in_long_line(tmp_path):
    data = b"ab " * 1000 + b"\xfe" + b" cd" * 10
    p = tmp_path / "u.txt"
    p.write_bytes(data)
    bad = data.index(b"\xfe")
    with pytest.raises(InputError, match=rf"line 1, byte {bad}:"):
        list(iter_pieces(p, block_size=64))


def test_nul_is_error(tmp_path):
    p = tmp_path / "n.txt"
    p.write_bytes(b"a b\nc\x00d\n")
    with pytest.raises(InputError, match=r"n\.txt: line 2, byte 5: NUL"):
        list(iter_lines(p))
    assert list(iter_lines(p, errors="replace"))[1].words == ["c\ufffdd"]


def test_bom_skipped(tmp_path):
    p = tmp_path / "b.txt"
    p.write_bytes(b"\xef\xbb\xbfhello world\n")
    assert next(iter_lines(p)).words == ["hello", "world"]


_alphabet = st.sampled_from(["a", "b", "é", "日", " ", " ", "\t", "\n", "\n", "\r", "\u3000",
                             "\u00a0", "xyz"])


@settings(max_examples=60, deadline=None)
@given(text=st.lists(_alphabet, max_size=200).map("".join), block=st.integers(1, 24))
def test_pieces_equal_naive(tmp_path_factory, text, block):
    data = text.encode("utf-8")
    p = tmp_path_factory.mktemp("pieces") / "t.txt"
    p.write_bytes(data)
    lines = []
    for piece in iter_pieces(p, block_size=block):
        if not lines or lines[-1][3]:
            lines.append([piece.index, piece.byte_offset, list(piece.words), piece.last])
        else:
            assert lines[-1][:2] == [piece.index, piece.byte_offset]
            lines[-1][2].extend(piece.words)
            lines[-1][3] = piece.last
    assert all(x[3] for x in lines)
    assert [tuple(x[:3]) for x in lines] == naive_lines(data)


def test_long_line_is_split_into_pieces(tmp_path):
    words = [f"w{i}" for i in range(5000)]
    p = tmp_path / "long.txt"
    p.write_text(" ".join(words))
    pieces = list(iter_pieces(p, block_size=1024))
    assert len(pieces) > 10
    assert max(len(" ".join(x.words)) for x in pieces) < 3 * 1024
    assert [w for x in pieces for w in x.words] == words
    assert [x.last for x in pieces] == [False] * (len(pieces) - 1) + [True]


# ------------------------------------------- lines a block at a time (batches) --
# iter_pieces decodes a block's whole lines at once (LineBatch); it must hand out
# exactly the pieces, and raise exactly the errors, of the line-by-line reader.
_fragments = st.sampled_from([b"a", b"bc", "\u00e9".encode(), "\u65e5".encode(), b" ", b"\t",
                              b"\r", b"\n", b"\n", b"\n\n", "\u3000".encode(), "\u00a0".encode(),
                              "\u2028".encode(), b"\x1c", "\U0001d11e".encode(), b"\xff",
                              b"\xc3", b"\x85", b"\x00", _BOM, b"xyz" * 5])


def _run(items):
    """The items as tuples, and the error message that ended them (or None)."""
    out = []
    try:
        for x in items:
            out.append(tuple(x))
    except InputError as e:
        return out, str(e)
    return out, None


def _expanded(pieces):
    """Pieces.batches() with each LineBatch turned back into its pieces."""
    for item in pieces.batches():
        if isinstance(item, LineBatch):
            assert item.count == item.data.count(b"\n") >= 1 and item.data.endswith(b"\n")
            assert item.utf8 == item.text.encode("utf-8")
            yield from item.pieces()
        else:
            yield item


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(_fragments, max_size=80), bom=st.booleans(), block=st.integers(1, 40),
       errors=st.sampled_from(["strict", "replace"]), gz=st.booleans(), cut=st.integers(0, 30))
def test_batches_equal_the_line_by_line_reader(tmp_path_factory, parts, bom, block, errors, gz,
                                               cut):
    data = (_BOM if bom else b"") + b"".join(parts)
    p = tmp_path_factory.mktemp("batches") / ("t.txt.gz" if gz else "t.txt")
    raw = gzip.compress(data) if gz else data
    p.write_bytes(raw[: len(raw) - cut] if gz and cut < len(raw) else raw)
    want = _run(per_line_pieces(p, errors, block_size=block))
    assert _run(iter_pieces(p, errors, block_size=block)) == want
    pieces = iter_pieces(p, errors, block_size=block)
    assert _run(_expanded(pieces)) == want
    if want[1] is None:
        assert pieces.lines == sum(x[3] for x in want[0])


def test_pieces_then_batches(tmp_path):
    data = b"".join(b"line %d here\n" % i for i in range(100)) + b"no newline"
    p = tmp_path / "t.txt"
    p.write_bytes(data)
    pieces = iter_pieces(p, block_size=64)
    head = [next(pieces) for _ in range(7)]  # part way into a batch
    assert [tuple(x) for x in head + list(_expanded(pieces))] == [
        tuple(x) for x in per_line_pieces(p, block_size=64)]
    assert pieces.lines == 101


def test_invalid_utf8_deep_in_a_block(tmp_path):
    """The block decodes at once; the error still names the line and byte."""
    data = b"fine words\n" * 5000 + b"bad \xe2\x28\xa1 here\n" + b"more\n" * 10
    p = tmp_path / "u.txt"
    p.write_bytes(data)
    bad = data.index(b"\xe2\x28")
    got = []
    with pytest.raises(InputError, match=rf"u\.txt: line 5001, byte {bad}: invalid UTF-8"):
        for piece in iter_pieces(p):
            got.append(piece)  # noqa: PERF402 (keep pieces read before the error)
    assert len(got) == 5000  # every line before the bad one was handed out
