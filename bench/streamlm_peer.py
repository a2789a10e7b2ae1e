"""streamlm as a benchmark peer: RNNLM forward/backward + global-norm clipping
and Adam as streamlm.jobs.train runs them (book semantics, same settings as the others).

The peer also drives an older streamlm tree (the ``alt`` peer of an A/B run):
before the restructuring (79a6f8e) the model carried its state itself, the
optimisers lived in ``streamlm.nn.model`` and the jobs held numpy's OpenBLAS at
one thread with ``model.hold_blas()``; now the caller carries the state,
``streamlm.compute.threads`` (later ``streamlm.nn.optim``) has the optimisers and the pool
holds BLAS itself.
"""

from __future__ import annotations

import math

import numpy as np

from bench.common import BETA1, BETA2, EPS, LR, MAX_GRAD
from streamlm.nn import model as Mm
from streamlm.nn.model import RNNLM
from streamlm.nn.params import ModelConfig, Params

# (by attribute, not by import: an editable install finds the current tree's new
# modules even when an old tree comes first on sys.path)
OLD_API = hasattr(Mm, "hold_blas")
if OLD_API:
    ops = Mm
else:
    from streamlm.compute import threads as ops
    if not hasattr(ops, "adam_update"):  # since the optimiser got its module
        from streamlm.nn import optim as ops


def params_from(weights: dict[str, np.ndarray]) -> Params:
    V, D = weights["embed_W"].shape
    H = weights["rnn_Wh"].shape[0]
    return Params.from_arrays(ModelConfig(V=V, D=D, H=H), weights, dtype=np.float32)


def _hold_blas():
    """As the jobs of the old tree did around their loops (the new pool holds BLAS)."""
    if not OLD_API:
        return None
    hold = Mm.hold_blas()
    hold.__enter__()
    return hold


class StreamlmTrainer:
    def __init__(self, weights):
        self._hold = _hold_blas()
        self.p = params_from(weights)
        self.g = self.p.zeros_like()
        self.model = RNNLM(self.p)
        self.m = np.zeros_like(self.p.flat)
        self.v = np.zeros_like(self.p.flat)
        self.t = 0
        self.h = None

    def step(self, xs, ts) -> float:
        f32 = np.float32
        g = self.g.flat
        g[...] = 0
        if OLD_API:
            loss = self.model.forward(xs, ts, train=True)
        else:
            loss, self.h = self.model.forward(xs, ts, self.h, train=True)
        self.model.backward(self.g)
        norm = math.sqrt(ops.sum_squares(g))
        rate = MAX_GRAD / (norm + 1e-6)
        gscale = f32(rate) if rate < 1 else f32(1.0)  # as streamlm.jobs.train: clip inside Adam
        self.t += 1
        lr_t = LR * math.sqrt(1.0 - BETA2 ** self.t) / (1.0 - BETA1 ** self.t)
        ops.adam_update(self.p.flat, g, self.m, self.v, f32(lr_t), f32(BETA1), f32(BETA2),
                        f32(EPS), gscale)
        return loss


class StreamlmScorer:
    def __init__(self, weights):
        self._hold = _hold_blas()
        self.p = params_from(weights)
        self.model = RNNLM(self.p)
        self.h = None

    def nll(self, xs, ts) -> np.ndarray:
        if OLD_API:
            return self.model.nll(xs, ts)
        nll, self.h = self.model.nll(xs, ts, self.h)
        return nll
