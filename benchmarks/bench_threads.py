"""Which thread setup behaves on a shared machine? The choices of axon_kernels/_jit.py, measured.

Two measurements, each idle and with another process keeping one core busy
(``python -c "while True: pass"``), the setups alternating within each of ``--rounds`` rounds:

- ``--part gemm``: the three products of one training Linear (forward, input gradient, weight
  gradient; [1024, 256] x [256, 688]) with OpenBLAS on 2 threads (NumPy's default, the peer),
  OpenBLAS on 1 thread, and OpenBLAS on 1 thread with `axon_kernels.blas.gemm` splitting rows
  over 2 Python threads (axon's choice). Prints wall and CPU ms (median of 20) and the ratio
  against OpenBLAS on 2 threads (>1 = faster).
- ``--part prefill``: 200-token prefills of SmolLM2-135M Q4_1 (median of 3) in this process with
  the same three BLAS setups (the quantised prefill's products go through `gemm`).
- ``--part decode``: SmolLM2-135M Q4_1 through axon-llm in a subprocess per setup (OpenMP
  ``OMP_WAIT_POLICY=PASSIVE``, axon's default; ``GOMP_SPINCOUNT`` 10k / 100k; ``ACTIVE``;
  Numba's ``workqueue`` layer; Numba on 1 thread): decode tok/s of ``--new-tokens`` greedy
  tokens and ``--prefills`` 200-token prefills (median, worst / median).

    python benchmarks/bench_threads.py [--part gemm,prefill,decode] [--rounds 3] [--busy both|yes|no]
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "kernels"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_decode import BusyCore  # noqa: E402  (another program keeping one core busy)

DECODE_SETUPS = {
    "passive (default)": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
    "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "workqueue layer": {"NUMBA_THREADING_LAYER": "workqueue"},
    "numba 1 thread": {"AXON_BENCH_NUMBA_THREADS": "1"},
}


BLAS_SETUPS = (("OpenBLAS 2 threads", 2, 1), ("OpenBLAS 1 thread", 1, 1), ("gemm split 2 (axon)", 1, 2))


def prefill_round(model) -> dict:
    """{setup: median seconds of three 200-token prefills}, each BLAS setup in turn."""
    import numpy as np

    import axon
    import axon_kernels._jit as jit
    from axon_kernels import blas

    ids = np.random.default_rng(0).integers(100, 40000, (1, 200))
    out = {}
    for name, blas_threads, split in BLAS_SETUPS:
        jit._blas_set_threads(blas_threads)
        blas.set_gemm_threads(split)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            with axon.no_grad():
                model.generate(ids, max_new_tokens=1, eos_token_id=None)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    jit.default_threads()
    return out


def gemm_round() -> dict:
    """{setup: (wall ms, cpu ms)} for the three products of one Linear, each setup in turn."""
    import numpy as np

    import axon_kernels._jit as jit
    from axon_kernels import blas

    rng = np.random.default_rng(0)
    x = rng.random((1024, 256), dtype=np.float32)                       # [N, in]
    w = rng.random((688, 256), dtype=np.float32)                        # [out, in]
    g = rng.random((1024, 688), dtype=np.float32)                       # [N, out]

    def linear_products():
        blas.gemm(x, w.T)                                               # forward [N, out]
        blas.gemm(g, w)                                                 # input gradient [N, in]
        blas.gemm(g.T, x)                                               # weight gradient [out, in]

    out = {}
    for name, blas_threads, split in BLAS_SETUPS:
        jit._blas_set_threads(blas_threads)
        blas.set_gemm_threads(split)
        linear_products()
        wall, cpu = [], []
        for _ in range(20):
            c0, t0 = time.process_time(), time.perf_counter()
            linear_products()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = (statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3)
    jit.default_threads()
    return out


def decode_worker(new_tokens: int, prefills: int) -> None:
    """In a subprocess: load SmolLM2 like bench_decode's axon worker, print one JSON line."""
    import numba

    from axon_llm.hub import resolve_model_path
    from bench_decode import AxonEngine

    engine = AxonEngine(str(resolve_model_path("smollm2-135m-instruct")), 2)
    if os.environ.get("AXON_BENCH_NUMBA_THREADS"):
        numba.set_num_threads(int(os.environ["AXON_BENCH_NUMBA_THREADS"]))
    import numpy as np

    ids = [int(i) for i in np.random.default_rng(3).integers(100, 40000, 200)]
    engine.prefill(ids)
    n, seconds = engine.decode(ids[:20], new_tokens)
    times = [engine.prefill(ids) for _ in range(prefills)]
    print(json.dumps({"decode": n / seconds, "prefills": times, "layer": numba.threading_layer()}))


