import gzip
import hashlib
from collections import Counter

import numpy as np
import pytest

from streamlm.data.text import iter_lines
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError


def test_build_order_and_ties():
    counts = Counter({"b": 3, "a": 3, "c": 5, "z": 1, "<unk>": 100, "<eos>": 7, "é": 3})
    v = Vocab.build(counts)
    # specials first, then count descending, ties by code point
    assert v.words == ["<unk>", "<eos>", "c", "a", "b", "é", "z"]
    assert (v.unk_id, v.eos_id) == (0, 1)
    assert Vocab.build(counts, vocab_size=4).words == ["<unk>", "<eos>", "c", "a"]
    assert Vocab.build(counts, min_count=3).words == ["<unk>", "<eos>", "c", "a", "b", "é"]
    assert Vocab.build({}).words == ["<unk>", "<eos>"]
    # insertion order of the counter does not matter
    rev = Counter(dict(reversed(list(counts.items()))))
    assert Vocab.build(rev).words == v.words
    with pytest.raises(UsageError):
        Vocab.build(counts, vocab_size=1)


def test_encode_decode():
    v = Vocab.from_words(["x", "<eos>", "y", "<unk>"])
    ids = v.encode(["y", "oov", "<unk>", "x", "<eos>"])
    assert ids.dtype == np.int32
    assert ids.tolist() == [2, 3, 3, 0, 1]
    assert v.decode(ids) == ["y", "<unk>", "<unk>", "x", "<eos>"]
    assert v.encode([]).tolist() == []
    with pytest.raises(InputError, match="outside"):
        v.decode([4])


def test_validation():
    with pytest.raises(InputError, match="empty vocabulary"):
        Vocab.from_words([])
    with pytest.raises(InputError, match="line 3: duplicate word 'a'"):
        Vocab.from_words(["<unk>", "a", "a", "<eos>"])
    with pytest.raises(InputError, match="whitespace"):
        Vocab.from_words(["<unk>", "<eos>", "a b"])
    with pytest.raises(InputError, match="empty word"):
        Vocab.from_words(["<unk>", "<eos>", ""])
    with pytest.raises(InputError, match="'<eos>'"):
        Vocab.from_words(["<unk>", "a"])


def test_save_load_sha(tmp_path):
    v = Vocab.from_words(["<unk>", "<eos>", "é", "日本"])
    p = tmp_path / "v.txt"
    v.save(p)
    assert p.read_bytes() == "<unk>\n<eos>\né\n日本\n".encode()
    w = Vocab.load(p)
    assert w == v
    assert v.sha256() == hashlib.sha256("<unk>\n<eos>\né\n日本".encode()).hexdigest()
    assert Vocab.from_words(["<eos>", "<unk>"]).sha256() != Vocab.from_words(
        ["<unk>", "<eos>"]).sha256()


def test_load_errors(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("<unk>\n<eos>\nx\n\ny\n")
    with pytest.raises(InputError, match=r"v\.txt: line 4: empty word"):
        Vocab.load(p)
    p.write_text("<unk>\n<eos>\nx\ny\nx\n")
    with pytest.raises(InputError, match=r"v\.txt: line 5: duplicate"):
        Vocab.load(p)
    p.write_bytes(b"<unk>\n<eos>\n\xff\n")
    with pytest.raises(InputError, match=r"v\.txt: line 3, byte 12: invalid UTF-8"):
        Vocab.load(p)
    with pytest.raises(InputError, match="no such vocabulary file"):
        Vocab.load(tmp_path / "missing.txt")
    p.write_text("")
    with pytest.raises(InputError, match="empty vocabulary"):
        Vocab.load(p)


def test_ptb_train_gives_10000(shared_data):
    PTB = shared_data / "ptb"
    counts = Counter()
    for line in iter_lines(PTB / "ptb.train.txt.gz"):
        counts.update(line.words)
    v = Vocab.build(counts)
    assert len(v) == 10_000
    # independent check: distinct tokens of the raw text + <eos>
    with gzip.open(PTB / "ptb.train.txt.gz", "rt") as f:
        distinct = set(f.read().split())
    assert set(v.words) == distinct | {"<eos>"}
    assert v.words[2] == max(counts, key=lambda w: (counts[w], w))  # "the"
