"""Weights, their initialisation, and the model file.

The six parameters of SimpleRnnlm live in one flat buffer (so that gradient
clipping and the optimisers are one kernel call each) and are exposed as
named views:

    embed_W (V, D)   rnn_Wx (D, H)   rnn_Wh (H, H)   rnn_b (H,)
    affine_W (H, V)  affine_b (V,)

With weight tying (``tied=True``, needs D == H) ``affine_W`` is the view
``embed_W.T`` and takes no storage of its own.

The model file is a plain ``.npz`` that numpy alone reads with
``np.load(path, allow_pickle=False)``: the six arrays under those names, plus
``vocab`` (a unicode string array, words in id order) and ``meta`` (a 0-d
unicode array holding one JSON object; see :func:`save_model` and
:mod:`streamlm.store`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamlm import store
from streamlm.errors import ModelFileError

FORMAT = "streamlm-model"
FORMAT_VERSION = 1
PARAM_NAMES = ("embed_W", "rnn_Wx", "rnn_Wh", "rnn_b", "affine_W", "affine_b")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model: vocabulary V, embedding D, hidden H."""

    V: int
    D: int
    H: int
    tied: bool = False

    def __post_init__(self):
        for name in ("V", "D", "H"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.tied and self.D != self.H:
            raise ValueError("weight tying needs embed size == hidden size")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        V, D, H = self.V, self.D, self.H
        return {
            "embed_W": (V, D),
            "rnn_Wx": (D, H),
            "rnn_Wh": (H, H),
            "rnn_b": (H,),
            "affine_W": (H, V),
            "affine_b": (V,),
        }

    def storage_names(self) -> tuple[str, ...]:
        """The arrays that own storage in the flat buffer (affine_W is a view when tied)."""
        return tuple(n for n in PARAM_NAMES if not (self.tied and n == "affine_W"))


class Params:
    """Six named parameter arrays as views into one flat buffer."""

    def __init__(self, config: ModelConfig, dtype=np.float32, flat: np.ndarray | None = None):
        self.config = config
        self.dtype = np.dtype(dtype)
        shapes = config.shapes()
        sizes = [int(np.prod(shapes[n])) for n in config.storage_names()]
        total = int(sum(sizes))
        if flat is None:
            flat = np.zeros(total, dtype=self.dtype)
        elif flat.shape != (total,) or flat.dtype != self.dtype:
            raise ValueError(f"flat buffer must be ({total},) {self.dtype}")
        self.flat = flat
        self._views: dict[str, np.ndarray] = {}
        off = 0
        for name, size in zip(config.storage_names(), sizes):
            self._views[name] = flat[off:off + size].reshape(shapes[name])
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
        return ((n, self._views[n]) for n in PARAM_NAMES)

    def zeros_like(self) -> Params:
        return Params(self.config, self.dtype)

    def copy(self) -> Params:
        return Params(self.config, self.dtype, self.flat.copy())

    def astype(self, dtype) -> Params:
        return Params(self.config, dtype, self.flat.astype(dtype))

    @classmethod
    def init(cls, config: ModelConfig, seed: int = 0, dtype=np.float32) -> Params:
        """Seeded initialisation.

        embed_W ~ N(0, 0.01^2); rnn_Wx, rnn_Wh, affine_W ~ N(0, 1/fan_in) (the
        book's Xavier: std 1/sqrt(n) for n input nodes); biases 0. Drawn in
        float64 from one PCG64 stream in a fixed order, then cast, so float32
        and float64 models with the same seed hold the same numbers.
        """
        p = cls(config, dtype)
        rng = np.random.default_rng(seed)
        V, D, H = config.V, config.D, config.H
        p["embed_W"][...] = rng.standard_normal((V, D)) * 0.01
        p["rnn_Wx"][...] = rng.standard_normal((D, H)) / np.sqrt(D)
        p["rnn_Wh"][...] = rng.standard_normal((H, H)) / np.sqrt(H)
        if not config.tied:
            p["affine_W"][...] = rng.standard_normal((H, V)) / np.sqrt(H)
        return p

    @classmethod
    def from_arrays(cls, config: ModelConfig, arrays: dict[str, np.ndarray], dtype=np.float32):
        p = cls(config, dtype)
        for name in config.storage_names():
            p[name][...] = arrays[name]
        return p


def checksum(arrays: dict[str, np.ndarray], vocab: Sequence[str]) -> str:
    """sha256 over the six arrays (name, dtype, shape, bytes; fixed order) and the vocabulary."""
    h = hashlib.sha256()
    for name in PARAM_NAMES:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update("\n".join(vocab).encode("utf-8"))
    return h.hexdigest()


@dataclass
class Model:
    """A loaded model file: weights, vocabulary and metadata."""

    params: Params
    vocab: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def config(self) -> ModelConfig:
        return self.params.config


def save_model(path: str | os.PathLike, params: Params, vocab: Sequence[str],
               train_config: dict | None = None, extra_meta: dict | None = None) -> str:
    """Write the model file atomically. Returns the sha256 stored in ``meta``.

    ``meta`` holds: format, format_version, V, D, H, tied, dtype,
    train_config, sha256 (over the arrays and vocab, see :func:`checksum`).
    """
    cfg = params.config
    vocab = list(vocab)
    if len(vocab) != cfg.V:
        raise ValueError(f"vocabulary has {len(vocab)} words, model V={cfg.V}")
    arrays = {n: np.ascontiguousarray(a, dtype=params.dtype) for n, a in params.items()}
    digest = checksum(arrays, vocab)
    meta = {
        "V": cfg.V, "D": cfg.D, "H": cfg.H,
        "tied": cfg.tied,
        "dtype": params.dtype.name,
        "train_config": train_config or {},
        "sha256": digest,
    }
    if extra_meta:
        meta.update(extra_meta)
    vocab_arr = np.array(vocab, dtype=np.str_) if vocab else np.zeros(0, dtype="<U1")
    store.save(path, FORMAT, FORMAT_VERSION, meta, {**arrays, "vocab": vocab_arr})
    return digest


def load_model(path: str | os.PathLike, dtype=np.float32) -> Model:
    """Load and verify a model file. Never unpickles.

    Raises ModelFileError (one line naming the file) when the file is missing,
    truncated, not an npz, lacks or has extra arrays, has wrong shapes or
    dtypes, or fails its sha256.
    """
    path = os.fspath(path)
    meta, z = store.load(path, FORMAT, FORMAT_VERSION, what="model file", error=ModelFileError)
    names = set(z)
    expected = set(PARAM_NAMES) | {"vocab"}
    missing = sorted(expected - names)
    extra = sorted(names - expected)
    if missing:
        raise ModelFileError(f"missing arrays: {', '.join(missing)}", path)
    if extra:
        raise ModelFileError(f"unexpected arrays: {', '.join(extra)}", path)
    arrays = {n: z[n] for n in PARAM_NAMES}
    vocab_arr = z["vocab"]
    if vocab_arr.ndim != 1 or vocab_arr.dtype.kind != "U":
        raise ModelFileError("'vocab' must be a 1-d string array", path)
    vocab = [str(w) for w in vocab_arr]
    try:
        cfg = ModelConfig(V=int(meta["V"]), D=int(meta["D"]), H=int(meta["H"]),
                          tied=bool(meta.get("tied", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"bad model dimensions in meta ({e})", path) from None
    if len(vocab) != cfg.V:
        raise ModelFileError(f"vocab has {len(vocab)} words but meta says V={cfg.V}", path)
    shapes = cfg.shapes()
    for name in PARAM_NAMES:
        a = arrays[name]
        if a.shape != shapes[name]:
            raise ModelFileError(
                f"array {name} has shape {a.shape}, expected {shapes[name]}", path)
        if a.dtype.kind != "f":
            raise ModelFileError(f"array {name} has dtype {a.dtype}, expected float", path)
    digest = checksum(arrays, vocab)
    if digest != meta.get("sha256"):
        raise ModelFileError("checksum mismatch: the file was edited or damaged", path)
    for name in PARAM_NAMES:
        if not np.all(np.isfinite(arrays[name])):
            raise ModelFileError(f"array {name} holds NaN or Inf", path)
    # A tied model stores affine_W explicitly; load it untied (scoring does not care).
    load_cfg = dataclasses.replace(cfg, tied=False)
    params = Params.from_arrays(load_cfg, arrays, dtype=dtype)
    return Model(params=params, vocab=vocab, meta=meta, path=path)
