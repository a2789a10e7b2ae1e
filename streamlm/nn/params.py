"""Weights, their initialisation, and the model file.

The parameters live in one flat buffer (so that gradient clipping and the
optimisers are one kernel call each) and are exposed as named views:

    embed_W (V, D)
    the recurrent layers' arrays (streamlm.nn.cells.layer_shapes): for layer l,
        layer{l}_Wx (D_l, G H)   layer{l}_Wh (H, G H)   layer{l}_b (G H,)
        (D_0 = D, D_l = H above; G the cell's gates; a one-layer tanh RNN's are
        rnn_Wx (D, H), rnn_Wh (H, H), rnn_b (H,), as in the first model files)
    affine_W (H, V)  affine_b (V,)
    class_W (H, C)   class_b (C,)    (class-factored softmax only)

With weight tying (``tied=True``, needs D == H) ``affine_W`` is the view
``embed_W.T`` and takes no storage of its own.

A class model (``softmax="class"``, see :mod:`streamlm.nn.classes`) keeps its
word-indexed arrays (the rows of ``embed_W``, the columns of ``affine_W``,
``affine_b``) in class order inside, and stores ``affine_W`` transposed, as
(V, H) rows (the view is still (H, V)): every class is one contiguous block
of rows, which its kernels read by dot products and its optimiser step
updates as one range. :meth:`Params.file_arrays` gives them in word-id order, as the model
file stores them; :attr:`Params.classes` maps between the two.

The model file is a plain ``.npz`` that numpy alone reads with
``np.load(path, allow_pickle=False)``: the arrays under those names (and, for
a class model, ``word_class``, int32 (V,)), ``vocab`` (a unicode string
array, words in id order) and ``meta`` (a 0-d unicode array holding one JSON
object; see :func:`save_model` and :mod:`streamlm.data.store`). Format version 1
is the full softmax; version 2 adds the class softmax; version 3 is either
with its tokeniser: ``tokenizer_model`` (uint8, the serialised SentencePiece
model, whose pieces are ``vocab``) and ``"tokenizer": "sentencepiece"`` in
meta. Version 4 is a model of another cell or of stacked layers: ``"cell"`` and
``"layers"`` in meta and the arrays ``layer{l}_*``. A one-layer tanh RNN is still
written as version 1, 2 or 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamlm.compute.memory import aligned_empty
from streamlm.data import store
from streamlm.errors import InputError, ModelFileError
from streamlm.nn.classes import WordClasses

FORMAT = "streamlm-model"
FORMAT_VERSION = 4  # the newest this streamlm reads; a full-softmax file is written as 1
TOKENIZER_ARRAY = "tokenizer_model"  # version 3: the SentencePiece model, as uint8
TOKENIZERS = ("sentencepiece",)
PARAM_NAMES = ("embed_W", "rnn_Wx", "rnn_Wh", "rnn_b", "affine_W", "affine_b")  # format 1
CLASS_NAMES = ("class_W", "class_b")
WORD_INDEXED = {"embed_W": 0, "affine_W": 1, "affine_b": 0}  # name -> axis of the words
LOAD_BLOCK = 1024  # words per block of the transposed copy of affine_W at load


# The recurrent cells (streamlm.nn.cells) by kind: (G, the gates: Wx, Wh and b have G * H
# columns; the vectors of H a layer carries from step to step). Here, not in cells.py,
# so that reading a model file does not import numba (the numpy engine's fast start).
CELL_KINDS = {"rnn": (1, 1), "lstm": (4, 2), "gru": (3, 1)}


def layer_names(cfg: ModelConfig, layer: int) -> dict[str, str]:
    """The parameter names of a recurrent layer: ``layer{l}_Wx``, ``_Wh``, ``_b``
    (``rnn_*`` for the one layer of a tanh RNN, the names of the first model files)."""
    if cfg.legacy:
        return {"Wx": "rnn_Wx", "Wh": "rnn_Wh", "b": "rnn_b"}
    parts = ("Wx", "Wh", "b", "bh") if cfg.cell == "gru" else ("Wx", "Wh", "b")
    return {k: f"layer{layer}_{k}" for k in parts}


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every recurrent layer's parameter shapes, in storage (and file) order."""
    G = CELL_KINDS[cfg.cell][0]
    out = {}
    for layer in range(cfg.layers):
        n = layer_names(cfg, layer)
        D = cfg.D if layer == 0 else cfg.H
        out[n["Wx"]] = (D, G * cfg.H)
        out[n["Wh"]] = (cfg.H, G * cfg.H)
        out[n["b"]] = (G * cfg.H,)
        if "bh" in n:  # the GRU's hidden bias (PyTorch's bias_hh)
            out[n["bh"]] = (G * cfg.H,)
    return out


