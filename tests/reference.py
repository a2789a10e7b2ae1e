"""Plain numpy reference of SimpleRnnlm, written after the book's
common/time_layers.py (batch-major (N, T, ...) layout, short vectorised
layers). It shares no code with streamlm's kernels: tests compare the two.
"""

from __future__ import annotations

import numpy as np


def embedding_forward(W, xs):
    return W[xs]  # (N, T, D)


def embedding_backward(dW, xs, dout):
    np.add.at(dW, xs, dout)  # repeated ids add up


def rnn_forward(xs, h0, Wx, Wh, b, reset=None):
    """xs: (N, T, D) -> hs: (N, T, H)."""
    N, T, _ = xs.shape
    H = Wh.shape[0]
    hs = np.empty((N, T, H), dtype=xs.dtype)
    h = h0
    for t in range(T):
        if reset is not None:
            h = h * (reset[:, t] == 0)[:, None]
        h = np.tanh(h @ Wh + xs[:, t] @ Wx + b)
        hs[:, t] = h
    return hs


def rnn_backward(dhs, xs, h0, hs, Wx, Wh):
    """Returns dxs, dh0, dWx, dWh, db."""
    N, T, _ = xs.shape
    dWx = np.zeros_like(Wx)
    dWh = np.zeros_like(Wh)
    db = np.zeros(Wh.shape[0], dtype=xs.dtype)
    dxs = np.zeros_like(xs)
    dh = np.zeros_like(h0)
    for t in reversed(range(T)):
        h_prev = h0 if t == 0 else hs[:, t - 1]
        dt = (dhs[:, t] + dh) * (1 - hs[:, t] ** 2)
        db += dt.sum(axis=0)
        dWh += h_prev.T @ dt
        dWx += xs[:, t].T @ dt
        dh = dt @ Wh.T
        dxs[:, t] = dt @ Wx.T
    return dxs, dh, dWx, dWh, db


def softmax_ce(scores, ts):
    """scores: (N, T, V); ts: (N, T) with -1 ignored.

    Returns (per-token nll (N, T), mean loss, dscores of the mean loss).
    """
    N, T, V = scores.shape
    s = scores.reshape(N * T, V).astype(np.float64)
    t = ts.reshape(N * T)
    mask = t >= 0
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)
    tt = np.where(mask, t, 0)
    nll = -np.log(p[np.arange(N * T), tt]) * mask
    count = mask.sum()
    loss = nll.sum() / count
    dp = p.copy()
    dp[np.arange(N * T), tt] -= 1
    dp *= mask[:, None] / count
    return nll.reshape(N, T), loss, dp.reshape(N, T, V).astype(scores.dtype)


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def class_softmax_ce(hs, ts, class_W, class_b, W, b, word_class):
    """The class-factored softmax, dense over V (a mask keeps each token's class):
    P(w|h) = softmax(h class_W + class_b)[c(w)] * softmax over {v: c(v) = c(w)} of
    (h W + b)[w]. Word ids as the model file has them. hs: (N, T, H); ts: (N, T)
    with -1 ignored. Returns (nll (N, T), mean loss, grads of the mean loss: dict
    of dhs, class_W, class_b, affine_W, affine_b)."""
    N, T, H = hs.shape
    h = hs.reshape(N * T, H).astype(np.float64)
    t = ts.reshape(N * T)
    mask = t >= 0
    tt = np.where(mask, t, 0)
    c = word_class[tt]
    rows = np.arange(N * T)
    pc = _softmax(h @ class_W + class_b)
    same = word_class[None, :] == c[:, None]
    pw = _softmax(np.where(same, h @ W + b, -np.inf))
    nll = -(np.log(pc[rows, c]) + np.log(pw[rows, tt])) * mask
    count = mask.sum()
    dzc = pc.copy()
    dzc[rows, c] -= 1
    dzc *= mask[:, None] / count
    dzw = pw.copy()
    dzw[rows, tt] -= 1
    dzw *= mask[:, None] / count
    g = {"class_W": h.T @ dzc, "class_b": dzc.sum(axis=0), "affine_W": h.T @ dzw,
         "affine_b": dzw.sum(axis=0),
         "dhs": (dzc @ class_W.T + dzw @ W.T).reshape(N, T, H)}
    return nll.reshape(N, T), nll.sum() / count, g


def output_layer(params, hs, ts, word_class=None):
    """The output layer of the model's arrays ``params`` (word-id order) on hidden states
    hs (N, T, H), targets ts (N, T) (-1 ignored): the full softmax, or with ``word_class``
    the class softmax. Returns (nll (N, T), mean loss, dhs, its parameters' grads)."""
    if word_class is None:
        scores = hs @ params["affine_W"] + params["affine_b"]
        nll, loss, dscores = softmax_ce(scores, ts)
        g = {"affine_W": np.einsum("nth,ntv->hv", hs, dscores),
             "affine_b": dscores.sum(axis=(0, 1))}
        return nll, loss, dscores @ params["affine_W"].T, g
    nll, loss, g = class_softmax_ce(hs, ts, params["class_W"], params["class_b"],
                                    params["affine_W"], params["affine_b"], word_class)
    return nll, loss, g.pop("dhs"), g


def model_loss(params, xs, ts, h0, word_class=None):
    """Mean loss and final state of the whole model. params: dict of arrays (word-id
    order); word_class: the class of each word for a class softmax, else None."""
    x = embedding_forward(params["embed_W"], xs)
    hs = rnn_forward(x, h0, params["rnn_Wx"], params["rnn_Wh"], params["rnn_b"])
    nll, loss, _, _ = output_layer(params, hs, ts, word_class)
    return loss, hs[:, -1], nll


