"""How fast does SmolLM2-135M-Instruct (GGUF Q4_1) prefill and decode, against llama.cpp and transformers?

Every engine runs the same GGUF file on ``--threads`` threads, each in its own subprocess (so one
engine's threads, caches and memory never touch another's), and the engines alternate within
each of ``--rounds`` rounds: a noisy machine then shows up as spread, not as a bias against one
engine. Measured per engine and round:

- ``decode``: greedy decoding of ``--new-tokens`` tokens after a short chat prompt, tokens/s
  timed from the first new token to the last (prefill excluded);
- ``prefill``: ``--prefill`` tokens into an empty cache up to the first new token (``generate``
  with one new token: every engine computes the last position's logits only), tokens/s;
- ``long``: decode of ``--long-new`` tokens after a ``--long-prompt``-token prompt, timed from
  the first streamed token to the last;
- ``loaded``: ``decode`` again while another process keeps one core busy
  (``python -c "while True: pass"``), and for axon-llm ``--load-prefills`` prefills of 200 tokens
  under the same load (the worst against their median shows thread stalls).

The peers, as their users run them:
- llama.cpp through llama-cpp-python, which must be built from source with native CPU flags
  (``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python``); ``--llama-python`` names the
  interpreter of the environment holding that build (default: this one). The script prints the
  build's version and system info line.
- transformers (float32, the GGUF dequantised by ``from_pretrained(..., gguf_file=...)``) with its
  default attention (SDPA).

Prints each figure per round and, for every ratio axon/peer (>1 = axon faster), the min / median /
max over rounds.

    python benchmarks/bench_decode.py [--rounds 3] [--threads 2] [--llama-python /path/to/venv/bin/python]
    python benchmarks/bench_decode.py --smoke          # tiny sizes, one round (what the tests run)
    python benchmarks/bench_decode.py --profile        # where axon's time goes (cProfile), no peers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
ENGINES = ("axon-llm", "llama.cpp", "transformers")
#: also runnable with --engines: axon-llm decoding through its modules (generate(fast_decode=False)),
#: the reference of the fast decode step, to show what the DecodePlan buys in the same run; and
#: axon-llm with a float16 KV cache (``axon-f16kv``: llama.cpp's default cache type)
EXTRA_ENGINES = ("axon-modules", "axon-f16kv")


# ----------------------------------------------------------------------------------------------
# Workers: one engine, one subprocess. Each answers the same calls and prints one JSON line.
# ----------------------------------------------------------------------------------------------

class AxonEngine:
    """axon-llm: quantised weights kept quantised, fused Numba kernels."""

    fast_decode = True
    kv_dtype = None                                            # None: generate's own (float32) cache

    def __init__(self, gguf: str, threads: int):
        import numpy as np

        import axon
        import axon_llm

        from axon_kernels._jit import set_threads

        set_threads(threads)
        self.np, self.axon = np, axon
        self.model = axon_llm.from_pretrained(gguf)
        self.model.fast_decode = self.fast_decode
        cache = None if self.kv_dtype is None else self.model.new_cache(1, 8, dtype=self.kv_dtype)
        with axon.no_grad():                                   # warm-up: JIT compilation, caches
            self.model.generate(np.array([[1, 2, 3, 4]]), max_new_tokens=4, cache=cache)

    def prefill(self, ids: list[int]) -> float:
        """Seconds from the call to the first new token."""
        t0 = time.perf_counter()
        with self.axon.no_grad():
            self.model.generate(self.np.array([ids]), max_new_tokens=1, eos_token_id=None)
        return time.perf_counter() - t0

    def decode(self, ids: list[int], n: int) -> tuple[int, float]:
        """(tokens after the first, seconds from the first new token to the last)."""
        stamps = []
        cache = None if self.kv_dtype is None else self.model.new_cache(1, len(ids) + n, dtype=self.kv_dtype)
        with self.axon.no_grad():
            self.model.generate(self.np.array([ids]), max_new_tokens=n, eos_token_id=None, cache=cache,
                                streamer=lambda new: stamps.append(time.perf_counter()))
        return len(stamps) - 1, stamps[-1] - stamps[0]


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python: greedy, one token per ``eval``."""

    def __init__(self, gguf: str, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=gguf, n_ctx=2048 + 64, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, verbose=False)
        self.llm.eval([1, 2, 3, 4])
        self.llm.reset()

    def prefill(self, ids: list[int]) -> float:
        """Seconds to evaluate the prompt and pick the first new token."""
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        self.llm.sample(temp=0.0)
        return time.perf_counter() - t0

    def decode(self, ids: list[int], n: int) -> tuple[int, float]:
        """(tokens after the first, seconds from the first new token to the last)."""
        self.llm.reset()
        self.llm.eval(ids)
        tok = self.llm.sample(temp=0.0)
        t0 = time.perf_counter()                              # the first new token exists now
        for _ in range(n - 1):
            self.llm.eval([tok])
            tok = self.llm.sample(temp=0.0)
        return n - 1, time.perf_counter() - t0


