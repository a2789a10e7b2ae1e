"""PyTorch's word_language_model recipe on PTB, for a wall-time budget: the peer of
``streamlm train --cell lstm`` on the same machine (issue 26).

    python -m bench.torch_lm --minutes 30 [--model LSTM|GRU] [--layers 2] [--hidden 200]
                             [--dropout 0.2] [--tied] [--lr 20] [--clip 0.25]

pytorch/examples word_language_model/main.py, as its README runs PTB: an embedding
and nn.LSTM (or nn.GRU) of --layers x --hidden, dropout on the embedding, between
layers and before the decoder, tied weights, uniform(-0.1, 0.1) initialisation of the
encoder and decoder, SGD at lr 20 divided by 4 whenever the validation loss does not
improve, gradient norm clipped at 0.25, batch 20, bptt 35; the best model by
validation loss is kept. The vocabulary and the token stream are PTB's words with
``<eos>`` after every line, as streamlm prepares them. Validation and test are
scored as ONE stream with the state carried (batch 1), as ``streamlm score`` and
streamlm's validation do, so that the perplexities compare exactly. Training stops
at the first epoch end after --minutes of wall time (validation included). Threads:
torch.set_num_threads(--threads). Writes bench/results/torch_lm_<model>.json with the
curve (valid ppl per epoch, elapsed seconds) and the test perplexity of the best model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path

from bench.common import RESULTS, SHARED, provenance, this_command

PTB = SHARED / "ptb"


def words(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.extend(line.split())
            out.append("<eos>")
    return out


def main(argv=None) -> None:
    import torch
    from torch import nn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--model", default="LSTM", choices=["LSTM", "GRU"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--tied", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--lr", type=float, default=20.0)
    ap.add_argument("--clip", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seed", type=int, default=1111)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)

    train_w = words(PTB / "ptb.train.txt.gz")
    vocab = {w: i for i, w in enumerate(dict.fromkeys(train_w))}
    ids = {s: torch.tensor([vocab[w] for w in (train_w if s == "train" else
                                                words(PTB / f"ptb.{s}.txt"))])
           for s in ("train", "valid", "test")}
    V, H = len(vocab), a.hidden

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(a.dropout)
            self.encoder = nn.Embedding(V, H)
            self.rnn = getattr(nn, a.model)(H, H, a.layers, dropout=a.dropout)
            self.decoder = nn.Linear(H, V)
            if a.tied:
                self.decoder.weight = self.encoder.weight
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)
            if not a.tied:
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

        def forward(self, x, hidden):
            out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
            return self.decoder(self.drop(out)), hidden

        def init_hidden(self, n):
            z = torch.zeros(a.layers, n, H)
            return (z, z.clone()) if a.model == "LSTM" else z

    def detach(h):
        return tuple(x.detach() for x in h) if isinstance(h, tuple) else h.detach()

    def batchify(data, n):
        k = data.size(0) // n
        return data[:k * n].view(n, -1).t().contiguous()  # (L, n)

    model = Net()
    crit = nn.CrossEntropyLoss(reduction="sum")
    train = batchify(ids["train"], a.batch)

    def evaluate(data) -> float:
        model.eval()
        total, n = 0.0, 0
        src = data.view(-1, 1)
        hidden = model.init_hidden(1)
        with torch.no_grad():
            for i in range(0, src.size(0) - 1, 4096):
                x = src[i:i + min(4096, src.size(0) - 1 - i)]
                y = src[i + 1:i + 1 + x.size(0)]
                out, hidden = model(x, hidden)
                total += crit(out.view(-1, V), y.view(-1)).item()
                n += y.numel()
        return math.exp(total / n)

    lr, best, best_state, curve = a.lr, None, None, []
    t0 = time.monotonic()
    epoch = 0
    while True:
        epoch += 1
        model.train()
        hidden = model.init_hidden(a.batch)
        for i in range(0, train.size(0) - 1, a.bptt):
            seq = min(a.bptt, train.size(0) - 1 - i)
            x, y = train[i:i + seq], train[i + 1:i + 1 + seq]
            hidden = detach(hidden)
            model.zero_grad()
            out, hidden = model(x, hidden)
            loss = crit(out.view(-1, V), y.reshape(-1)) / y.numel()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
        vppl = evaluate(ids["valid"])
        elapsed = time.monotonic() - t0
        curve.append({"epoch": epoch, "valid_ppl": vppl, "lr": lr, "elapsed_s": elapsed})
        print(f"epoch {epoch}: valid ppl {vppl:.2f} lr {lr:g} ({elapsed:.0f} s)", flush=True)
        if best is None or vppl < best:
            best = vppl
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            lr /= 4.0
        if elapsed >= 60 * a.minutes:
            break
    model.load_state_dict(best_state)
    test = evaluate(ids["test"])
    print(f"best valid ppl {best:.2f}, test ppl {test:.2f}")
    out = Path(a.out or RESULTS / f"torch_lm_{a.model.lower()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {**provenance(this_command("torch_lm"), threads=a.threads), "torch": torch.__version__,
           "options": vars(a), "epochs": epoch, "best_valid_ppl": best, "test_ppl": test,
           "tokens_per_epoch": int(ids["train"].numel()), "curve": curve}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
