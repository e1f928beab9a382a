"""The decode step's single-query attention over a long KV cache against its NumPy reference.

``axon_kernels.decode.rope_attend`` (RoPE, cache write and attention of one new token over
``--slots`` cached ones, Numba) against ``rope_attend_ref`` (the same with NumPy: BLAS matmuls
for the scores and the weighted sum), for a float32 and a float16 cache, with SmolLM2-135M's
shapes by default (9 query heads, 3 kv heads, head dim 64). Prints wall and CPU time per call
(CPU time: all threads of the process, so it stays meaningful on a loaded machine) and the
ratio reference / kernel of each, per round, alternating the two::

    python benchmarks/bench_attend.py --slots 2000 --rounds 3

``--rows N`` times instead the batched decode step's attention: one call of
``axon_kernels.batch_attend.batch_rope_attend`` for ``N`` rows (row ``r`` attending the last
``slots - 7 r`` slots, as a left-padded batch cache's rows do) against ``N`` calls of
``rope_attend``, one per row (what it replaced, the peer), ``--calls`` times each (the layers of
a step)::

    python benchmarks/bench_attend.py --rows 8 --slots 140 --calls 30 --rounds 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

import numpy as np  # noqa: E402

from axon_kernels._jit import set_threads  # noqa: E402
from axon_kernels.batch_attend import batch_rope_attend  # noqa: E402
from axon_kernels.decode import rope_attend, rope_attend_ref  # noqa: E402


def _time(fn, args, calls: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of ``fn(*args())`` (fresh copies of q/k/v each call)."""
    fn(*args())
    wall, cpu = 0.0, 0.0
    for _ in range(calls):
        a = args()
        t0, c0 = time.perf_counter(), time.process_time()
        fn(*a)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return wall / calls, cpu / calls


def main() -> None:
    """Parse the arguments, time kernel and reference for each cache type, print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=2000)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1, help="above 1: batch_rope_attend of this many rows vs a rope_attend per row")
    args = ap.parse_args()
    set_threads(args.threads)
    if args.rows > 1:
        return rows(args)
    rng = np.random.default_rng(0)
    h, hkv, d, n = args.heads, args.kv_heads, args.head_dim, args.slots
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((h, d), (hkv, d), (hkv, d)))
    cos, sin = np.ones(d, np.float32), np.zeros(d, np.float32)
    out = np.empty((h, d), np.float32)
    print(f"rope_attend vs rope_attend_ref: H={h} Hkv={hkv} D={d}, {n} slots, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    for dtype in (np.float32, np.float16):
        kc = rng.standard_normal((hkv, n + 1, d)).astype(dtype)
        vc = rng.standard_normal((hkv, n + 1, d)).astype(dtype)

        def fresh():
            return q.copy(), k.copy(), v.copy(), kc, vc, n, 0, cos, sin, d ** -0.5, out

        for r in range(args.rounds):
            kw, kcpu = _time(rope_attend, fresh, args.calls)
            rw, rcpu = _time(rope_attend_ref, fresh, args.calls)
            print(f"  {np.dtype(dtype).name:7s} round {r + 1}: kernel {kw * 1e6:7.0f} us wall {kcpu * 1e6:7.0f} us CPU | "
                  f"reference {rw * 1e6:7.0f} us wall {rcpu * 1e6:7.0f} us CPU | "
                  f"reference / kernel {rw / kw:5.2f}x wall {rcpu / kcpu:5.2f}x CPU")


def rows(args) -> None:
    """One `batch_rope_attend` of ``args.rows`` rows against a `rope_attend` per row, alternated:
    the best wall and CPU time of ``args.calls`` calls (a step's layers) per round."""
    rng = np.random.default_rng(0)
    n, h, hkv, d, slot = args.rows, args.heads, args.kv_heads, args.head_dim, args.slots
    kc = rng.standard_normal((n, hkv, slot + 1, d)).astype(np.float32)           # [n, Hkv, L, D]
    vc = rng.standard_normal((n, hkv, slot + 1, d)).astype(np.float32)
    lo = np.minimum(7 * np.arange(n), slot)                                      # [n] rows of different lengths
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((n, h, d), (n, hkv, d), (n, hkv, d)))
    cos, sin = np.ones((n, d), np.float32), np.zeros((n, d), np.float32)
    out = np.empty((n, h, d), np.float32)

    def per_row(q, k, v):
        for r in range(n):
            rope_attend(q[r], k[r], v[r], kc[r], vc[r], slot, int(lo[r]), cos[r], sin[r], d ** -0.5, out[r])

    def batched(q, k, v):
        batch_rope_attend(q, k, v, kc, vc, slot, lo, cos, sin, d ** -0.5, out)

    def step(fn):
        return lambda: [fn(q.copy(), k.copy(), v.copy()) for _ in range(args.calls)]

    print(f"batch_rope_attend ({n} rows, 1 call) vs rope_attend per row ({n} calls): H={h} Hkv={hkv} D={d}, "
          f"slots {slot} (rows {slot + 1 - lo.max()}..{slot + 1}), {args.calls} calls per step, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    best = {"batched": [np.inf, np.inf], "per row": [np.inf, np.inf]}
    for _ in range(args.rounds):
        for name, fn in (("per row", per_row), ("batched", batched)):
            wall, cpu = _time(lambda f: f(), lambda: (step(fn),), 1)
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
    (bw, bc), (pw, pc) = best["batched"], best["per row"]
    print(f"  per step, best of {args.rounds}: batched {bw * 1e3:.2f} ms wall {bc * 1e3:.2f} ms CPU | "
          f"per row {pw * 1e3:.2f} ms wall {pc * 1e3:.2f} ms CPU | per row / batched {pw / bw:.2f}x wall {pc / bc:.2f}x CPU")


if __name__ == "__main__":
    main()
