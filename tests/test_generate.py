"""`streamlm generate`: seeded sampling, the sampling rule itself, formatting, bad options."""


import numpy as np
import pytest
from helpers import cli

from streamlm.jobs.generate import format_words, generate
from streamlm.nn.model import RNNLM
from streamlm.nn.params import ModelConfig, Params, save_model

WORDS = ["<unk>", "<eos>"] + [f"w{i}" for i in range(28)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    cfg = ModelConfig(V=len(WORDS), D=6, H=8)
    p = Params.init(cfg, seed=1)
    rng = np.random.default_rng(2)
    # a peaked, non-uniform model so that samples carry information
    p["embed_W"][...] = rng.standard_normal(p["embed_W"].shape)
    p["affine_W"][...] = rng.standard_normal(p["affine_W"].shape) * 2
    p["affine_b"][1] = 1.5  # <eos> is frequent
    path = tmp_path_factory.mktemp("gen") / "m.npz"
    save_model(path, p, WORDS)
    return path


def test_same_seed_same_text(model_file):
    a = list(generate(model_file, words=60, seed=3))
    b = list(generate(model_file, words=60, seed=3))
    c = list(generate(model_file, words=60, seed=4))
    assert a == b and len(a) == 60
    assert a != c
    assert set(a) <= set(WORDS)


def _softmax_sample(lp, temperature, u):
    z = lp / temperature
    p = np.exp(z - z.max())
    c = np.cumsum(p)
    return int(np.searchsorted(c, u * c[-1], side="right"))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sampling_rule_matches_numpy(model_file, temperature):
    """Each word is the inverse-CDF draw of softmax(log p / T) at the seeded uniform."""
    from streamlm.nn.params import load_model

    got = list(generate(model_file, words=40, seed=11, temperature=temperature,
                        prompt="w3 nonsense w5"))
    m = load_model(model_file)
    model = RNNLM(m.params)
    rng = np.random.default_rng(11)
    ctx = [1, WORDS.index("w3"), 0, WORDS.index("w5")]  # <eos>, prompt; unknown -> <unk>
    h = None
    for i in ctx:
        h = model.step(np.array([i]), h)
    want = []
    for _ in range(40):
        lp = model.logprobs(h)[0].astype(np.float64)
        k = _softmax_sample(lp, temperature, rng.random())
        want.append(WORDS[k])
        h = model.step(np.array([k]), h)
    assert got == want


def test_low_temperature_is_greedy(model_file):
    from streamlm.nn.params import load_model

    got = list(generate(model_file, words=15, seed=0, temperature=1e-4))
    model = RNNLM(load_model(model_file).params)
    h = model.step(np.array([1]))
    want = []
    for _ in range(15):
        k = int(np.argmax(model.logprobs(h)[0]))
        want.append(WORDS[k])
        h = model.step(np.array([k]), h)
    assert got == want


def test_format_words():
    assert "".join(format_words(iter(["a", "b", "<eos>", "c"]))) == "a b\nc\n"
    assert "".join(format_words(iter(["<eos>", "<eos>"]))) == "\n\n"
    assert "".join(format_words(iter([]))) == ""


def test_cli_generate(model_file):
    rc, out, err = cli("generate", model_file, "--words", "50", "--seed", "9")
    assert rc == 0, err
    words = list(generate(model_file, words=50, seed=9))
    assert out == "".join(format_words(iter(words)))
    assert out.count("\n") >= words.count("<eos>")
    rc2, out2, _ = cli("generate", model_file, "--words", "50", "--seed", "9")
    assert out2 == out


@pytest.mark.parametrize("args, needle", [
    (["--temperature", "0"], "--temperature"),
    (["--words", "-1"], "--words"),
])
def test_cli_bad_options(model_file, args, needle):
    rc, out, err = cli("generate", model_file, *args)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_cli_missing_or_broken_model(tmp_path):
    rc, out, err = cli("generate", tmp_path / "nope.npz")
    assert rc != 0 and out == "" and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    rc, out, err = cli("generate", bad)
    assert rc != 0 and out == "" and "bad.npz" in err and "Traceback" not in err


def test_a_class_model_samples_a_class_then_a_word(tmp_path):
    """generate on a class model: each word is a class drawn from softmax(class
    logits / T) at one uniform, then a word of that class from softmax(word logits /
    T) at the next, as rnnlm -gen does (with T)."""
    from streamlm.nn.classes import WordClasses
    from streamlm.nn.params import load_model

    V = len(WORDS)
    cl = WordClasses((np.arange(V) * 7 % 5).astype(np.int32))
    p = Params.init(ModelConfig(V=V, D=6, H=8, softmax="class", C=5), seed=1, classes=cl)
    a = p.file_arrays()
    rng = np.random.default_rng(3)
    a["embed_W"] = rng.standard_normal(a["embed_W"].shape)
    a["affine_W"] = rng.standard_normal(a["affine_W"].shape) * 2
    a["class_W"] = rng.standard_normal(a["class_W"].shape)
    p.set_file_arrays(a)
    path = tmp_path / "c.npz"
    save_model(path, p, WORDS)
    got = list(generate(path, words=30, seed=5, temperature=0.7, prompt="w2"))
    m = load_model(path)
    f = {k: v.astype(np.float64) for k, v in m.params.file_arrays().items()}
    model = RNNLM(m.params)
    u = np.random.default_rng(5)
    h = None
    for i in (1, WORDS.index("w2")):
        h = model.step(np.array([i]), h)
    want = []
    for _ in range(30):
        hh = h[0].astype(np.float64)
        c = _softmax_sample(hh @ f["class_W"] + f["class_b"], 0.7, u.random())
        words = np.flatnonzero(cl.word_class == c)
        k = words[_softmax_sample(hh @ f["affine_W"][:, words] + f["affine_b"][words], 0.7,
                                  u.random())]
        want.append(WORDS[k])
        h = model.step(np.array([k]), h)
    assert got == want
