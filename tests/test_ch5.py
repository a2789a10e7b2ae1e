"""The book's chapter-5 experiment (deep-learning-from-scratch-2, ch05/train_custom_loop.py).

Data: the first 1000 ids of PTB train, read the book's way
(``f.read().replace('\\n', '<eos>').strip().split()``, ids in first-occurrence
order), vocabulary = max id + 1 = 418. SimpleRnnlm with N=10, D=H=100, T=5,
SGD lr 0.1, no clipping, 100 epochs, rows at offsets ``i * (L // N)``; the
perplexity of an epoch is exp(mean batch loss), as the book prints it.
Published runs of the book's numpy code go from about 400 at epoch 1 to
between 4.9 and 12.7 at epoch 100.
"""

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamlm.jobs.train import TrainConfig, train


def book_corpus(path, n=1000):
    """The book's ptb.load_data('train') ids, truncated to ``n``, and its id_to_word."""
    words: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:  # the book reads the whole file; n words need only the first lines
            words.extend(line.replace("\n", "<eos>").split())
            if len(words) >= n:
                break
    word_to_id: dict[str, int] = {}
    ids = []
    for w in words[:n]:
        ids.append(word_to_id.setdefault(w, len(word_to_id)))
    return np.array(ids, dtype=np.int32), list(word_to_id)


def test_chapter5_curve(shared_data, tmp_path):
    corpus, id_to_word = book_corpus(shared_data / "ptb" / "ptb.train.txt.gz")
    vocab_size = int(corpus.max()) + 1
    assert len(corpus) == 1000 and vocab_size == 418 == len(id_to_word)
    pq.write_table(pa.table({"token_id": pa.array(corpus)}), tmp_path / "c.parquet")
    (tmp_path / "vocab.txt").write_text("\n".join(id_to_word) + "\n")

    cfg = TrainConfig(embed=100, hidden=100, batch=10, bptt=5, epochs=100, optimizer="sgd",
                      lr=0.1, clip=0.0, seed=0, dropout=0.0, log_interval=10_000,
                      checkpoint_every=0)
    s = train(cfg, [tmp_path / "c.parquet"], tmp_path / "m.npz",
              vocab_path=tmp_path / "vocab.txt", checkpoints=False)
    assert s["iters_per_epoch"] == 999 // (10 * 5)  # the book's max_iters = 19
    ppl = [r["train_ppl"] for r in s["history"] if r["kind"] == "epoch"]
    assert len(ppl) == 100
    curve = {e: round(ppl[e - 1], 2) for e in (1, *range(10, 101, 10))}
    print("chapter-5 curve (epoch: ppl):", curve)
    assert ppl[0] > 250
    assert ppl[-1] < 20
    assert ppl[-1] < ppl[49] < ppl[0]  # it keeps learning
