"""The one tokeniser (streamlm.data.tokenizer): ids, line and document index of every
token, against a naive whole-text implementation, however the text is cut into
pieces and blocks; and prepare and the scorer share it."""

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from line_reference import per_line_encode, per_line_pieces

from streamlm.data import tokenizer
from streamlm.data.inputs import ShardSource, TextSource
from streamlm.data.text import LineBatch, iter_pieces
from streamlm.data.tokenizer import Block, encode
from streamlm.data.vocab import Vocab
from streamlm.jobs.prepare import prepare

V = Vocab.from_words(["<unk>", "<eos>", "a", "b", "c"])


def naive(text: str, vocab: Vocab, docs: bool, counts: list | None = None):
    """(ids, line index, doc index) per token from the whole text at once; ``counts``
    gets (words + 1, normalised bytes + 1) of each line that has tokens."""
    ids, line, doc = [], [], []
    d, new_doc = -1, True
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for i, ln in enumerate(lines):
        words = ln.split()
        if docs and not words:
            new_doc = True
            continue
        if new_doc:
            d += 1
            new_doc = False
        toks = [vocab.index.get(w, vocab.unk_id) for w in words] + [vocab.eos_id]
        if counts is not None:
            counts.append((len(words) + 1, len(" ".join(words).encode("utf-8")) + 1))
        ids += toks
        line += [i] * len(toks)
        doc += [d] * len(toks)
    return ids, line, doc


def _blocks(path, docs, block_size, block_tokens):
    return list(encode(iter_pieces(path, block_size=block_size), V, docs=docs,
                       block_tokens=block_tokens, index=3))


def _check(blocks, text, docs):
    want_counts = []
    want_ids, want_line, want_doc = naive(text, V, docs, want_counts)
    if not want_ids:
        assert blocks == []
        return
    got = Block.join(blocks)
    assert got.ids.dtype == np.int32 and all(len(b) > 0 for b in blocks)
    assert [b.i for b in blocks] == [3] * len(blocks)
    assert [b.pos for b in blocks] == np.cumsum([0] + [len(b) for b in blocks[:-1]]).tolist()
    assert got.ids.tolist() == want_ids
    assert got.line.tolist() == want_line
    ends = np.flatnonzero(got.words)  # the counts sit on each line's last token, its <eos>
    assert (got.ids[ends] == V.eos_id).all() and len(ends) == len(want_counts)
    assert list(zip(got.words[ends].tolist(), got.nbytes[ends].tolist())) == want_counts
    assert not got.nbytes[got.words == 0].any()
    if docs:
        assert got.doc.tolist() == want_doc
        starts = np.concatenate([b.doc_starts(-1 if k == 0 else int(blocks[k - 1].doc[-1]))
                                 for k, b in enumerate(blocks)])
        want_starts = [k for k in range(len(want_doc)) if k == 0 or want_doc[k] != want_doc[k - 1]]
        assert np.flatnonzero(starts).tolist() == want_starts
    else:
        assert got.doc is None


@pytest.mark.parametrize("docs", [False, True])
@pytest.mark.parametrize("block_tokens", [1, 3, 1000])
def test_ids_lines_and_documents(tmp_path, docs, block_tokens):
    text = "\n\na b zz\n\n\nc\n  \nb <unk>\n"
    p = tmp_path / "t.txt"
    p.write_text(text)
    blocks = _blocks(p, docs, block_size=2, block_tokens=block_tokens)  # lines in pieces
    _check(blocks, text, docs)
    ids = Block.join(blocks).ids
    if docs:
        assert np.flatnonzero(Block.join(blocks).doc_starts(-1)).tolist() == [0, 4, 6]
    else:
        assert len(ids) == 9 + 5  # 9 lines, 5 words: W + L


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ab c\n\t", max_size=80), docs=st.booleans(),
       block_size=st.integers(1, 9), block_tokens=st.integers(1, 7))
def test_any_text_any_cut(tmp_path_factory, text, docs, block_size, block_tokens):
    p = tmp_path_factory.mktemp("t") / "t.txt"
    p.write_text(text)
    _check(_blocks(p, docs, block_size, block_tokens), text, docs)


@pytest.mark.parametrize("docs", ["none", "blank-line"])
def test_prepare_and_the_scorer_share_ids_and_document_starts(tmp_path, docs):
    text = "a b\n\nc zz a\nb\n\n\na\n"
    t = tmp_path / "t.txt"
    t.write_text(text)
    V.save(tmp_path / "vocab.txt")
    prepare([str(t)], tmp_path / "p", vocab_path=tmp_path / "vocab.txt", docs=docs)
    as_text = Block.join(list(TextSource(0, str(t), V, docs=docs != "none").blocks()))
    as_shards = Block.join(list(ShardSource(0, str(tmp_path / "p"), V,
                                            docs=docs != "none").blocks()))
    want_ids, want_line, want_doc = naive(text, V, docs != "none")
    assert as_text.ids.tolist() == as_shards.ids.tolist() == want_ids
    assert as_text.line.tolist() == want_line
    if docs == "none":
        assert as_shards.line.tolist() == want_line == [0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 5, 6, 6]
    else:  # shards know lines by their <eos>: the blank lines between documents left none
        assert as_shards.line.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3]
        assert as_text.doc.tolist() == as_shards.doc.tolist() == want_doc == [
            0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2]


# ------------------------------------------- the compiled path (kernels) --
# Batches of whole lines go through kernels.encode_lines when Numba is loaded or
# after COMPILED_AFTER_BYTES: it must give exactly the blocks of the line-by-line
# tokeniser (tests/line_reference.py), which it replaces for speed.
W = Vocab.from_words(["<unk>", "<eos>", "a", "b", "ab", "\u00e9", "\u65e5", "\U0001d11e",
                      "a\u00e9", "\ufffd"])


