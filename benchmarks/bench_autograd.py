"""Question: how much does axon's autograd cost next to the BLAS work, compared with PyTorch?

One training step (forward + backward + AdamW) of
  1. a 4-layer MLP (d=512, batch 2048, GELU, MSE loss), and
  2. a small pre-LN transformer block stack (causal attention, GELU MLP, LM cross-entropy),
timed in axon and — when torch is importable (dev-only) — in PyTorch CPU with the same shapes
in the same run. Prints median and best step times and the ratios axon / torch (goal: <= 1.25). For the
MLP it also times the same step written by hand in NumPy (no graph at all), which shows what
the engine itself costs.

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


def step_times(step_fns, steps: int, warmup: int = 2) -> list:
    """(median, best) wall time of each step function, run interleaved (A, B, A, B, ...) so that
    load from other processes on a shared machine hits every contender alike; the best time is
    the least disturbed by that load."""
    for fn in step_fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in step_fns]
    for _ in range(steps):
        for fn, ts in zip(step_fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [(statistics.median(ts), min(ts)) for ts in times]


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


def numpy_mlp(d, depth, batch):
    """The same MLP step written by hand in NumPy (no graph, no engine): the BLAS floor."""
    from axon._erf import erf

    rng = np.random.default_rng(0)
    bound = 1 / np.sqrt(d)
    params = []
    for _ in range(depth):
        params += [rng.uniform(-bound, bound, (d, d)).astype(np.float32), rng.uniform(-bound, bound, d).astype(np.float32)]
    state = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    x = rng.standard_normal((batch, d), dtype=np.float32)
    y = rng.standard_normal((batch, d), dtype=np.float32)
    t = [0]

    def step():
        hs, zs = [x], []
        for i in range(depth):
            z = hs[-1] @ params[2 * i].T + params[2 * i + 1]
            zs.append(z)
            hs.append(z * (0.5 * (1 + erf(z * np.float32(0.7071067811865476)))) if i < depth - 1 else z)
        g = (hs[-1] - y) * np.float32(2.0 / hs[-1].size)
        grads = [None] * len(params)
        for i in reversed(range(depth)):
            grads[2 * i], grads[2 * i + 1] = g.T @ hs[i], g.sum(0)
            if i:
                g = g @ params[2 * i]
                z = zs[i - 1]
                cdf = 0.5 * (1 + erf(z * np.float32(0.7071067811865476)))
                g *= cdf + z * np.exp(-0.5 * z * z) * np.float32(0.3989422804014327)
        t[0] += 1
        bc1, bc2 = 1 - 0.9 ** t[0], 1 - 0.999 ** t[0]
        for p, gr, (m, v) in zip(params, grads, state):
            p *= 1 - 1e-3 * 1e-2
            m *= 0.9
            m += 0.1 * gr
            v *= 0.999
            v += 0.001 * gr * gr
            p -= 1e-3 / bc1 * m / (np.sqrt(v / bc2) + 1e-8)

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
    print(f"{'case':<46} {'axon ms':>9} {'torch ms':>9} {'ratio':>6}   {'best: axon':>10} {'torch':>7} {'ratio':>6}")
    for name, make_axon, make_torch, cfg in cases:
        contenders = [make_axon(**cfg)]
        if torch is not None:
            contenders.append(make_torch(**cfg))
        if make_axon is axon_mlp:
            contenders.append(numpy_mlp(**cfg))
        times = step_times(contenders, args.steps)
        (ours, ours_best) = times[0]
        if torch is not None:
            theirs, theirs_best = times[1]
            print(f"{name:<46} {ours * 1e3:9.1f} {theirs * 1e3:9.1f} {ours / theirs:5.2f}x   "
                  f"{ours_best * 1e3:10.1f} {theirs_best * 1e3:7.1f} {ours_best / theirs_best:5.2f}x")
        else:
            print(f"{name:<46} {ours * 1e3:9.1f} {'-':>9} {'-':>6}   {ours_best * 1e3:10.1f}")
        if make_axon is axon_mlp:
            floor, floor_best = times[-1]
            print(f"{'  same step, hand-written NumPy (no engine)':<46} {floor * 1e3:9.1f} {'':>9} {ours / floor:5.2f}x   "
                  f"{floor_best * 1e3:10.1f} {'':>7} {ours_best / floor_best:5.2f}x")
    print("ratio = axon / peer (median over the steps, and best step); < 1 means axon is faster")

if __name__ == "__main__":
    main()
