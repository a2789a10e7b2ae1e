"""Gated cells against PyTorch 2.13 CPU: scoring and training, the same weights and answer.

    python -m bench.bench_gated [--cells lstm,gru] [--hidden 256] [--layers 1]
                                [--tokens 100000] [--reps 3] [--threads 2]

streamlm is timed end to end, as a user runs it (whole processes: start-up, reading
and tokenising included): ``streamlm score MODEL TEXT`` (one stream, the state
carried), ``streamlm score MODEL SHORT x 20 --batch 20`` (twenty inputs of a
twentieth of the text each, as parallel streams) and ``streamlm train`` (N=20,
T=35, SGD, steady-state tokens/s: the median of the log's interval records).
PyTorch is timed on its compute only (no start-up, no reading): nn.LSTM / nn.GRU
with streamlm's weights (torch's gate order), an embedding and a linear decoder
with log-softmax, on the same token ids: one stream in chunks of 2048 steps with
the state carried; twenty streams in blocks of 100 steps; a training step of N=20,
T=35 (forward, cross-entropy, backward, clipping, SGD). Same thread count for both
(torch.set_num_threads; --threads). V=10,000 (PTB's words), a full softmax (torch
has no class softmax), D=H.

Before any timing the answers are checked: torch's log-probabilities of the text
equal streamlm's (the CLI's total log-probability, 1e-4 relative); a mismatch stops
the bench. The peers run in turn (streamlm, torch, streamlm ...), medians of
--reps. Writes bench/results/gated.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import CACHE, RESULTS, provenance, ptb_vocab, this_command

PTB = Path(os.environ.get("STREAMLM_SHARED_DATA", Path(__file__).resolve().parents[2] /
                          "shared" / "data")) / "ptb"


def ptb_lines() -> list[str]:
    import gzip

    with gzip.open(PTB / "ptb.train.txt.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def make_model(cell: str, H: int, layers: int, vocab: list[str]) -> Path:
    from streamlm.nn.params import ModelConfig, Params, save_model

    f = CACHE / f"gated_{cell}_{layers}x{H}.npz"
    if not f.exists():
        p = Params.init(ModelConfig(V=len(vocab), D=H, H=H, cell=cell, layers=layers), seed=0)
        a = p.file_arrays()
        rng = np.random.default_rng(1)
        for k in a:  # a trained-looking spread, biases included
            a[k] = a[k] + rng.standard_normal(a[k].shape).astype(np.float32) * 0.05
        p.set_file_arrays(a)
        CACHE.mkdir(parents=True, exist_ok=True)
        save_model(f, p, vocab)
    return f


def text_of(tokens: int, lines: list[str]) -> tuple[Path, int]:
    """The first lines of PTB train holding about ``tokens`` tokens, and their count."""
    out, n = [], 0
    for line in lines:
        if n >= tokens:
            break
        out.append(line)
        n += len(line.split()) + 1
    f = CACHE / f"gated_text_{n}.txt"
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("\n".join(out) + "\n")
    return f, n


def run(cmd: list[str], threads: int) -> tuple[dict | None, float]:
    env = dict(os.environ, STREAMLM_THREADS=str(threads))
    with tempfile.TemporaryFile("w+") as out:
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"{cmd} failed:\n{p.stderr}")
        out.seek(0)
        text = out.read().strip()
    return (json.loads(text) if text.startswith("{") else None), wall


def score_cmd(model: Path, inputs: list[Path], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "streamlm", "-q", "score", str(model),
            *map(str, inputs), "--json", "--engine", "numba", *extra]


# -------------------------------------------------------------------- torch --
class TorchPeer:
    """streamlm's model file in torch: embedding, nn.LSTM / nn.GRU, decoder."""

    def __init__(self, path: Path, threads: int):
        import torch

        from streamlm.nn.params import layer_names, load_model

        torch.set_num_threads(threads)
        m = load_model(path)
        cfg, a = m.config, m.params.file_arrays()
        self.torch, self.cfg, H = torch, cfg, cfg.H
        Net = torch.nn.LSTM if cfg.cell == "lstm" else torch.nn.GRU
        self.rnn = Net(cfg.D, H, num_layers=cfg.layers)
        with torch.no_grad():
            for layer in range(cfg.layers):
                n = layer_names(cfg, layer)
                Wx, Wh, b = a[n["Wx"]].T, a[n["Wh"]].T, a[n["b"]]
                bh = a[n["bh"]] if cfg.cell == "gru" else np.zeros_like(b)
                if cfg.cell == "lstm":  # f, g, i, o -> torch's i, f, g, o
                    order = np.r_[2 * H:3 * H, 0:H, H:2 * H, 3 * H:4 * H]
                    Wx, Wh, b = Wx[order], Wh[order], b[order]
                for name, v in (("weight_ih", Wx), ("weight_hh", Wh), ("bias_ih", b),
                                ("bias_hh", bh)):
                    getattr(self.rnn, f"{name}_l{layer}").copy_(
                        torch.from_numpy(np.ascontiguousarray(v)))
        self.emb = torch.nn.Embedding.from_pretrained(torch.from_numpy(a["embed_W"]),
                                                      freeze=False)
        self.dec = torch.nn.Linear(H, cfg.V)
        with torch.no_grad():
            self.dec.weight.copy_(torch.from_numpy(np.ascontiguousarray(a["affine_W"].T)))
            self.dec.bias.copy_(torch.from_numpy(a["affine_b"]))
        self.vocab = {w: i for i, w in enumerate(m.vocab)}

    def ids(self, text: Path) -> np.ndarray:
        unk, eos = self.vocab["<unk>"], self.vocab["<eos>"]
        out = []
        for line in text.read_text().splitlines():
            out.extend(self.vocab.get(w, unk) for w in line.split())
            out.append(eos)
        return np.array(out, dtype=np.int64)

    def logprob(self, ids: np.ndarray, streams: int, chunk: int) -> float:
        """The total ln p of ``streams`` copies of the stream ``ids`` (each from the
        zero state, the first token after <eos>), in chunks of ``chunk`` steps."""
        torch = self.torch
        eos = self.vocab["<eos>"]
        x = torch.from_numpy(np.concatenate([[eos], ids[:-1]])).view(-1, 1).repeat(1, streams)
        y = torch.from_numpy(ids).view(-1, 1).repeat(1, streams)
        total, h = 0.0, None
        with torch.no_grad():
            for i in range(0, len(ids), chunk):
                out, h = self.rnn(self.emb(x[i:i + chunk]), h)
                lp = torch.log_softmax(self.dec(out), dim=-1)
                total += float(lp.gather(2, y[i:i + chunk, :, None]).sum())
        return total

    def train_rate(self, ids: np.ndarray, steps: int) -> float:
        """Tokens/s of training steps (N=20, T=35, SGD lr 1, clip 0.25)."""
        torch = self.torch
        N, T = 20, 35
        L = len(ids) // N
        data = torch.from_numpy(ids[:L * N]).view(N, L).t().contiguous()
        params = [*self.rnn.parameters(), *self.emb.parameters(), *self.dec.parameters()]
        crit = torch.nn.CrossEntropyLoss()
        h = None

        def step(i):
            nonlocal h
            x, y = data[i:i + T], data[i + 1:i + 1 + T]
            if h is not None:
                h = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
            for p in params:
                p.grad = None
            out, h = self.rnn(self.emb(x), h)
            loss = crit(self.dec(out).view(-1, self.cfg.V), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.25)
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-1.0)

        for i in range(3):
            step(i * T)
        t = time.perf_counter()
        for k in range(steps):
            step((3 + k) * T % (L - T - 1))
        return steps * N * T / (time.perf_counter() - t)