class TransformersEngine:
    """transformers fp32 with its default attention (SDPA), torch on ``threads`` threads."""

    def __init__(self, gguf: str, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        path = Path(gguf)
        self.model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          torch_dtype=torch.float32).eval()
        with torch.no_grad():
            self.model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=4, do_sample=False)

    def prefill(self, ids: list[int]) -> float:
        """Seconds of ``generate`` with one new token."""
        t0 = time.perf_counter()
        with self.torch.no_grad():
            self.model.generate(self.torch.tensor([ids]), max_new_tokens=1, min_new_tokens=1, do_sample=False)
        return time.perf_counter() - t0

    def decode(self, ids: list[int], n: int) -> tuple[int, float]:
        """(tokens after the first, seconds from the first new token to the last)."""
        stamps = []

        class Stamp:                                          # transformers' streamer protocol
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        with self.torch.no_grad():
            self.model.generate(self.torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                streamer=Stamp())
        return len(stamps) - 2, stamps[-1] - stamps[1]        # the first put() is the prompt itself


class AxonModulesEngine(AxonEngine):
    """axon-llm decoding through its modules: the fast decode step's reference."""

    fast_decode = False


class AxonF16CacheEngine(AxonEngine):
    """axon-llm with a float16 KV cache for decode (llama.cpp's default cache type)."""

    kv_dtype = "float16"


WORKERS = {"axon-llm": AxonEngine, "axon-modules": AxonModulesEngine, "axon-f16kv": AxonF16CacheEngine, "llama.cpp": LlamaCppEngine, "transformers": TransformersEngine}


def build_info(engine: str) -> str:
    """Which build of the engine runs (version and, for llama.cpp, its CPU feature line)."""
    if engine == "llama.cpp":
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
        info = info.decode() if isinstance(info, bytes) else str(info)
        return f"llama-cpp-python {llama_cpp.__version__}; {info.strip()}"
    if engine == "transformers":
        import torch
        import transformers

        return f"transformers {transformers.__version__}, torch {torch.__version__}, attention sdpa (default)"
    import numba
    import numpy

    return f"numpy {numpy.__version__}, numba {numba.__version__}"


