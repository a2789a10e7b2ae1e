"""streamlm as a benchmark peer: RNNLM forward/backward + global-norm clipping
and Adam as streamlm.train runs them (book semantics, same settings as the others)."""

from __future__ import annotations

import math

import numpy as np
from common import BETA1, BETA2, EPS, LR, MAX_GRAD

from streamlm import model as Mm
from streamlm.model import RNNLM
from streamlm.params import ModelConfig, Params


def params_from(weights: dict[str, np.ndarray]) -> Params:
    V, D = weights["embed_W"].shape
    H = weights["rnn_Wh"].shape[0]
    return Params.from_arrays(ModelConfig(V=V, D=D, H=H), weights, dtype=np.float32)




def _hold_blas():
    """As streamlm's train and score jobs do around their loops: numpy's OpenBLAS
    held at one thread while the peer lives (see streamlm.model.hold_blas)."""
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

    def step(self, xs, ts) -> float:
        f32 = np.float32
        g = self.g.flat
        g[...] = 0
        loss = self.model.forward(xs, ts, train=True)
        self.model.backward(self.g)
        norm = math.sqrt(Mm.sum_squares(g))
        rate = MAX_GRAD / (norm + 1e-6)
        gscale = f32(rate) if rate < 1 else f32(1.0)  # as streamlm.train: clip inside Adam
        self.t += 1
        lr_t = LR * math.sqrt(1.0 - BETA2 ** self.t) / (1.0 - BETA1 ** self.t)
        Mm.adam_update(self.p.flat, g, self.m, self.v, f32(lr_t), f32(BETA1), f32(BETA2),
                       f32(EPS), gscale)
        return loss


class StreamlmScorer:
    def __init__(self, weights):
        self._hold = _hold_blas()
        self.p = params_from(weights)
        self.model = RNNLM(self.p)

    def nll(self, xs, ts) -> np.ndarray:
        return self.model.nll(xs, ts)
