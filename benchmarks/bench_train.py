"""How fast is one training step (forward, backward, AdamW) compared with PyTorch?

A LLaMA with hidden 256, 4 layers, 4 heads (2 KV heads), FFN 688, vocabulary 1000, batch
8 x 128 tokens — axon (NumPy + Numba) against transformers' LlamaForCausalLM with its DEFAULT
attention implementation (SDPA, ``torch.nn.functional.scaled_dot_product_attention``; not
eager) on the CPU, same weights, same batch, same AdamW settings, torch on ``--threads``
threads and axon on as many (``axon_kernels._jit.set_threads``). torch runs in its own
process, started with the environment this script was started with: importing axon sets a
thread policy (OpenMP wait policy, OpenBLAS on one thread) that, in one process, made torch's
step ~3x slower than torch alone (155-175 vs 470-480 ms at load 0.5), which is not the peer its
users run. The two engines alternate step by step: a round runs ``--steps`` pairs of steps, one
of each engine (which goes first swaps every round), and compares the two medians, so a burst of
load from elsewhere on the machine (this host's other tenants) lands on both engines' samples
rather than on one engine's whole round; every round prints its ratio, and the summary gives the
min / median / max ratio over the rounds (>1 means axon is faster). torch/transformers are dev-only: without them only axon's time
is printed.

    python benchmarks/bench_train.py [--rounds 5] [--steps 5] [--threads 2] [--profile] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_ENV = dict(os.environ)          # before anything imports axon (whose import sets thread variables)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

CONFIG = dict(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
              tie_word_embeddings=False)
SMOKE_CONFIG = dict(CONFIG, vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1)
LR, WD = 1e-3, 0.01


class AxonTrainer:
    """axon's LLaMA and AdamW; ``step()`` runs one timed training step and returns (seconds, loss)."""

    def __init__(self, config, ids, labels):
        import axon
        import axon.nn.functional as F
        from axon_llm.models import LLaMAConfig
        from axon_llm.models.llama import LLaMAForCausalLM

        axon.manual_seed(0)
        self.F, self.vocab = F, config["vocab_size"]
        self.model = LLaMAForCausalLM(LLaMAConfig(**config)).materialize()
        self.initial = {k: np.asarray(v).copy() for k, v in self.model.state_dict().items()}
        self.model.train()
        self.opt = axon.optim.AdamW(list(self.model.parameters()), lr=LR, weight_decay=WD)
        self.ids, self.labels = ids, labels

    def step(self):
        """One forward + backward + AdamW step: (seconds, loss)."""
        t0 = time.perf_counter()
        self.opt.zero_grad()
        logits = self.model(self.ids)                                     # [B, T, V]
        loss = self.F.cross_entropy(logits.reshape(-1, self.vocab), self.labels.reshape(-1))
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0, float(loss.item())


class TorchTrainer:
    """transformers' LlamaForCausalLM with its default (SDPA) attention and torch's AdamW."""

    def __init__(self, config, ids, labels, state):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        self.torch, self.vocab = torch, config["vocab_size"]
        cfg = LlamaConfig(**config, attention_dropout=0.0)                # attn_implementation left at its default
        self.model = LlamaForCausalLM(cfg)
        self.attention = self.model.config._attn_implementation
        with torch.no_grad():                                             # the same initial weights as axon
            sd = self.model.state_dict()
            for k, v in state.items():
                if k in sd:
                    sd[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WD)
        self.ids, self.labels = torch.from_numpy(ids), torch.from_numpy(labels)

    def step(self):
        """One forward + backward + AdamW step: (seconds, loss)."""
        t0 = time.perf_counter()
        self.opt.zero_grad()
        logits = self.model(self.ids).logits
        loss = self.torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab), self.labels.reshape(-1))
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0, float(loss.item())


