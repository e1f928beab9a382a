"""Question: how much does axon's autograd cost next to the BLAS work, compared with PyTorch?

One training step (forward + backward + AdamW) of
  1. a 4-layer MLP (d=512, batch 2048, GELU, MSE loss), and
  2. a small pre-LN transformer block stack (causal attention, GELU MLP, LM cross-entropy),
timed in axon and — when torch is importable (dev-only) — in PyTorch CPU with the same shapes
in the same run. Prints median step times and the ratio axon / torch (goal: <= 1.25).

    python benchmarks/bench_autograd.py [--steps 10] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

try:
    import torch
except ImportError:  # torch is dev-only: the torch column is skipped
    torch = None


def median_step_time(step, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- MLP

def axon_mlp(d, depth, batch):
    axon.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(d, d), nn.GELU()]
    model = nn.Sequential(*layers[:-1])
    opt = axon.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = axon.tensor(rng.standard_normal((batch, d), dtype=np.float32))
    y = axon.tensor(rng.standard_normal((batch, d), dtype=np.float32))

    def step():
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def torch_mlp(d, depth, batch):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(d, d), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # default foreach implementation
    x = torch.randn(batch, d)
    y = torch.randn(batch, d)

    def step():
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


# ----------------------------------------------------------------------------- transformer

class AxonBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(self.ln1(x)).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # [3, B, H, T, Dh]
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)  # [B, H, T, Dh]
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TorchBlock(torch.nn.Module if torch else object):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc, self.out = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(self.ln1(x)).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(torch.nn.functional.gelu(self.fc(self.ln2(x))))


def axon_transformer(vocab, d, heads, layers, batch, seq):
    axon.manual_seed(0)
    emb = nn.Embedding(vocab, d)
    blocks = nn.ModuleList([AxonBlock(d, heads) for _ in range(layers)])
    ln_f, head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
    model = nn.ModuleList([emb, blocks, ln_f, head])
    opt = axon.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (batch, seq + 1))

    def step():
        h = emb(ids[:, :-1])
        for blk in blocks:
            h = blk(h)
        logits = head(ln_f(h))  # [B, T, V]
        loss = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def torch_transformer(vocab, d, heads, layers, batch, seq):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(vocab, d)
    blocks = torch.nn.ModuleList([TorchBlock(d, heads) for _ in range(layers)])
    ln_f, head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab, bias=False)
    model = torch.nn.ModuleList([emb, blocks, ln_f, head])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (batch, seq + 1)))

    def step():
        h = emb(ids[:, :-1])
        for blk in blocks:
            h = blk(h)
        logits = head(ln_f(h))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="smaller shapes (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        mlp = dict(d=128, depth=4, batch=256)
        tfm = dict(vocab=256, d=64, heads=4, layers=2, batch=2, seq=32)
    else:
        mlp = dict(d=512, depth=4, batch=2048)
        tfm = dict(vocab=2048, d=256, heads=4, layers=4, batch=8, seq=128)

    cases = [
        (f"MLP 4x{mlp['d']} batch {mlp['batch']}", axon_mlp, torch_mlp, mlp),
        (f"transformer {tfm['layers']}L d={tfm['d']} B={tfm['batch']} T={tfm['seq']} V={tfm['vocab']}",
         axon_transformer, torch_transformer, tfm),
    ]
    print(f"torch: {torch.__version__ + f' ({torch.get_num_threads()} threads)' if torch else 'not installed (column skipped)'}")
    print(f"{'case':<48} {'axon ms':>9} {'torch ms':>9} {'ratio':>7}")
    for name, make_axon, make_torch, cfg in cases:
        ours = median_step_time(make_axon(**cfg), args.steps)
        if torch is not None:
            theirs = median_step_time(make_torch(**cfg), args.steps)
            print(f"{name:<48} {ours * 1e3:9.1f} {theirs * 1e3:9.1f} {ours / theirs:7.2f}x")
        else:
            print(f"{name:<48} {ours * 1e3:9.1f} {'-':>9} {'-':>7}")


if __name__ == "__main__":
    main()
