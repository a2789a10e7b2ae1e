"""Subword tokens (streamlm.data.subword): a SentencePiece model trained by prepare, carried
in the model file, scoring raw text with no OOVs; the word and byte counts that
compare models across tokenisers; per-piece records; generate; Korean."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
from helpers import cli, markov_text

spm = pytest.importorskip("sentencepiece")

from streamlm.data.shards import open_dataset  # noqa: E402
from streamlm.data.subword import SubwordVocab  # noqa: E402
from streamlm.data.text import iter_pieces  # noqa: E402
from streamlm.data.tokenizer import Block, encode  # noqa: E402
from streamlm.jobs.generate import format_pieces, generate, sample_text  # noqa: E402
from streamlm.jobs.prepare import prepare  # noqa: E402
from streamlm.jobs.score import score  # noqa: E402
from streamlm.jobs.train import TrainConfig, train  # noqa: E402
from streamlm.nn.params import load_model  # noqa: E402

STEMS = ["walk", "talk", "jump", "play", "read", "cook", "paint", "sing", "look", "call"]
WORDS = [s + x for s in STEMS for x in ("", "s", "ed", "ing", "er")] + [
    "café", "naïve", "日本", "über", ",", "."]
UNSEEN = "zebra ☃ Ωmega 𝄞 xylophones"  # characters the training text never had


def _messy(text: str) -> str:
    """Blank lines and runs of spaces and tabs here and there: normalising matters."""
    lines = text.split("\n")
    for k in range(0, len(lines), 7):
        lines[k] = "  " + lines[k].replace(" ", " \t ", 1) + " "
    lines[3:3] = ["", "   "]
    return "\n".join(lines)


def _norm_lines(path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [" ".join(ln.split()) for ln in text.removesuffix("\n").split("\n")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("subword")
    (d / "train.txt").write_text(_messy(markov_text(800, 1, WORDS)), encoding="utf-8")
    (d / "test.txt").write_text(_messy(markov_text(60, 2, WORDS)) + UNSEEN + "\n",
                                encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def prepared(corpus):
    out = corpus / "sp"
    prepare([str(corpus / "train.txt")], out, tokenizer="sentencepiece", pieces=320)
    return out


def _train(data, out, softmax="full"):
    cfg = TrainConfig(embed=8, hidden=8, batch=4, bptt=8, epochs=1, dropout=0.0,
                      softmax=softmax, log_interval=10_000)
    train(cfg, data, out, checkpoints=False)
    return out


@pytest.fixture(scope="module")
def model(prepared, corpus):
    return _train(prepared, corpus / "sp.npz", softmax="class")


@pytest.fixture(scope="module")
def word_model(corpus):
    prepare([str(corpus / "train.txt")], corpus / "words")
    return _train(corpus / "words", corpus / "words.npz")


def _sp(prepared):
    return spm.SentencePieceProcessor(model_file=str(prepared / "tokenizer.model"))


def test_prepare_trains_a_sentencepiece_model(prepared, corpus):
    m = json.loads((prepared / "manifest.json").read_text())
    proto = (prepared / "tokenizer.model").read_bytes()
    assert m["tokenizer"]["kind"] == "sentencepiece"
    assert m["tokenizer"]["sha256"] == hashlib.sha256(proto).hexdigest()
    assert m["unk_tokens"] == 0
    sp = _sp(prepared)
    pieces = [sp.id_to_piece(i) for i in range(len(sp))]
    vocab = (prepared / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert pieces[:2] == ["<unk>", "<eos>"] and vocab == pieces  # the pieces, in id order
    assert all(sp.is_byte(i) for i in range(2, 258))  # byte fallback
    assert m["vocab"]["size"] == len(sp) <= 320
    # the same input gives the same model and the same shards
    prepare([str(corpus / "train.txt")], corpus / "sp2", tokenizer="sentencepiece", pieces=320)
    assert (corpus / "sp2" / "tokenizer.model").read_bytes() == proto
    m2 = json.loads((corpus / "sp2" / "manifest.json").read_text())
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m["shards"]]


def test_shards_decode_to_the_normalised_text(prepared, corpus):
    ds = open_dataset(prepared)
    assert isinstance(ds.vocab, SubwordVocab)
    ids = np.concatenate([c.ids for c in ds.iter_chunks(1 << 20)])
    eos = np.flatnonzero(ids == 1)
    lines = np.split(ids, eos + 1)[:-1]  # each line's pieces and its <eos>
    sp = _sp(prepared)
    got = [sp.decode(line[:-1].tolist()) for line in lines]
    want = _norm_lines(corpus / "train.txt")
    assert "" in want and got == want


def test_a_line_read_in_pieces_gets_the_pieces_of_the_whole_line(prepared, tmp_path):
    vocab = open_dataset(prepared).vocab
    p = tmp_path / "long.txt"
    p.write_text(" ".join(WORDS * 40) + "\nwalk talked\n" + UNSEEN + "\n", encoding="utf-8")
    whole = Block.join(list(encode(iter_pieces(p), vocab, docs=False)))
    cut = Block.join(list(encode(iter_pieces(p, block_size=37), vocab, docs=False)))
    assert cut.ids.tolist() == whole.ids.tolist()
    assert cut.words.sum() == whole.words.sum() and cut.nbytes.sum() == whole.nbytes.sum()


def test_the_model_file_carries_its_tokenizer(model, prepared, tmp_path):
    with np.load(model, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert meta["tokenizer"] == "sentencepiece" and meta["format_version"] == 3
        assert z["tokenizer_model"].dtype == np.uint8
        assert z["tokenizer_model"].tobytes() == (prepared / "tokenizer.model").read_bytes()
        arrays = {k: z[k] for k in z.files}
    m = load_model(model)
    assert isinstance(m.vocabulary(), SubwordVocab) and m.vocab == m.vocabulary().words
    # the checksum covers the tokenizer: one byte changed is an edited file
    arrays["tokenizer_model"] = arrays["tokenizer_model"].copy()
    arrays["tokenizer_model"][len(arrays["tokenizer_model"]) // 2] ^= 1
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(Exception, match="checksum mismatch"):
        load_model(tmp_path / "edited.npz")


def test_raw_text_scores_with_no_oov_as_its_shards_do(model, prepared, corpus):
    text = score(model, [str(corpus / "test.txt")], engine="numba").summary
    assert text["oov"] == 0 and text["tokens"] > 0 and text["tokenizer"] == "sentencepiece"
    prepare([str(corpus / "test.txt")], corpus / "sp-test",
            tokenizer=str(prepared / "tokenizer.model"))
    shards = score(model, [str(corpus / "sp-test")], engine="numba").summary
    for k in ("tokens", "oov", "words", "bytes"):
        assert shards[k] == text[k], k
    assert shards["logprob"] == pytest.approx(text["logprob"], rel=1e-9)


def _counts(path) -> tuple[int, int]:
    """(words + one per line, normalised bytes + one per line), in plain Python."""
    lines = _norm_lines(path)
    return (sum(len(ln.split()) + 1 for ln in lines),
            sum(len(ln.encode("utf-8")) + 1 for ln in lines))


def test_words_and_bytes_are_the_texts_whatever_the_tokens(model, word_model, corpus):
    words, nbytes = _counts(corpus / "test.txt")
    for m in (model, word_model):
        s = score(m, [str(corpus / "test.txt")], engine="numpy").summary
        assert (s["words"], s["bytes"]) == (words, nbytes)
        assert s["word_perplexity"] == pytest.approx(math.exp(-s["logprob"] / words), rel=1e-12)
        assert s["bits_per_byte"] == pytest.approx(-s["logprob"] / nbytes / math.log(2),
                                                   rel=1e-12)
        assert s["inputs"][0]["bytes"] == nbytes
    sub = score(model, [str(corpus / "test.txt")]).summary
    assert sub["tokens"] > sub["words"]  # pieces, more of them than words


def test_word_perplexity_of_a_word_model_is_its_perplexity(word_model, corpus, tmp_path):
    s = score(word_model, [str(corpus / "test.txt")], output=tmp_path / "l.jsonl").summary
    assert s["oov"] > 0  # the unseen words are <unk>: the text still counts their bytes
    assert s["words"] == s["tokens"] and s["word_perplexity"] == s["perplexity"]
    recs = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert len(recs) == len(_norm_lines(corpus / "test.txt"))
    assert all(r["words"] == r["tokens"] and r["word_perplexity"] == r["perplexity"]
               for r in recs)
    assert sum(r["bytes"] for r in recs) == s["bytes"]


def test_per_piece_records_flag_word_starts_and_give_the_surface(model, corpus, tmp_path):
    out = tmp_path / "w.jsonl"
    s = score(model, [str(corpus / "test.txt")], level="word", output=out).summary
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(recs) == s["tokens"] and sum(r["word_start"] for r in recs) == s["words"]
    vocab = load_model(model).vocabulary()
    assert all(r["token"] == vocab.words[vocab.index[r["token"]]] for r in recs)
    assert all(r["word_start"] == (r["token"].startswith("\u2581") or r["token"] == "<eos>")
               for r in recs)
    lines: dict[int, str] = {}
    for r in recs:
        if r["token"] != "<eos>":
            lines[r["line"]] = lines.get(r["line"], "") + r["word"]
    want = _norm_lines(corpus / "test.txt")
    assert lines == {i: t for i, t in enumerate(want) if t}  # the pieces' text is the line's
    assert lines[len(want) - 1] == UNSEEN


def test_documents_are_counted_as_text(model, corpus, tmp_path):
    lines = [ln for ln in _norm_lines(corpus / "test.txt") if ln]
    docs = ["\n".join(lines[k:k + 5]) for k in range(0, len(lines), 5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "d.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "docs.jsonl"
    as_docs = score(model, [str(tmp_path / "d.jsonl")], output=out).summary
    as_text = score(model, [str(tmp_path / "d.txt")]).summary
    for k in ("tokens", "words", "bytes", "oov"):
        assert as_docs[k] == as_text[k], k
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["row"] for r in recs] == list(range(len(docs)))
    assert [r["bytes"] for r in recs] == [len(d.encode()) + 1 for d in docs]


def test_generate_detokenises(model, prepared):
    pieces = list(generate(model, words=120, seed=3, prompt="walking talked"))
    text = "".join(sample_text(model, words=120, seed=3, prompt="walking talked"))
    sp = _sp(prepared)
    per_line, line = [], []
    for p in pieces:
        if p == "<eos>":
            per_line.append(sp.decode(line))
            line = []
        else:
            line.append(sp.piece_to_id(p))
    if line:
        per_line.append(sp.decode(line))
    assert text == "\n".join(per_line) + "\n"
    assert "\u2581" not in text and "<0x" not in text


def test_format_pieces_joins_words_and_bytes(prepared):
    vocab = open_dataset(prepared).vocab
    pieces = [vocab.words[i] for i in vocab.encode(["über", "walked", "☃"])] + ["<eos>"]
    tail = [vocab.words[i] for i in vocab.encode(["naïve"])]  # no <eos>: a newline still
    assert any(p.startswith("<0x") for p in pieces)  # ☃ is bytes
    assert "".join(format_pieces(iter(pieces + tail), vocab)) == "über walked ☃\nnaïve\n"


def test_the_api_scores_raw_text(model):
    import streamlm

    lm = streamlm.LanguageModel(model, engine="numpy")
    scores = list(lm.full_scores(UNSEEN))
    assert len(scores) == len(lm.encode(UNSEEN)) + 1 and not any(oov for *_, oov in scores)
    assert lm.score(UNSEEN) == pytest.approx(sum(s for s, *_ in scores), rel=1e-12)


@pytest.fixture(scope="session")
def korean(shared_data):
    path = shared_data.parent / "seed" / "000_7b734a0c63bc73d5.txt"
    if not path.exists():
        pytest.skip(f"the Korean chapter notes are not at {path}")
    return path


def test_korean_prepares_trains_scores_and_generates(korean, tmp_path):
    rc, out, err = cli("prepare", korean, "--out", tmp_path / "ko", "--tokenizer",
                       "sentencepiece", "--pieces", "1000", "--json")
    assert rc == 0, err
    assert json.loads(out)["unk_tokens"] == 0
    rc, _, err = cli("-q", "train", tmp_path / "ko", "--out", tmp_path / "ko.npz", "--embed",
                     "16", "--hidden", "16", "--batch", "4", "--bptt", "16", "--epochs", "1",
                     "--softmax", "class")
    assert rc == 0, err
    rc, out, err = cli("score", tmp_path / "ko.npz", korean, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["oov"] == 0 and s["tokens"] > s["words"] > 2000
    rc, out, err = cli("generate", tmp_path / "ko.npz", "-n", "80", "--seed", "1")
    assert rc == 0, err
    assert len(re.findall("[\uac00-\ud7a3]", out)) >= 10  # Hangul syllables
    assert "\u2581" not in out


def test_a_mix_with_word_ngrams_refuses_a_subword_model(model, corpus):
    from streamlm.errors import UsageError

    with pytest.raises(UsageError, match="subword"):
        score(model, [str(corpus / "test.txt")], mix=str(corpus / "none.arpa"), mix_lambda=0.5)


def test_query_of_a_subword_model_prints_its_pieces(model, tmp_path):
    from streamlm.cli.query import query

    (tmp_path / "q.txt").write_text("walking talked\n" + UNSEEN + "\n", encoding="utf-8")
    out = "".join(query(str(model), str(tmp_path / "q.txt"), engine="numpy"))
    vocab = load_model(model).vocabulary()
    lines = [ln for ln in out.splitlines() if "Total:" in ln]
    assert len(lines) == 2
    for text, line in zip(["walking talked", UNSEEN], lines):
        fields = [f.rsplit(" ", 2)[0] for f in line.split("\t")[:-1]]
        want = [vocab.words[i] for i in vocab.encode(text.split())] + ["</s>"]
        assert [f.rsplit("=", 1)[0] for f in fields] == want
        assert line.endswith("OOV: 0")


@pytest.mark.parametrize("eos", [2, -1], ids=["its-own-eos", "no-eos"])
def test_an_existing_model_of_other_conventions(corpus, tmp_path, eos):
    """A model trained elsewhere (SentencePiece's defaults: <s> and </s>, NFKC, no byte
    fallback; or, as CCNet's, no end-of-sentence piece): its pieces are the vocabulary,
    its </s> (or one more id) is <eos>, and raw text scores as its shards do."""
    import io

    lines = (corpus / "train.txt").read_text(encoding="utf-8").split("\n")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf,
                                   vocab_size=120, eos_id=eos, hard_vocab_limit=False,
                                   minloglevel=2)
    (tmp_path / "other.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    prepare([str(corpus / "test.txt")], tmp_path / "d", tokenizer=str(tmp_path / "other.model"))
    vocab = open_dataset(tmp_path / "d").vocab
    want = [sp.id_to_piece(i) for i in range(len(sp))]
    want[0] = "<unk>"
    if eos >= 0:
        want[eos] = "<eos>"
    else:
        want.append("<eos>")
    assert vocab.words == want and vocab.eos_id == (eos if eos >= 0 else len(sp))
    model = _train(tmp_path / "d", tmp_path / "m.npz")
    text = score(model, [str(corpus / "test.txt")], engine="numpy").summary
    shards = score(model, [str(tmp_path / "d")], engine="numpy").summary
    assert text["tokens"] == shards["tokens"] and text["oov"] == shards["oov"] > 0  # ☃ etc.
    assert text["logprob"] == pytest.approx(shards["logprob"], rel=1e-9)