def profile_axon(trainer, steps: int) -> list[tuple[str, float, int]]:
    """(name, ms per step, calls per step) of every autograd Function's forward and backward, the
    optimizer and the rest, over ``steps`` steps: each Function's static methods wrapped in a
    timer for the duration (a few microseconds per call of overhead)."""
    import axon.autograd as ag

    totals: dict[str, list] = {}

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    saved = []
    for cls in set(subclasses(ag.Function)):
        for name in ("forward", "backward"):
            if name not in cls.__dict__:
                continue
            fn = cls.__dict__[name].__func__ if isinstance(cls.__dict__[name], staticmethod) else cls.__dict__[name]
            key = f"{cls.__name__}.{name}"

            def timed(*args, _fn=fn, _key=key, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    entry = totals.setdefault(_key, [0.0, 0])
                    entry[0] += time.perf_counter() - t0
                    entry[1] += 1

            saved.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, staticmethod(timed))
    opt_step = trainer.opt.step

    def timed_opt():
        t0 = time.perf_counter()
        opt_step()
        entry = totals.setdefault("optimizer step", [0.0, 0])
        entry[0] += time.perf_counter() - t0
        entry[1] += 1

    trainer.opt.step = timed_opt
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        wall = time.perf_counter() - t0
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)
        del trainer.opt.step
    rows = sorted(((k, v[0] / steps * 1e3, v[1] // steps) for k, v in totals.items()), key=lambda r: -r[1])
    rows.append(("rest (autograd engine, modules, Python)", wall / steps * 1e3 - sum(r[1] for r in rows), 0))
    rows.append(("whole step", wall / steps * 1e3, 1))
    return rows


class TorchProcess:
    """`TorchTrainer` in a child process (this script with ``--worker``), started with
    START_ENV; ``steps(n)`` asks it for ``n`` timed steps and returns their seconds."""

    def __init__(self, config_name: str, state_file: str, threads: int):
        cmd = [sys.executable, __file__, "--worker", config_name, "--state", state_file, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=START_ENV)
        hello = self._read()
        self.first_loss, self.attention, self.version = hello["loss"], hello["attention"], hello["torch"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the torch worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def steps(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def profile(self, n: int) -> list:
        """torch.profiler's operators over ``n`` steps: [name, ms per step, calls per step] by self CPU time."""
        self.proc.stdin.write(f"profile {n}\n")
        self.proc.stdin.flush()
        return self._read()["profile"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def worker(config_name: str, state_file: str, threads: int) -> int:
    """The child: build the torch trainer from the saved weights and batch, then time steps on request."""
    import torch

    torch.set_num_threads(threads)
    data = np.load(state_file)
    state = {k[len("w:"):]: data[k] for k in data.files if k.startswith("w:")}
    trainer = TorchTrainer(SMOKE_CONFIG if config_name == "smoke" else CONFIG, data["ids"], data["labels"], state)
    loss = trainer.step()[1]                                              # warm-up
    print(json.dumps({"loss": loss, "attention": trainer.attention, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        if line.startswith("profile"):
            n = int(line.split()[1])
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(n):
                    trainer.step()
            rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
            print(json.dumps({"profile": [[e.key, e.self_cpu_time_total / 1e3 / n, e.count // n] for e in rows]}), flush=True)
            continue
        print(json.dumps({"seconds": [trainer.step()[0] for _ in range(int(line))]}), flush=True)
    return 0


def main(argv=None):
    if argv is None and "--worker" in sys.argv:
        wa = argparse.ArgumentParser()
        wa.add_argument("--worker")
        wa.add_argument("--state")
        wa.add_argument("--threads", type=int)
        w = wa.parse_args()
        return worker(w.worker, w.state, w.threads)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (one ratio each)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per engine per round, alternating (their median counts)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both engines (torch intra-op; axon's set_threads)")
    ap.add_argument("--profile", action="store_true",
                    help="also print where a step's time goes: axon per autograd Function, torch per operator (its profiler)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model and batch: checks the script runs, numbers mean nothing")
    args = ap.parse_args(argv)
    config = SMOKE_CONFIG if args.smoke else CONFIG
    batch, length = (2, 16) if args.smoke else (8, 128)
    rounds, steps = (1, 1) if args.smoke else (args.rounds, args.steps)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config["vocab_size"], size=(batch, length + 1))
    inputs, labels = ids[:, :-1].copy(), ids[:, 1:].copy()

    print(f"config: LLaMA hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, 4 heads / 2 kv, "
          f"ffn {config['intermediate_size']}, vocab {config['vocab_size']}, batch {batch} x {length}, "
          f"forward + backward + AdamW; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"axon on {args.threads} threads (axon_kernels._jit.set_threads)")
    from axon_kernels._jit import set_threads

    set_threads(args.threads)                                             # Numba threads, gemm's split, OpenBLAS on 1
    ax = AxonTrainer(config, inputs, labels)
    t_first, a_loss0 = ax.step()                                          # warm-up (includes JIT compilation)
    print(f"axon first step {t_first:.2f}s (incl. JIT), loss {a_loss0:.6f}")
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        times = [ax.step()[0] for _ in range(steps * rounds)]
        print(f"axon: {statistics.median(times) * 1e3:.1f} ms/step; torch/transformers not installed: no comparison")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        state_file = os.path.join(tmp, "state.npz")
        np.savez(state_file, ids=inputs, labels=labels, **{f"w:{k}": v for k, v in ax.initial.items()})
        tt = TorchProcess("smoke" if args.smoke else "full", state_file, args.threads)
    print(f"peer: transformers LlamaForCausalLM, attn_implementation={tt.attention!r} (default, not eager), "
          f"torch {tt.version}, {args.threads} threads, in its own process; first-step loss torch "
          f"{tt.first_loss:.6f} (same weights)")
    timers = {"axon": lambda: ax.step()[0], "torch": lambda: tt.steps(1)[0]}
    ratios = []
    for r in range(rounds):
        order = ("axon", "torch") if r % 2 == 0 else ("torch", "axon")
        times = {"axon": [], "torch": []}
        for _ in range(steps):                                        # step by step, alternating
            for name in order:
                times[name].append(timers[name]())
        med = {name: statistics.median(t) for name, t in times.items()}
        ratios.append(med["torch"] / med["axon"])
        print(f"round {r + 1}: axon {med['axon'] * 1e3:7.1f} ms/step  torch(sdpa) {med['torch'] * 1e3:7.1f} ms/step  "
              f"ratio {ratios[-1]:.2f}x  (load {os.getloadavg()[0]:.1f})")
    print(f"ratio (torch time / axon time, >1 = axon faster) over {rounds} rounds: min {min(ratios):.2f}x  "
          f"median {statistics.median(ratios):.2f}x  max {max(ratios):.2f}x")
    if args.profile:
        n = 1 if args.smoke else 5
        print(f"where the time goes, {n} steps each (timers add a little; the engines ran one after the other):")
        print("  axon, per autograd Function (ms per step, calls per step):")
        for name, ms, calls in profile_axon(ax, n):
            print(f"    {name:44s} {ms:8.2f} ms  {calls:4d}")
        print("  torch, per operator by its profiler's self time (ms per step on the calling thread, its OpenMP threads working inside; calls per step):")
        for name, ms, calls in tt.profile(n):
            print(f"    {name:44s} {ms:8.2f} ms  {calls:4d}")
    tt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