def model_grads(params, xs, ts, h0, word_class=None):
    """Loss and analytic gradients (dict, plus 'h0', and the final state 'h_last')."""
    x = embedding_forward(params["embed_W"], xs)
    hs = rnn_forward(x, h0, params["rnn_Wx"], params["rnn_Wh"], params["rnn_b"])
    _, loss, dhs, g = output_layer(params, hs, ts, word_class)
    dx, dh0, g["rnn_Wx"], g["rnn_Wh"], g["rnn_b"] = rnn_backward(
        dhs, x, h0, hs, params["rnn_Wx"], params["rnn_Wh"])
    g["embed_W"] = np.zeros_like(params["embed_W"])
    embedding_backward(g["embed_W"], xs, dx)
    g["h0"] = dh0
    g["h_last"] = hs[:, -1]
    return loss, g


class NumpyRnnlm:
    """Stateful reference model (the book's SimpleRnnlm), for benchmarks and tests: the
    state carried from block to block (zero before the first)."""

    def __init__(self, params):
        self.params = {k: np.array(v) for k, v in params.items()}
        self.h = None

    def _h0(self, N):
        H = self.params["rnn_Wh"].shape[0]
        return np.zeros((N, H), self.params["rnn_Wh"].dtype) if self.h is None else self.h

    def loss(self, xs, ts):
        """The mean loss of the block (xs, ts) (N, T), from the carried state."""
        loss, self.h, _ = model_loss(self.params, xs, ts, self._h0(xs.shape[0]))
        return loss

    def forward_backward(self, xs, ts):
        """The mean loss and gradients of the block (dict, plus 'h0': of the state
        before it), from the carried state."""
        loss, g = model_grads(self.params, xs, ts, self._h0(xs.shape[0]))
        self.h = g.pop("h_last")
        return loss, g


# ------------------------------------------------------------ gated cells --
# The book's TimeLSTM (common/time_layers.py: gates f, g, i, o) and PyTorch's nn.GRU
# (gates r, z, n), batch-major, each step written out as the book writes it.
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_forward(xs, h0, c0, Wx, Wh, b, reset=None):
    """xs: (N, T, D) -> hs, cs: (N, T, H)."""
    N, T, _ = xs.shape
    H = Wh.shape[0]
    hs = np.empty((N, T, H), dtype=xs.dtype)
    cs = np.empty((N, T, H), dtype=xs.dtype)
    h, c = h0, c0
    for t in range(T):
        if reset is not None:
            keep = (reset[:, t] == 0)[:, None]
            h, c = h * keep, c * keep
        A = xs[:, t] @ Wx + h @ Wh + b
        f, g = sigmoid(A[:, :H]), np.tanh(A[:, H:2 * H])
        i, o = sigmoid(A[:, 2 * H:3 * H]), sigmoid(A[:, 3 * H:])
        c = f * c + g * i
        h = o * np.tanh(c)
        hs[:, t], cs[:, t] = h, c
    return hs, cs


def gru_forward(xs, h0, Wx, Wh, b, bh, reset=None):
    """xs: (N, T, D) -> hs: (N, T, H) (PyTorch's nn.GRU equations)."""
    N, T, _ = xs.shape
    H = Wh.shape[0]
    hs = np.empty((N, T, H), dtype=xs.dtype)
    h = h0
    for t in range(T):
        if reset is not None:
            h = h * (reset[:, t] == 0)[:, None]
        ax = xs[:, t] @ Wx + b
        ah = h @ Wh + bh
        r = sigmoid(ax[:, :H] + ah[:, :H])
        z = sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
        n = np.tanh(ax[:, 2 * H:] + r * ah[:, 2 * H:])
        h = (1 - z) * n + z * h
        hs[:, t] = h
    return hs


def model_nll(P: dict, cfg, xs, ts, state0, word_class=None, reset=None):
    """Per-token NLL (N, T) and the state after the block (N, S) of a model of any cell
    and depth (``cfg``: its ModelConfig; P: its arrays in word-id order, as the model
    file has them; ``word_class`` for a class softmax); every layer's state side by
    side in state0 ([h, c] for an LSTM)."""
    from streamlm.nn.params import layer_names

    X = P["embed_W"][xs]
    H = cfg.H
    width = (2 if cfg.cell == "lstm" else 1) * H
    finals = []
    for layer in range(cfg.layers):
        n = layer_names(cfg, layer)
        s = state0[:, layer * width:(layer + 1) * width]
        if cfg.cell == "rnn":
            X = rnn_forward(X, s, P[n["Wx"]], P[n["Wh"]], P[n["b"]], reset=reset)
            finals.append(X[:, -1])
        elif cfg.cell == "lstm":
            X, cs = lstm_forward(X, s[:, :H], s[:, H:], P[n["Wx"]], P[n["Wh"]], P[n["b"]],
                                 reset=reset)
            finals.append(np.concatenate([X[:, -1], cs[:, -1]], axis=1))
        else:
            X = gru_forward(X, s, P[n["Wx"]], P[n["Wh"]], P[n["b"]], P[n["bh"]], reset=reset)
            finals.append(X[:, -1])
    if word_class is not None:
        nll, _, _ = class_softmax_ce(X, ts, P["class_W"], P["class_b"], P["affine_W"],
                                     P["affine_b"], word_class)
    else:
        nll, _, _ = softmax_ce(X @ P["affine_W"] + P["affine_b"], ts)
    return nll, np.concatenate(finals, axis=1)