def run_worker(args) -> None:
    """Load one engine and run the measurements named in ``args.plan`` (JSON), printing JSON."""
    plan = json.loads(args.plan)
    engine = WORKERS[args.worker](plan["gguf"], args.threads)
    out = {"build": build_info(args.worker)}
    for key, (what, ids, n) in plan["calls"].items():
        if what == "prefill":
            out[key] = [len(ids) / engine.prefill(ids) for _ in range(n)]    # tokens/s of each run
        else:
            tokens, seconds = engine.decode(ids, n)
            out[key] = tokens / seconds
    if args.worker.startswith("axon"):
        out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (VmHWM from /proc/self/status)."""
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        return float("nan")


# ----------------------------------------------------------------------------------------------
# The orchestrator
# ----------------------------------------------------------------------------------------------

def worker_python(engine: str, args) -> str:
    """The interpreter that runs ``engine``: llama.cpp may live in its own (native-built) venv."""
    return args.llama_python if engine == "llama.cpp" and args.llama_python else sys.executable


def call_worker(engine: str, plan: dict, args) -> dict | None:
    """Run one engine's worker subprocess; None (with the reason on stderr) when it cannot run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "kernels"), env.get("PYTHONPATH", "")])
    cmd = [worker_python(engine, args), str(Path(__file__).resolve()), "--worker", engine,
           "--threads", str(args.threads), "--plan", json.dumps(plan)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(f"  {engine}: could not run ({tail})", file=sys.stderr)
    return None


class BusyCore:
    """Another program keeping one core busy while the block runs."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def spread(values: list[float]) -> str:
    """``min / median / max`` of a list of ratios."""
    if not values:
        return "n/a"
    return f"{min(values):.2f}x / {statistics.median(values):.2f}x / {max(values):.2f}x"


def make_ids(tok, n: int, seed: int) -> list[int]:
    """``n`` token ids of ordinary text: the lighthouse prompt's tokens repeated (no special tokens)."""
    import numpy as np

    base = tok.encode(PROMPT + " " + "The keeper climbed the stairs and watched the sea. " * 4)
    rng = np.random.default_rng(seed)
    ids = []
    while len(ids) < n:
        ids.extend(base[int(rng.integers(0, 5)):])
    return [int(i) for i in ids[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=500)
    ap.add_argument("--long-prompt", type=int, default=2000)
    ap.add_argument("--long-new", type=int, default=32)
    ap.add_argument("--load-prefills", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON"),
                    help="python of the venv with the native llama-cpp-python build (default: this one)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and one round (for the tests)")
    ap.add_argument("--profile", action="store_true", help="only profile axon's prefill and decode (cProfile)")
    ap.add_argument("--only", default="decode,prefill,long,loaded",
                    help="comma-separated subset of the measurements decode, prefill, long, loaded")
    ap.add_argument("--worker", choices=ENGINES + EXTRA_ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)
    if args.smoke:
        args.new_tokens, args.prefill, args.long_prompt, args.long_new = 6, 24, 48, 4
        args.load_prefills, args.rounds = 2, 1

    sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]
    from axon_llm.hub import resolve_model_path
    from axon_llm.tokenizer import HFTokenizer

    gguf = Path(resolve_model_path("smollm2-135m-instruct"))
    tok = HFTokenizer.from_pretrained(gguf)
    prompt = [int(i) for i in tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=True)]
    if args.profile:
        return profile_axon(gguf, prompt, make_ids(tok, args.prefill, 1), args.new_tokens)
    calls = {"decode": ("decode", prompt, args.new_tokens),
             "prefill": ("prefill", make_ids(tok, args.prefill, 1), 1),
             "long": ("decode", make_ids(tok, args.long_prompt, 2), args.long_new)}
    loaded = {"loaded": ("decode", prompt, args.new_tokens)}
    only = set(args.only.split(","))
    calls = {k: v for k, v in calls.items() if k in only}
    if "loaded" not in only:
        loaded = {}
    engines = [e for e in args.engines.split(",") if e]
    print(f"SmolLM2-135M-Instruct Q4_1 ({gguf.stat().st_size / 2**20:.0f} MB), {args.threads} threads, "
          f"{args.rounds} rounds, engines alternating; decode {args.new_tokens} tokens, prefill {args.prefill} "
          f"tokens, long: {args.long_new} tokens after {args.long_prompt}")
    results = {e: [] for e in engines}
    rss = []
    builds = {}
    for r in range(args.rounds):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for engine in order:
            res = call_worker(engine, {"gguf": str(gguf), "calls": calls}, args)
            if res is None:
                continue
            if "peak_rss_mb" in res:
                rss.append(res["peak_rss_mb"])
            if loaded:
                with BusyCore():
                    plan = dict(loaded)
                    if engine == "axon-llm":
                        plan["load_prefills"] = ("prefill", make_ids(tok, 200, 3), args.load_prefills)
                    under = call_worker(engine, {"gguf": str(gguf), "calls": plan}, args)
                res.update(under or {})
            builds[engine] = res.pop("build")
            res.pop("peak_rss_mb", None)
            if "prefill" in res:
                res["prefill"] = res["prefill"][0]
            results[engine].append(res)
            shown = ", ".join(f"{k} {v:.1f} tok/s" for k, v in res.items() if not isinstance(v, list))
            print(f"  round {r + 1} {engine:13s} {shown}", flush=True)
    for engine, info in builds.items():
        print(f"build {engine}: {info}")
    if args.llama_python:
        print(f"  llama.cpp ran from {args.llama_python}")
    ours = results.get("axon-llm", [])
    for peer in engines:
        if peer == "axon-llm" or not results[peer] or not ours:
            continue
        print(f"axon-llm / {peer} (min / median / max over rounds, >1 = axon faster):")
        for key in ("decode", "prefill", "long", "loaded"):
            ratios = [a[key] / p[key] for a, p in zip(ours, results[peer]) if key in a and key in p]
            print(f"  {key:8s} {spread(ratios)}")
    for i, res in enumerate(ours):
        if "load_prefills" in res:
            times = [200 / rate for rate in res["load_prefills"]]
            med = statistics.median(times)
            print(f"axon-llm 200-token prefills under load, round {i + 1}: median {med:.3f} s, worst {max(times):.3f} s "
                  f"({max(times) / med:.2f}x the median; goal <= 2x)")
    if rss:
        budget = gguf.stat().st_size / 2**20 * 1.5 + 200
        print(f"axon-llm peak RSS (its own process: load, warm-up, all runs above): max {max(rss):.1f} MiB; budget "
              f"GGUF x 1.5 + 200 = {budget:.1f} MiB (ratio {max(rss) / budget:.3f}, "
              f"{'within' if max(rss) <= budget else 'OVER'} budget)")
    if ours and "decode" in only and "long" in only:
        short = [r["decode"] for r in ours]
        long = [r["long"] for r in ours]
        print(f"axon-llm decode after {args.long_prompt} tokens / short-context decode: "
              f"{spread([b / a for a, b in zip(short, long)])}")


def profile_axon(gguf: Path, prompt_ids, prefill_ids, new_tokens, top: int = 14) -> None:
    """cProfile of one axon prefill and one greedy generation (after a warm-up), by own time."""
    import cProfile
    import pstats

    engine = AxonEngine(str(gguf), 2)
    for what, fn in ((f"prefill of {len(prefill_ids)} tokens", lambda: engine.prefill(prefill_ids)),
                     (f"greedy generation of {new_tokens} tokens", lambda: engine.decode(prompt_ids, new_tokens))):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        print(f"--- axon-llm {what}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
