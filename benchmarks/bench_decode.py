"""How fast does SmolLM2-135M-Instruct (GGUF Q4_1) prefill and decode, against transformers and llama.cpp?

Greedy decoding of 128 new tokens after a short prompt, and a 500-token prefill, with
axon-llm (quantised weights kept quantised, fused Numba kernels), with transformers
(float32, the same GGUF dequantised by ``from_pretrained(..., gguf_file=...)``, torch on
``--threads`` threads) and with llama-cpp-python (the same GGUF, ``n_threads=--threads``)
when each is importable. Prints tokens/s and the ratios axon / peer (>1 = axon faster),
and axon's peak resident memory against the issue's budget (GGUF size x 1.5 + 200 MB).

"Prefill" is what generation's first step does in every engine: one forward over the prompt
into an empty KV cache that returns the next-token logits only (transformers' generate passes
``logits_to_keep=1``, llama.cpp computes the last logits only, axon's generate passes
``logits_to_keep=1``). ``--all-logits`` instead makes every engine compute the logits of all
prompt positions (a scoring forward, and what this script measured before). Best of
``--repeat`` runs per engine (the machine is shared).

    python benchmarks/bench_decode.py [--new-tokens 128] [--prefill 500] [--threads 2] [--all-logits]
    python benchmarks/bench_decode.py --profile      # where axon's time goes (cProfile), no peers
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def rss_stage(stages: list, name: str) -> None:
    """Record current and peak RSS (MiB, from /proc/self/status) after a stage of axon's run."""
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    except OSError:
        return
    stages.append((name, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (2^20 bytes; ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_rate(n: int, fn, repeat: int) -> float:
    """n / the fastest of ``repeat`` timed calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / min(times)


def bench_axon(gguf: Path, prompt_ids, prefill_ids, new_tokens, repeat, keep, stages):
    import axon
    import axon_llm

    model = axon_llm.from_pretrained(gguf)
    rss_stage(stages, "model loaded")
    with axon.no_grad():                                   # warm-up: JIT compilation, caches
        model.generate(np.array([prompt_ids]), max_new_tokens=4)
        rss_stage(stages, "warm-up generate")
        prefill = best_rate(len(prefill_ids), lambda: model(np.array([prefill_ids]), logits_to_keep=keep,
                                                            cache=model.new_cache(1, len(prefill_ids) + 1)), repeat)
        rss_stage(stages, f"{len(prefill_ids)}-token prefills")
    steps = []
    t0 = time.perf_counter()
    out = model.generate(np.array([prompt_ids]), max_new_tokens=new_tokens,
                         streamer=lambda ids: steps.append(time.perf_counter()))
    n = out.shape[1] - len(prompt_ids)
    decode = (n - 1) / (steps[-1] - steps[0]) if n > 1 else float("nan")
    rss_stage(stages, "greedy generation")
    return prefill, decode, n


def profile_axon(gguf: Path, prompt_ids, prefill_ids, new_tokens, keep, top: int = 14) -> None:
    """cProfile of one axon prefill and one greedy generation (after a warm-up), by own time."""
    import cProfile
    import pstats

    import axon
    import axon_llm

    model = axon_llm.from_pretrained(gguf)
    with axon.no_grad():
        model.generate(np.array([prompt_ids]), max_new_tokens=4)
        for what, fn in (
                (f"prefill of {len(prefill_ids)} tokens",
                 lambda: model(np.array([prefill_ids]), logits_to_keep=keep, cache=model.new_cache(1, len(prefill_ids) + 1))),
                (f"greedy generation of {new_tokens} tokens",
                 lambda: model.generate(np.array([prompt_ids]), max_new_tokens=new_tokens, eos_token_id=None))):
            prof = cProfile.Profile()
            prof.enable()
            fn()
            prof.disable()
            print(f"--- axon-llm {what}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def bench_transformers(gguf: Path, prompt_ids, prefill_ids, new_tokens, threads, repeat, keep):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        model.generate(torch.tensor([prompt_ids]), max_new_tokens=4, do_sample=False)
        prefill = best_rate(len(prefill_ids), lambda: model(torch.tensor([prefill_ids]), logits_to_keep=keep,
                                                            use_cache=True), repeat)
        t0 = time.perf_counter()
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
        dt = time.perf_counter() - t0
    n = out.shape[1] - len(prompt_ids)
    return prefill, n / dt, n


def bench_llama_cpp(gguf: Path, prompt_ids, prefill_ids, new_tokens, threads, repeat, keep):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, verbose=False, logits_all=keep == 0)
    llm.eval(prefill_ids[:8])
    llm.reset()

    def prefill_once():
        llm.reset()
        llm.eval(prefill_ids)

    prefill = best_rate(len(prefill_ids), prefill_once, repeat)
    llm.reset()
    llm.eval(prompt_ids)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    return prefill, new_tokens / (time.perf_counter() - t0), new_tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="prefill runs per engine (the best is reported)")
    ap.add_argument("--all-logits", action="store_true", help="prefill computes the logits of every position")
    ap.add_argument("--profile", action="store_true", help="only profile axon's prefill and decode (cProfile)")
    args = ap.parse_args()

    from axon_llm.hub import resolve_model_path
    from axon_llm.tokenizer import HFTokenizer

    stages = []
    rss_stage(stages, "imports")
    gguf = Path(resolve_model_path("smollm2-135m-instruct"))
    tok = HFTokenizer.from_pretrained(gguf)
    rss_stage(stages, "tokenizer")
    prompt_ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=True)
    rng = np.random.default_rng(0)
    prefill_ids = [int(x) for x in rng.integers(100, tok.vocab_size, size=args.prefill)]

    rows = {}
    keep = 0 if args.all_logits else 1                     # logits_to_keep: 0 = all positions
    if args.profile:
        return profile_axon(gguf, prompt_ids, prefill_ids, args.new_tokens, keep)
    a_pre, a_dec, n = bench_axon(gguf, prompt_ids, prefill_ids, args.new_tokens, args.repeat, keep, stages)
    rss = peak_rss_mb()
    rows["axon-llm"] = (a_pre, a_dec, n)
    for name, fn in (("transformers fp32", bench_transformers), ("llama.cpp", bench_llama_cpp)):
        try:
            rows[name] = fn(gguf, prompt_ids, prefill_ids, args.new_tokens, args.threads, args.repeat, keep)
        except ImportError as e:
            print(f"{name}: not installed ({e.name}); skipped")
    print(f"SmolLM2-135M-Instruct Q4_1 ({gguf.stat().st_size / 2**20:.0f} MB), {args.threads} threads, "
          f"prefill {args.prefill} tokens ({'logits of every position' if keep == 0 else 'next-token logits'}), "
          f"greedy decode {args.new_tokens} tokens")
    print(f"{'engine':20s} {'prefill tok/s':>14s} {'decode tok/s':>13s}   axon/peer (prefill, decode)")
    for name, (pre, dec, n) in rows.items():
        ratio = "" if name == "axon-llm" else f"   {a_pre / pre:.2f}x, {a_dec / dec:.2f}x"
        print(f"{name:20s} {pre:14.1f} {dec:13.1f}{ratio}")
    budget = gguf.stat().st_size / 2**20 * 1.5 + 200
    print(f"axon-llm peak RSS (before loading any peer): {rss:.1f} MB; budget GGUF x 1.5 + 200 MB = {budget:.1f} MB "
          f"(ratio {rss / budget:.3f}, {'within' if rss <= budget else 'OVER'} budget)")
    print("  axon-llm RSS by stage (MiB, current / peak so far): "
          + "; ".join(f"{name} {cur:.0f} / {peak:.0f}" for name, cur, peak in stages))
    rss_b, budget_b = rss * 2**20 / 1e6, gguf.stat().st_size / 1e6 * 1.5 + 200   # MB = 10^6 bytes (stricter)
    print(f"  in decimal MB: peak {rss_b:.1f} MB; budget {budget_b:.1f} MB (ratio {rss_b / budget_b:.3f}, "
          f"{'within' if rss_b <= budget_b else 'OVER'} budget)")


if __name__ == "__main__":
    main()
