"""The one tokeniser (streamlm.tokenizer): ids, line and document index of every
token, against a naive whole-text implementation, however the text is cut into
pieces and blocks; and prepare and the scorer share it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlm.inputs import ShardSource, TextSource
from streamlm.prepare import prepare
from streamlm.text import iter_pieces
from streamlm.tokenizer import Block, encode
from streamlm.vocab import Vocab

V = Vocab.from_words(["<unk>", "<eos>", "a", "b", "c"])


def naive(text: str, vocab: Vocab, docs: bool):
    """(ids, line index, doc index) per token from the whole text at once."""
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
        ids += toks
        line += [i] * len(toks)
        doc += [d] * len(toks)
    return ids, line, doc


def _blocks(path, docs, block_size, block_tokens):
    return list(encode(iter_pieces(path, block_size=block_size), V, docs=docs,
                       block_tokens=block_tokens, index=3))


def _check(blocks, text, docs):
    want_ids, want_line, want_doc = naive(text, V, docs)
    if not want_ids:
        assert blocks == []
        return
    got = Block.join(blocks)
    assert got.ids.dtype == np.int32 and all(len(b) > 0 for b in blocks)
    assert [b.i for b in blocks] == [3] * len(blocks)
    assert [b.pos for b in blocks] == np.cumsum([0] + [len(b) for b in blocks[:-1]]).tolist()
    assert got.ids.tolist() == want_ids
    assert got.line.tolist() == want_line
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