def state_size(cfg: ModelConfig) -> int:
    """Floats of carried state per stream of a model: every layer's, side by side."""
    return cfg.layers * CELL_KINDS[cfg.cell][1] * cfg.H


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model: vocabulary V, embedding D, hidden H, its recurrent layers
    (``cell``: a kind of streamlm.nn.cells, ``layers`` of them stacked) and its output layer
    (``softmax``: "full", or "class" with C classes)."""

    V: int
    D: int
    H: int
    tied: bool = False
    softmax: str = "full"
    C: int = 0
    cell: str = "rnn"
    layers: int = 1

    def __post_init__(self):
        for name in ("V", "D", "H", "layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.cell not in CELL_KINDS:
            raise ValueError(f"cell must be one of {', '.join(CELL_KINDS)}, got "
                             f"{self.cell!r}")
        if self.tied and self.D != self.H:
            raise ValueError("weight tying needs embed size == hidden size")
        if self.softmax not in ("full", "class"):
            raise ValueError(f"softmax must be full or class, got {self.softmax!r}")
        if self.softmax == "class" and not 1 <= self.C <= self.V:
            raise ValueError(f"a class softmax needs 1 <= C <= V, got C={self.C}")
        if self.softmax == "full" and self.C:
            raise ValueError("C is for the class softmax")

    @property
    def legacy(self) -> bool:
        """A one-layer tanh RNN: the model files of format 1 to 3 (its arrays ``rnn_*``)."""
        return self.cell == "rnn" and self.layers == 1

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The recurrent layers' arrays, layer by layer (layer_shapes)."""
        return tuple(layer_shapes(self))

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter array, in file (and checksum) order."""
        return (("embed_W", *self.layer_names, "affine_W", "affine_b")
                + (CLASS_NAMES if self.softmax == "class" else ()))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        V, H = self.V, self.H
        out = {"embed_W": (V, self.D), **layer_shapes(self), "affine_W": (H, V),
               "affine_b": (V,)}
        if self.softmax == "class":
            out.update(class_W=(H, self.C), class_b=(self.C,))
        return out

    def storage_names(self) -> tuple[str, ...]:
        """The arrays that own storage in the flat buffer, in buffer order: a class
        model's class arrays sit right after the recurrent layers', so that all its
        dense (not word-indexed) parameters are one contiguous range."""
        order = ("embed_W", *self.layer_names, *CLASS_NAMES, "affine_W", "affine_b")
        return tuple(n for n in order if n in self.names
                     and not (self.tied and n == "affine_W"))


class Params:
    """Named parameter arrays as views into one flat buffer (class order inside for a
    class model: see the module doc)."""

    def __init__(self, config: ModelConfig, dtype=np.float32, flat: np.ndarray | None = None,
                 classes: WordClasses | None = None):
        if (config.softmax == "class") != (classes is not None):
            raise ValueError("a class softmax needs its word classes (and only it)")
        if classes is not None and (classes.V != config.V or classes.C != config.C):
            raise ValueError(f"word classes for V={classes.V}, C={classes.C} do not fit "
                             f"V={config.V}, C={config.C}")
        self.config = config
        self.classes = classes
        self.dtype = np.dtype(dtype)
        shapes = config.shapes()
        sizes = [int(np.prod(shapes[n])) for n in config.storage_names()]
        total = int(sum(sizes))
        if flat is None:
            flat = aligned_empty(total, self.dtype)
            flat[:] = 0
        elif flat.shape != (total,) or flat.dtype != self.dtype:
            raise ValueError(f"flat buffer must be ({total},) {self.dtype}")
        self.flat = flat
        self._views: dict[str, np.ndarray] = {}
        self.offsets: dict[str, int] = {}
        off = 0
        for name, size in zip(config.storage_names(), sizes):
            if name == "affine_W" and config.softmax == "class":
                # stored (V, H): a class's words are contiguous rows (see the module doc)
                self._views[name] = flat[off:off + size].reshape(config.V, config.H).T
            else:
                self._views[name] = flat[off:off + size].reshape(shapes[name])
            self.offsets[name] = off
            off += size
        if config.tied:
            self._views["affine_W"] = self._views["embed_W"].T

    # named access -----------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self._views[name]

    def __setitem__(self, name: str, value) -> None:
        view = self._views[name]
        if value is not view:  # ``p[name] += x`` already updated the view in place
            view[...] = value

    def __getattr__(self, name: str) -> np.ndarray:
        views = self.__dict__.get("_views")
        if views is not None and name in views:
            return views[name]
        raise AttributeError(name)

    def items(self):
        """(name, array) in file order; a class model's word-indexed arrays in class order."""
        return ((n, self._views[n]) for n in self.config.names)

    def zeros_like(self) -> Params:
        return Params(self.config, self.dtype, classes=self.classes)

    def copy(self) -> Params:
        return Params(self.config, self.dtype, self.flat.copy(), self.classes)

    def astype(self, dtype) -> Params:
        return Params(self.config, dtype, self.flat.astype(dtype), self.classes)

    # word-id order <-> class order ----------------------------------------
    def file_arrays(self) -> dict[str, np.ndarray]:
        """Every parameter array in word-id order (the model file's): a new array each."""
        out = {}
        for name, a in self.items():
            axis = WORD_INDEXED.get(name)
            if self.classes is not None and axis is not None:
                a = np.take(a, self.classes.rank, axis=axis)
            out[name] = np.ascontiguousarray(a, dtype=self.dtype)
        return out

    def set_file_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Fill the parameters from arrays in word-id order (no temporary of a whole
        word-indexed array: a 100k-word model loads in a fraction of a second)."""
        order = None if self.classes is None else self.classes.order
        for name in self.config.storage_names():
            a = arrays[name]
            axis = WORD_INDEXED.get(name)
            view = self[name]
            if axis is None or (axis == 0 and order is None):
                view[...] = a
            elif axis == 0 and view.flags.c_contiguous and a.dtype == view.dtype:
                np.take(a, order, axis=0, out=view, mode="clip")  # 'raise' buffers
            elif axis == 0:
                view[...] = np.take(a, order, axis=0)
            else:  # (H, V) in the file, a row per word in the buffer: a block at a time
                rows = view.T
                for j in range(0, rows.shape[0], LOAD_BLOCK):
                    cols = slice(j, j + LOAD_BLOCK) if order is None else order[j:j + LOAD_BLOCK]
                    rows[j:j + LOAD_BLOCK] = a[:, cols].T

    def segments(self, rows: np.ndarray, ranges: np.ndarray) -> np.ndarray:
        """The ranges (K, 2) int64 of the flat buffer that a row-sparse training step
        touches (a class model): every parameter that is not word-indexed, the
        embedding rows ``rows`` (class-order ids), and for the class-order word
        ranges ``ranges`` (k, 2) of the classes that had targets, their columns of
        affine_W (rows of embed_W when tied) and entries of affine_b."""
        cfg = self.config
        off = self.offsets
        word_ranges = _merge(np.asarray(ranges, dtype=np.int64).reshape(-1, 2))
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if cfg.tied:  # the output columns are embedding rows
            in_ranges = np.concatenate([np.arange(a, b) for a, b in word_ranges] or [rows[:0]])
            rows = np.union1d(rows, in_ranges)
        end = off["affine_b"] if cfg.tied else off["affine_W"]
        segs = [np.array([[off[cfg.layer_names[0]], end]], dtype=np.int64)]
        runs = _merge(np.stack([rows, rows + 1], axis=1)) if rows.size else rows.reshape(0, 2)
        segs.append(off["embed_W"] + runs * cfg.D)
        if not cfg.tied:  # stored (V, H): a word range is one range of rows
            segs.append(off["affine_W"] + word_ranges * cfg.H)
        segs.append(off["affine_b"] + word_ranges)
        return np.ascontiguousarray(np.concatenate(segs))

    @classmethod
    def init(cls, config: ModelConfig, seed: int = 0, dtype=np.float32,
             classes: WordClasses | None = None, init_range: float = 0.0) -> Params:
        """Seeded initialisation.

        embed_W ~ N(0, 0.01^2); the layers' Wx, Wh, affine_W, class_W ~ N(0,
        1/fan_in) (the book's Xavier: std 1/sqrt(n) for n input nodes); biases 0.
        With ``init_range`` R > 0 every weight matrix is uniform(-R, R) instead
        (Zaremba et al. and PyTorch's word-language-model example: 0.05 to 0.1).
        Drawn in float64 from one PCG64 stream in a fixed order, in word-id order,
        then cast: float32 and float64 models with the same seed hold the same
        numbers, and so do a full and a class model (class_W is drawn last).
        """
        p = cls(config, dtype, classes=classes)
        rng = np.random.default_rng(seed)
        V, D, H = config.V, config.D, config.H

        def draw(shape, std):
            if init_range > 0:
                return rng.uniform(-init_range, init_range, shape)
            return rng.standard_normal(shape) * std

        arrays = {"embed_W": draw((V, D), 0.01)}
        for name, shape in config.shapes().items():  # every layer, in order
            if name in config.layer_names:
                arrays[name] = (draw(shape, 1 / np.sqrt(shape[0]))
                                if len(shape) == 2 else np.zeros(shape))
        arrays["affine_b"] = np.zeros(V)
        if not config.tied:
            arrays["affine_W"] = draw((H, V), 1 / np.sqrt(H))
        if config.softmax == "class":
            arrays["class_W"] = draw((H, config.C), 1 / np.sqrt(H))
            arrays["class_b"] = np.zeros(config.C)
        p.set_file_arrays(arrays)
        return p

    @classmethod
    def from_arrays(cls, config: ModelConfig, arrays: dict[str, np.ndarray], dtype=np.float32,
                    classes: WordClasses | None = None):
        """Parameters from arrays in word-id order (a model file's)."""
        p = cls(config, dtype, classes=classes)
        p.set_file_arrays(arrays)
        return p


def _merge(ranges: np.ndarray) -> np.ndarray:
    """[a, b) ranges merged where they overlap or touch, sorted: (k, 2) int64."""
    if not len(ranges):
        return np.zeros((0, 2), dtype=np.int64)
    r = ranges[np.argsort(ranges[:, 0], kind="stable")]
    new_run = np.r_[True, r[1:, 0] > np.maximum.accumulate(r[:, 1])[:-1]]
    starts = np.flatnonzero(new_run)
    return np.stack([r[starts, 0], np.maximum.reduceat(r[:, 1], starts)], axis=1).astype(
        np.int64)


def checksum(arrays: dict[str, np.ndarray], vocab: Sequence[str],
             names: Sequence[str] = PARAM_NAMES) -> str:
    """sha256 over the arrays ``names`` (name, dtype, shape, bytes; in that order) and
    the vocabulary. Format 1 covers the six arrays; format 2 also ``class_W``,
    ``class_b`` and ``word_class``, in that order after them; format 3 then
    ``tokenizer_model`` (after the arrays of 1 or 2)."""
    h = hashlib.sha256()
    for name in names:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))  # the same bytes as a.tobytes(), with no copy
    h.update("\n".join(vocab).encode("utf-8"))
    return h.hexdigest()


def _checksummed(cfg: ModelConfig, tokenizer: bool = False) -> tuple[str, ...]:
    return (cfg.names + (("word_class",) if cfg.softmax == "class" else ())
            + ((TOKENIZER_ARRAY,) if tokenizer else ()))


@dataclass
class Model:
    """A loaded model file: weights, vocabulary, metadata and (a subword model) the
    serialised SentencePiece model."""

    params: Params
    vocab: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    tokenizer: bytes | None = None
    _vocabulary: Any = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> ModelConfig:
        return self.params.config

    def vocabulary(self):
        """The model's :class:`~streamlm.data.vocab.Vocab`, or for a subword model its
        :class:`~streamlm.data.subword.SubwordVocab` (which tokenises raw text itself);
        ModelFileError when it is unusable, UsageError without sentencepiece."""
        if self._vocabulary is not None:
            return self._vocabulary
        from streamlm.data.vocab import Vocab

        try:
            if self.tokenizer is None:
                v = Vocab(self.vocab)
            else:
                from streamlm.data.subword import SubwordVocab

                v = SubwordVocab(self.tokenizer, source="its tokenizer")
        except InputError as e:
            raise ModelFileError(f"bad model vocabulary: {e}", self.path) from None
        if v.words != list(self.vocab):
            raise ModelFileError("its tokenizer's pieces do not match its vocabulary",
                                 self.path)
        self._vocabulary = v
        return v


def save_model(path: str | os.PathLike, params: Params, vocab: Sequence[str],
               train_config: dict | None = None, extra_meta: dict | None = None,
               tokenizer: bytes | None = None) -> str:
    """Write the model file atomically. Returns the sha256 stored in ``meta``.

    ``meta`` holds: format, format_version, V, D, H, tied, dtype, (a class
    model: softmax "class" and C), (a subword model: tokenizer "sentencepiece"),
    train_config, sha256 (see :func:`checksum`). ``tokenizer``: the serialised
    SentencePiece model whose pieces ``vocab`` is (format version 3).
    """
    cfg = params.config
    vocab = list(vocab)
    if len(vocab) != cfg.V:
        raise ValueError(f"vocabulary has {len(vocab)} words, model V={cfg.V}")
    arrays = params.file_arrays()
    meta = {"V": cfg.V, "D": cfg.D, "H": cfg.H, "tied": cfg.tied, "dtype": params.dtype.name}
    version = 1
    if cfg.softmax == "class":
        arrays["word_class"] = params.classes.word_class.copy()
        meta.update(softmax="class", C=cfg.C)
        version = 2
    if tokenizer is not None:
        arrays[TOKENIZER_ARRAY] = np.frombuffer(bytes(tokenizer), dtype=np.uint8).copy()
        meta.update(tokenizer=TOKENIZERS[0])
        version = 3
    if not cfg.legacy:  # another cell, or stacked layers: their arrays layer{l}_*
        meta.update(cell=cfg.cell, layers=cfg.layers)
        version = 4
    digest = checksum(arrays, vocab, _checksummed(cfg, tokenizer is not None))
    meta.update(train_config=train_config or {}, sha256=digest)
    if extra_meta:
        meta.update(extra_meta)
    vocab_arr = np.array(vocab, dtype=np.str_) if vocab else np.zeros(0, dtype="<U1")
    store.save(path, FORMAT, version, meta, {**arrays, "vocab": vocab_arr})
    return digest


def load_model(path: str | os.PathLike, dtype=np.float32) -> Model:
    """Load and verify a model file. Never unpickles.

    Raises ModelFileError (one line naming the file) when the file is missing,
    truncated, not an npz, lacks or has extra arrays, has wrong shapes or
    dtypes, has word classes that do not fit, or fails its sha256.
    """
    path = os.fspath(path)
    meta, z = store.load(path, FORMAT, FORMAT_VERSION, what="model file", error=ModelFileError,
                         mapped=True)
    softmax = meta.get("softmax", "full")
    try:
        cfg = ModelConfig(V=int(meta["V"]), D=int(meta["D"]), H=int(meta["H"]),
                          tied=bool(meta.get("tied", False)), softmax=softmax,
                          C=int(meta.get("C", 0)) if softmax == "class" else 0,
                          cell=str(meta.get("cell", "rnn")), layers=int(meta.get("layers", 1)))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"bad model dimensions in meta ({e})", path) from None
    kind = meta.get("tokenizer")
    if kind is not None and (kind not in TOKENIZERS or meta["format_version"] < 3):
        raise ModelFileError(f"unknown tokenizer {kind!r} in meta (this streamlm knows "
                             f"{', '.join(TOKENIZERS)}, from format version 3)", path)
    has_tok = kind is not None
    names = set(z)
    expected = set(_checksummed(cfg, has_tok)) | {"vocab"}
    missing = sorted(expected - names)
    extra = sorted(names - expected)
    if missing:
        raise ModelFileError(f"missing arrays: {', '.join(missing)}", path)
    if extra:
        raise ModelFileError(f"unexpected arrays: {', '.join(extra)}", path)
    vocab_arr = z["vocab"]
    if vocab_arr.ndim != 1 or vocab_arr.dtype.kind != "U":
        raise ModelFileError("'vocab' must be a 1-d string array", path)
    vocab = vocab_arr.tolist()
    if len(vocab) != cfg.V:
        raise ModelFileError(f"vocab has {len(vocab)} words but meta says V={cfg.V}", path)
    shapes = cfg.shapes()
    for name in cfg.names:
        a = z[name]
        if a.shape != shapes[name]:
            raise ModelFileError(
                f"array {name} has shape {a.shape}, expected {shapes[name]}", path)
        if a.dtype.kind != "f":
            raise ModelFileError(f"array {name} has dtype {a.dtype}, expected float", path)
    classes = None
    if cfg.softmax == "class":
        wc = z["word_class"]
        if wc.shape != (cfg.V,) or wc.dtype != np.int32:
            raise ModelFileError(f"array word_class has shape {wc.shape} and dtype {wc.dtype}, "
                                 f"expected ({cfg.V},) int32", path)
        try:
            classes = WordClasses(wc)
        except ValueError as e:
            raise ModelFileError(f"bad word classes: {e}", path) from None
        if classes.C != cfg.C:
            raise ModelFileError(f"word_class holds {classes.C} classes but meta says "
                                 f"C={cfg.C}", path)
    tok = None
    if has_tok:
        t = z[TOKENIZER_ARRAY]
        if t.ndim != 1 or t.dtype != np.uint8:
            raise ModelFileError(f"array {TOKENIZER_ARRAY} has shape {t.shape} and dtype "
                                 f"{t.dtype}, expected 1-d uint8", path)
        tok = t.tobytes()
    digest = checksum(z, vocab, _checksummed(cfg, has_tok))
    if digest != meta.get("sha256"):
        raise ModelFileError("checksum mismatch: the file was edited or damaged", path)
    for name in cfg.names:
        if not np.all(np.isfinite(z[name])):
            raise ModelFileError(f"array {name} holds NaN or Inf", path)
    # A tied model stores affine_W explicitly; load it untied (scoring does not care).
    load_cfg = dataclasses.replace(cfg, tied=False)
    params = Params.from_arrays(load_cfg, z, dtype=dtype, classes=classes)
    return Model(params=params, vocab=vocab, meta=meta, path=path, tokenizer=tok)
