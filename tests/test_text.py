import bz2
import gzip
import lzma

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlm.errors import InputError
from streamlm.text import iter_lines, iter_pieces, open_binary


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