def decode_round(args, busy: bool) -> dict:
    """{setup: result} running every decode setup once, each in its own subprocess."""
    out = {}
    wanted = [w for w in args.setups.split(",") if w]
    for name, env in DECODE_SETUPS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        cmd = [sys.executable, __file__, "--worker", "--new-tokens", str(args.new_tokens), "--prefills", str(args.prefills)]
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels")]), **env)
        if busy:
            with BusyCore():
                proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=900)
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=900)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(f"  {name}: failed ({proc.stderr.strip().splitlines()[-1:] or proc.returncode})", file=sys.stderr)
            continue
        out[name] = json.loads(lines[-1])
        res = out[name]
        med = statistics.median(res["prefills"])
        print(f"    {name:24s} decode {res['decode']:6.1f} tok/s   200-token prefills median {med:.3f} s, "
              f"worst {max(res['prefills']) / med:.2f}x the median  (layer {res['layer']}, load {os.getloadavg()[0]:.1f})",
              flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="gemm,decode", help="comma-separated: gemm, decode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", choices=("both", "yes", "no"), default="both", help="with a busy core, without, or both")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prefills", type=int, default=3)
    ap.add_argument("--setups", default="", help="decode: only the setups whose name contains one of these (comma-separated)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        decode_worker(args.new_tokens, args.prefills)
        return 0
    parts = set(args.part.split(","))
    conditions = {"both": (False, True), "yes": (True,), "no": (False,)}[args.busy]
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; setups alternate within each round")
    for busy in conditions:
        label = "with one core busy" if busy else "no extra load"
        if "gemm" in parts:
            print(f"gemm ({label}): the three products of one Linear, [1024, 256] x [256, 688]; wall / CPU ms, "
                  "ratio = OpenBLAS-2-threads wall / this wall")
            for r in range(args.rounds):
                if busy:
                    with BusyCore():
                        res = gemm_round()
                else:
                    res = gemm_round()
                peer = res["OpenBLAS 2 threads"][0]
                shown = "   ".join(f"{k} {w:.1f} / {c:.1f} ({peer / w:.2f}x)" for k, (w, c) in res.items())
                print(f"  round {r + 1}: {shown}  (load {os.getloadavg()[0]:.1f})", flush=True)
        if "prefill" in parts:
            import numpy as np

            import axon
            import axon_llm
            from axon_llm.hub import resolve_model_path

            model = axon_llm.from_pretrained(str(resolve_model_path("smollm2-135m-instruct")))
            with axon.no_grad():                                        # warm-up: JIT, caches
                model.generate(np.array([[1, 2, 3, 4] * 50]), max_new_tokens=1, eos_token_id=None)
            print(f"prefill ({label}): 200-token prefill of SmolLM2-135M Q4_1, median of 3, seconds; "
                  "ratio = OpenBLAS-2-threads time / this time")
            for r in range(args.rounds):
                if busy:
                    with BusyCore():
                        res = prefill_round(model)
                else:
                    res = prefill_round(model)
                peer = res["OpenBLAS 2 threads"]
                shown = "   ".join(f"{k} {t:.3f} ({peer / t:.2f}x)" for k, t in res.items())
                print(f"  round {r + 1}: {shown}  (load {os.getloadavg()[0]:.1f})", flush=True)
        if "decode" in parts:
            print(f"decode + prefills ({label}), SmolLM2-135M Q4_1, 2 threads:")
            for r in range(args.rounds):
                print(f"  round {r + 1}:")
                decode_round(args, busy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
