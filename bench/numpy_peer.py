"""A reasonably fast plain-numpy peer (float32, time-major, BLAS via ``@``).

Same model, same book Adam + clipping as the other peers. This is what "just
write it in numpy" gives; tests/reference.py is the slower float64 oracle.
"""

from __future__ import annotations

import math

import numpy as np

from bench.common import BETA1, BETA2, EPS, LR, MAX_GRAD

NAMES = ("embed_W", "rnn_Wx", "rnn_Wh", "rnn_b", "affine_W", "affine_b")


class _Base:
    def __init__(self, weights: dict[str, np.ndarray]):
        sizes = [weights[n].size for n in NAMES]
        self.flat = np.concatenate([weights[n].astype(np.float32).ravel() for n in NAMES])
        self.p = {}
        off = 0
        for n, s in zip(NAMES, sizes):
            self.p[n] = self.flat[off:off + s].reshape(weights[n].shape)
            off += s
        self.h = None

    def _rnn(self, xs):
        p = self.p
        N, T = xs.shape
        H = p["rnn_Wh"].shape[0]
        ids = np.ascontiguousarray(xs.T).reshape(-1)
        X = p["embed_W"][ids]
        xw = (X @ p["rnn_Wx"] + p["rnn_b"]).reshape(T, N, H)
        hs = np.empty((T + 1, N, H), np.float32)
        hs[0] = 0 if self.h is None else self.h
        Wh = p["rnn_Wh"]
        for t in range(T):
            np.matmul(hs[t], Wh, out=hs[t + 1])
            hs[t + 1] += xw[t]
            np.tanh(hs[t + 1], out=hs[t + 1])
        self.h = hs[T].copy()
        return ids, X, hs


class NumpyScorer(_Base):
    def nll(self, xs, ts):
        N, T = xs.shape
        _, _, hs = self._rnn(xs)
        H = hs.shape[2]
        z = hs[1:].reshape(T * N, H) @ self.p["affine_W"]
        z += self.p["affine_b"]
        lab = np.ascontiguousarray(ts.T).reshape(-1)
        mx = z.max(axis=1, keepdims=True)
        z -= mx
        zl = z[np.arange(T * N), lab].copy()
        np.exp(z, out=z)
        out = np.log(z.sum(axis=1, dtype=np.float64)) - zl
        return out.reshape(T, N).T


class NumpyTrainer(_Base):
    def __init__(self, weights):
        super().__init__(weights)
        self.g = np.zeros_like(self.flat)
        self.gv = {}
        off = 0
        for n in NAMES:
            s = self.p[n].size
            self.gv[n] = self.g[off:off + s].reshape(self.p[n].shape)
            off += s
        self.m = np.zeros_like(self.flat)
        self.v = np.zeros_like(self.flat)
        self.t = 0

    def step(self, xs, ts):
        p, g = self.p, self.gv
        N, T = xs.shape
        M = N * T
        ids, X, hs = self._rnn(xs)
        H = hs.shape[2]
        hs_out = hs[1:].reshape(M, H)
        z = hs_out @ p["affine_W"]
        z += p["affine_b"]
        lab = np.ascontiguousarray(ts.T).reshape(-1)
        z -= z.max(axis=1, keepdims=True)
        zl = z[np.arange(M), lab].copy()
        np.exp(z, out=z)
        s = z.sum(axis=1, dtype=np.float64)
        loss = float(np.mean(np.log(s) - zl))
        z *= (1.0 / (s * M)).astype(np.float32)[:, None]
        z[np.arange(M), lab] -= np.float32(1.0 / M)
        # backward
        self.g[...] = 0
        np.matmul(hs_out.T, z, out=g["affine_W"])
        g["affine_b"][...] = z.sum(axis=0)
        dhs = (z @ p["affine_W"].T).reshape(T, N, H)
        dxw = np.empty((T, N, H), np.float32)
        dh = np.zeros((N, H), np.float32)
        WhT = p["rnn_Wh"].T
        for t in range(T - 1, -1, -1):
            h = hs[t + 1]
            np.multiply(dhs[t] + dh, 1.0 - h * h, out=dxw[t])
            np.matmul(dxw[t], WhT, out=dh)
        D2 = dxw.reshape(M, H)
        np.matmul(hs[:-1].reshape(M, H).T, D2, out=g["rnn_Wh"])
        np.matmul(X.T, D2, out=g["rnn_Wx"])
        g["rnn_b"][...] = D2.sum(axis=0)
        np.add.at(g["embed_W"], ids, D2 @ p["rnn_Wx"].T)
        # clip + Adam (book)
        norm = math.sqrt(float(np.dot(self.g, self.g)))
        rate = MAX_GRAD / (norm + 1e-6)
        if rate < 1:
            self.g *= np.float32(rate)
        self.t += 1
        lr_t = LR * math.sqrt(1.0 - BETA2 ** self.t) / (1.0 - BETA1 ** self.t)
        self.m += (1 - BETA1) * (self.g - self.m)
        self.v += (1 - BETA2) * (self.g * self.g - self.v)
        self.flat -= np.float32(lr_t) * self.m / (np.sqrt(self.v) + np.float32(EPS))
        return loss