def _same_blocks(got, want):
    assert [(b.i, b.pos, len(b)) for b in got] == [(b.i, b.pos, len(b)) for b in want]
    for g, w in zip(got, want):
        assert g.ids.dtype == w.ids.dtype and g.line.dtype == w.line.dtype
        assert g.ids.tolist() == w.ids.tolist() and g.line.tolist() == w.line.tolist()
        assert g.words.tolist() == w.words.tolist() and g.nbytes.tolist() == w.nbytes.tolist()
        assert g.words.dtype == g.nbytes.dtype == np.int32
        assert (g.doc is None) == (w.doc is None)
        if w.doc is not None:
            assert g.doc.dtype == w.doc.dtype and g.doc.tolist() == w.doc.tolist()


def _compare(path, vocab, docs, block_size, block_tokens, errors="strict", after=0):
    want = list(per_line_encode(per_line_pieces(path, errors, block_size=block_size), vocab,
                                docs=docs, index=2, block_tokens=block_tokens))
    with patch.object(tokenizer, "COMPILED_AFTER_BYTES", after):
        got = list(encode(iter_pieces(path, errors, block_size=block_size), vocab, docs=docs,
                          index=2, block_tokens=block_tokens))
    _same_blocks(got, want)
    return got


_unicode_text = st.lists(st.sampled_from(
    ["a", "b", "ab", "\u00e9", "\u65e5", "\U0001d11e", "zz", " ", "  ", "\t", "\r", "\n", "\n",
     "\n\n", "\u3000", "\u00a0", "\u2028", "\u0085", "\x1c", "\u200b", "\u180e"]),
    max_size=120).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=_unicode_text, docs=st.booleans(), block_size=st.integers(1, 64),
       block_tokens=st.integers(1, 9))
def test_compiled_path_equals_line_by_line(tmp_path_factory, text, docs, block_size,
                                           block_tokens):
    p = tmp_path_factory.mktemp("c") / "t.txt"
    p.write_bytes(text.encode("utf-8"))
    got = _compare(p, W, docs, block_size, block_tokens)
    want_ids, want_line, want_doc = naive(text, W, docs)
    joined = Block.join(got) if got else None
    assert (joined.ids.tolist() if got else []) == want_ids
    assert (joined.line.tolist() if got else []) == want_line


_bytes = st.lists(st.one_of(
    st.sampled_from([b"a", b"b", b"ab", "\u00e9".encode(), "\ufffd".encode(), b" ", b"\n",
                     b"\n", b"\xff", b"\xe2", b"\xe2\x80", b"\xc3", b"\x00", b"\x85",
                     b"\xf0\x9f"]),
    st.binary(max_size=3)), max_size=100).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(data=_bytes, docs=st.booleans(), block_size=st.integers(1, 64),
       block_tokens=st.integers(1, 9))
def test_compiled_path_on_any_bytes_replaced(tmp_path_factory, data, docs, block_size,
                                             block_tokens):
    """errors="replace": a batch with invalid UTF-8 or NUL is encoded from its repaired text."""
    p = tmp_path_factory.mktemp("r") / "t.txt"
    p.write_bytes(b"x\n" + data)  # never the magic bytes of a compressed file
    _compare(p, W, docs, block_size, block_tokens, errors="replace")


@pytest.mark.parametrize("docs", [False, True])
def test_compiled_path_after_enough_text(tmp_path, docs):
    """Without Numba loaded, lines go one by one until COMPILED_AFTER_BYTES of text,
    then compiled; the blocks are the same all along."""
    rng = np.random.default_rng(0)
    words = np.array(["a", "b", "ab", "\u00e9", "\u65e5", "zz", "", "\u3000"])
    lines = [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(30_000)]
    text = "\n".join(lines)  # no newline at the end
    p = tmp_path / "big.txt"
    p.write_text(text, encoding="utf-8")
    half = len(text.encode()) // 2
    vocab = Vocab.from_words(["<unk>", "<eos>", "a", "\u00e9", "zz"])
    block = 1 << 14
    with patch.object(tokenizer, "_kernels_loaded", return_value=False), \
         patch.object(tokenizer.WordTable, "encode_lines", autospec=True,
                      side_effect=tokenizer.WordTable.encode_lines) as spy:
        _compare(p, vocab, docs, block, 5000, after=half)
    batches = sum(isinstance(x, LineBatch) for x in iter_pieces(p, block_size=block).batches())
    assert 2 <= spy.call_count <= batches // 2 + 1  # the second half only


def test_space_table_is_str_split():
    """The kernel splits where space[c] (c < U+10000); str.split() must agree for every
    code point, and no code point above U+FFFF may be a space."""
    space = tokenizer.space_table()
    split_at = np.array([len(("a" + chr(c) + "b").split()) == 2 for c in range(0x10000)])
    assert (space == split_at).all()
    assert not any(chr(c).isspace() for c in range(0x10000, 0x110000))


def test_word_table_finds_every_word():
    rng = np.random.default_rng(1)
    letters = list("abcdefgh\u00e9\u65e5") + ["\U0001d11e"]
    words = sorted({"".join(rng.choice(letters, rng.integers(1, 6))) for _ in range(6000)})
    vocab = Vocab.from_words(["<unk>", "<eos>"] + words)
    table = tokenizer.word_table(vocab)
    assert tokenizer.word_table(vocab) is table  # built once per vocabulary
    text = " ".join(words + ["notaword", "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"]) + "\n"
    ids, counts = table.encode_lines(text.encode(), 1, docs=False)
    assert ids.tolist() == list(range(2, len(vocab))) + [0, 0, 1]
    assert counts.tolist() == [len(words) + 3]
