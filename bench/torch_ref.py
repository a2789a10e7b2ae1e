"""The same model in PyTorch (CPU): the peer that streamlm must beat.

nn.Embedding -> nn.RNN(tanh) -> nn.Linear -> cross entropy, loaded with the
SAME weights as streamlm. nn.RNN has two biases (b_ih, b_hh): b_ih holds
streamlm's rnn_b and b_hh is fixed at zero (requires_grad=False, so the
optimiser never moves it). Layout: weight_ih = Wx^T, weight_hh = Wh^T,
Linear.weight = affine_W^T.

The optimiser is torch's own Adam (fused kernel when available), made to
follow the book's Adam exactly: the book adds eps to sqrt(v) before the bias
correction, torch after it, so eps_torch = eps / sqrt(1 - beta2^t) is set on
every step. Clipping is torch's clip_grad_norm_ (the book's global-norm rule).

Optional dependency: ``pip install torch==2.13.0``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bench.common import BETA1, BETA2, EPS, LR, MAX_GRAD


class TorchRnnlm(nn.Module):
    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        V, D = weights["embed_W"].shape
        H = weights["rnn_Wh"].shape[0]
        self.embed = nn.Embedding(V, D)
        self.rnn = nn.RNN(D, H, nonlinearity="tanh", batch_first=True)
        self.affine = nn.Linear(H, V)
        with torch.no_grad():
            self.embed.weight.copy_(torch.from_numpy(weights["embed_W"]))
            self.rnn.weight_ih_l0.copy_(torch.from_numpy(weights["rnn_Wx"].T.copy()))
            self.rnn.weight_hh_l0.copy_(torch.from_numpy(weights["rnn_Wh"].T.copy()))
            self.rnn.bias_ih_l0.copy_(torch.from_numpy(weights["rnn_b"]))
            self.rnn.bias_hh_l0.zero_()
            self.affine.weight.copy_(torch.from_numpy(weights["affine_W"].T.copy()))
            self.affine.bias.copy_(torch.from_numpy(weights["affine_b"]))
        self.rnn.bias_hh_l0.requires_grad_(False)
        self.h: torch.Tensor | None = None
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-1)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """xs: (N, T) long -> logits (N, T, V); carries the state (detached)."""
        x = self.embed(xs)
        hs, h = self.rnn(x, self.h)
        self.h = h.detach()
        return self.affine(hs)

    def reset_state(self):
        self.h = None


class TorchTrainer:
    """One training step = forward, backward, clip, Adam (book semantics)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.model = TorchRnnlm(weights)
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            self.opt = torch.optim.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, fused=True)
            self.fused = True
        except (RuntimeError, TypeError):
            self.opt = torch.optim.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS)
            self.fused = False
        self.params = params
        self.t = 0

    def step(self, xs: np.ndarray, ts: np.ndarray) -> float:
        m = self.model
        xs_t = torch.from_numpy(xs.astype(np.int64))
        ts_t = torch.from_numpy(ts.astype(np.int64))
        logits = m(xs_t)
        loss = m.loss_fn(logits.reshape(-1, logits.shape[-1]), ts_t.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD)
        self.t += 1
        self.opt.param_groups[0]["eps"] = EPS / math.sqrt(1.0 - BETA2 ** self.t)
        self.opt.step()
        return float(loss.detach())


class TorchScorer:
    """Per-token NLL with a carried state, no autograd."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.model = TorchRnnlm(weights).eval()

    @torch.inference_mode()
    def nll(self, xs: np.ndarray, ts: np.ndarray) -> np.ndarray:
        m = self.model
        logits = m(torch.from_numpy(xs.astype(np.int64)))
        V = logits.shape[-1]
        out = nn.functional.cross_entropy(logits.reshape(-1, V),
                                          torch.from_numpy(ts.astype(np.int64)).reshape(-1),
                                          reduction="none")
        return out.reshape(xs.shape).numpy()