def streamlm_train_rate(cell: str, H: int, layers: int, threads: int, seconds: float) -> float:
    shards = CACHE / "ptb_shards"
    if not (shards / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "streamlm", "-q", "prepare",
                        str(PTB / "ptb.train.txt.gz"), "--out", str(shards)], check=True)
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "log.jsonl"
        run([sys.executable, "-m", "streamlm", "-q", "train", str(shards), "--out",
             str(Path(d) / "m.npz"), "--cell", cell, "--layers", str(layers), "--embed",
             str(H), "--hidden", str(H), "--batch", "20", "--bptt", "35", "--optimizer", "sgd",
             "--lr", "1", "--clip", "0.25", "--dropout", "0", "--max-minutes",
             str(seconds / 60), "--log", str(log), "--log-interval", "20",
             "--checkpoint-every", "0"], threads)
        rates = [r["tokens_per_s"] for r in map(json.loads, log.read_text().splitlines())
                 if r["kind"] == "interval" and r["tokens_per_s"]][1:]
    return float(np.median(rates))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-seconds", type=float, default=40.0)
    ap.add_argument("--out", default=str(RESULTS / "gated.json"))
    a = ap.parse_args(argv)
    vocab, lines = ptb_vocab(), ptb_lines()
    text, ntok = text_of(a.tokens, lines)
    short, nshort = text_of(a.tokens // 20, lines)  # 20 streams of it: about --tokens in all
    rows = []
    for cell in a.cells.split(","):
        model = make_model(cell, a.hidden, a.layers, vocab)
        peer = TorchPeer(model, a.threads)
        ids, sids = peer.ids(text), peer.ids(short)
        assert len(ids) == ntok and len(sids) == nshort
        # the same answer first: torch's total against the CLI's, both modes
        one, _ = run(score_cmd(model, [text], []), a.threads)
        many, _ = run(score_cmd(model, [short] * 20, ["--batch", "20"]), a.threads)
        t1 = peer.logprob(ids, 1, 2048)
        t20 = peer.logprob(sids, 20, 100)
        for name, got, want in (("1 stream", one["logprob"], t1),
                                ("20 streams", many["logprob"], t20)):
            if not math.isclose(got, want, rel_tol=1e-4):
                raise SystemExit(f"{cell} {name}: streamlm {got} != torch {want}")
        walls = {"streamlm 1": [], "torch 1": [], "streamlm 20": [], "torch 20": []}
        for _ in range(a.reps):
            walls["streamlm 1"].append(run(score_cmd(model, [text], []), a.threads)[1])
            t = time.perf_counter()
            peer.logprob(ids, 1, 2048)
            walls["torch 1"].append(time.perf_counter() - t)
            walls["streamlm 20"].append(
                run(score_cmd(model, [short] * 20, ["--batch", "20"]), a.threads)[1])
            t = time.perf_counter()
            peer.logprob(sids, 20, 100)
            walls["torch 20"].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in walls.items()}
        s_trains, t_trains = [], []
        for _ in range(2):  # in turn, as the scoring runs
            s_trains.append(streamlm_train_rate(cell, a.hidden, a.layers, a.threads,
                                                a.train_seconds))
            t_trains.append(peer.train_rate(ids, 40))
        s_train, t_train = float(np.median(s_trains)), float(np.median(t_trains))
        row = {"cell": cell, "H": a.hidden, "layers": a.layers, "tokens": ntok,
               "logprob_streamlm": one["logprob"], "logprob_torch": t1,
               "one_stream": {"streamlm_tok_s": ntok / med["streamlm 1"],
                              "torch_tok_s": ntok / med["torch 1"],
                              "ratio": med["torch 1"] / med["streamlm 1"]},
               "twenty_streams": {"tokens": 20 * nshort,
                                  "streamlm_tok_s": 20 * nshort / med["streamlm 20"],
                                  "torch_tok_s": 20 * nshort / med["torch 20"],
                                  "ratio": med["torch 20"] / med["streamlm 20"]},
               "train": {"streamlm_tok_s": s_train, "torch_tok_s": t_train,
                         "ratio": s_train / t_train, "streamlm_runs": s_trains,
                         "torch_runs": t_trains}, "walls": walls}
        rows.append(row)
        print(f"{cell} {a.layers}x{a.hidden}: 1 stream {row['one_stream']['ratio']:.2f}x torch "
              f"({row['one_stream']['streamlm_tok_s']:,.0f} tok/s), 20 streams "
              f"{row['twenty_streams']['ratio']:.2f}x, train {row['train']['ratio']:.2f}x "
              f"({s_train:,.0f} against {t_train:,.0f} tok/s)", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**provenance(this_command("bench_gated"), threads=a.threads), "rows": rows,
            "targets": {"one_stream": 2.0, "twenty_streams": 1.2, "train": 1.2}}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
