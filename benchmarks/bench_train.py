"""How fast is one training step (forward, backward, AdamW) compared with PyTorch?

The question of issue 8: a LLaMA with hidden 256, 4 layers, 4 heads (2 KV heads), FFN 688,
vocabulary 1000, batch 8 x 128 tokens — axon (NumPy + Numba) against transformers'
LlamaForCausalLM with PyTorch eager attention on the CPU, same weights, same batch, same
AdamW settings, both on the same number of threads. Prints the median step time of each
and the ratio (>1 means axon is faster). torch/transformers are dev-only: without them
only axon's time is printed.

    python benchmarks/bench_train.py [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

CONFIG = dict(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
              tie_word_embeddings=False)
BATCH, LENGTH, LR, WD = 8, 128, 1e-3, 0.01


def axon_steps(ids, labels, steps):
    import axon
    import axon.nn.functional as F
    from axon_llm.models import LLaMAConfig
    from axon_llm.models.llama import LLaMAForCausalLM

    axon.manual_seed(0)
    model = LLaMAForCausalLM(LLaMAConfig(**CONFIG))
    model.materialize()
    model.train()
    params = list(model.parameters())
    opt = axon.optim.AdamW(params, lr=LR, weight_decay=WD)
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = model(ids)                                              # [B, T, V]
        loss = F.cross_entropy(logits.reshape(-1, CONFIG["vocab_size"]), labels.reshape(-1))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.item()))
    return times, losses, {k: np.asarray(v) for k, v in model.state_dict().items()}


def torch_steps(ids, labels, steps, state):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**CONFIG, attention_dropout=0.0)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():                                                 # the same initial weights as axon
        sd = model.state_dict()
        for k, v in state.items():
            if k in sd:
                sd[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    tid, tlab = torch.from_numpy(ids), torch.from_numpy(labels)
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = model(tid).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG["vocab_size"]), tlab.reshape(-1))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.item()))
    return times, losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps (the first of each is warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (NumPy/Numba use the machine's)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CONFIG["vocab_size"], size=(BATCH, LENGTH + 1))
    inputs, labels = ids[:, :-1].copy(), ids[:, 1:].copy()

    # the initial weights both runs start from
    import axon
    from axon_llm.models import LLaMAConfig
    from axon_llm.models.llama import LLaMAForCausalLM

    axon.manual_seed(0)
    init = LLaMAForCausalLM(LLaMAConfig(**CONFIG)).materialize()
    state0 = {k: np.asarray(v).copy() for k, v in init.state_dict().items()}

    a_times, a_losses, _ = axon_steps(inputs, labels, args.steps + 1)
    a_med = statistics.median(a_times[1:])
    print(f"config: LLaMA hidden 256, 4 layers, 4 heads / 2 kv, ffn 688, vocab 1000, batch {BATCH} x {LENGTH}")
    print(f"axon          : {a_med * 1e3:8.1f} ms/step (median of {args.steps}, first step {a_times[0]:.2f}s "
          f"incl. JIT), {BATCH * LENGTH / a_med:,.0f} tokens/s")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("torch/transformers not installed: no PyTorch comparison")
        return
    import torch

    torch.set_num_threads(args.threads)
    t_times, t_losses = torch_steps(inputs, labels, args.steps + 1, state0)
    t_med = statistics.median(t_times[1:])
    print(f"torch eager   : {t_med * 1e3:8.1f} ms/step ({args.threads} threads), {BATCH * LENGTH / t_med:,.0f} tokens/s")
    print(f"ratio (torch time / axon time, >1 = axon faster): {t_med / a_med:.2f}x")
    print(f"first-step loss: axon {a_losses[0]:.6f}, torch {t_losses[0]:.6f} (same initial weights)")


if __name__ == "__main__":
    main()
