"""The manual's code runs and says what streamlm does.

docs/format.md promises that a reader can compute P(w | context) from the model
file with numpy alone. Its snippet (after the marker comment) is run here on
tiny models written by ``streamlm.nn.params.save_model``, a full and a class
softmax, every cell, one and two layers, and its log10 probabilities are compared
with ``streamlm.Model``'s.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from streamlm.api import Model
from streamlm.nn.classes import WordClasses, frequency_classes
from streamlm.nn.params import ModelConfig, Params, save_model

REPO = Path(__file__).resolve().parents[1]
FORMAT_MD = REPO / "docs" / "format.md"
MARKER = "<!-- format.md snippet: run by tests/test_docs.py -->"
V, D, H, C = 20, 8, 8, 4


def snippet() -> str:
    """The python block right after the marker comment in docs/format.md."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"{FORMAT_MD}: the snippet marker must appear once"
    m = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert m, f"{FORMAT_MD}: no ```python block right after the marker"
    return m.group(1)


def tiny_model(path: Path, softmax: str, cell: str = "rnn", layers: int = 1) -> Path:
    """A V=20, H=8 model with every weight and bias spread out (zero biases would hide
    a wrong bias path), saved as streamlm saves models. The class model's classes are
    not contiguous in word-id order, so a mix-up of word ids and class order shows."""
    rng = np.random.default_rng(7)
    vocab = ["<unk>", "<eos>"] + [f"w{i}" for i in range(2, V)]
    classes = None
    if softmax == "class":
        counts = rng.permutation(np.arange(1, V + 1) ** 2).astype(np.float64)
        classes = WordClasses(frequency_classes(counts, C))
        assert classes.C == C
        assert not np.all(np.diff(classes.word_class) >= 0)  # not sorted by word id
    cfg = ModelConfig(V=V, D=D, H=H, softmax=softmax, C=C if softmax == "class" else 0,
                      cell=cell, layers=layers)
    p = Params.init(cfg, seed=3, classes=classes)
    a = p.file_arrays()
    for name, arr in a.items():
        a[name] = rng.standard_normal(arr.shape) * 0.8
    p.set_file_arrays(a)
    save_model(path, p, vocab)
    return path


@pytest.mark.parametrize("softmax,cell,layers", [
    ("full", "rnn", 1), ("class", "rnn", 1), ("full", "rnn", 2), ("class", "lstm", 2),
    ("full", "gru", 2), ("full", "lstm", 1)])
def test_format_snippet_gives_the_models_probabilities(tmp_path, softmax, cell, layers):
    path = tiny_model(tmp_path / f"{softmax}.npz", softmax, cell, layers)
    ns: dict = {}
    exec(compile(snippet(), str(FORMAT_MD), "exec"), ns)
    sentence = "w3 w7 w3 w19 never-seen w2"  # a repeated word and an OOV
    got = ns["log10probs"](str(path), sentence)
    want = [lp for lp, _, _ in Model(path, engine="numpy").full_scores(sentence)]
    assert len(got) == len(sentence.split()) + 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the snippet's distribution is a distribution over all V words
    a, _, meta = ns["load"](str(path))
    p = ns["p_next"](a, meta, np.tanh(np.arange(H) - 3.5))
    assert p.shape == (V,) and np.all(p > 0)
    assert abs(p.sum() - 1) < 1e-12
