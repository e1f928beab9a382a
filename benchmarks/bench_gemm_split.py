"""How should `axon_kernels.blas` split the products of a training step over two threads?

Two questions, on the shapes of `benchmarks/bench_train.py` (1024 tokens, hidden 256, FFN 688,
vocabulary 1000), each answered by alternating the candidates call by call in this process:

1. rows of one product cut into one chunk per thread, or two (``blas._CHUNKS_PER_THREAD``):
   more chunks tolerate a stalled thread better, but every chunk packs all of ``b`` again;
2. a linear layer's two gradient products (``g @ W`` and ``g^T @ x``) one after the other, each
   split over the threads (`blas.gemm`), or side by side, one thread each (`side_by_side`);
3. (``--step``) the whole training step of `benchmarks/bench_train.py` as it is (each layer's
   weight gradient deferred to a helper thread, `axon_kernels.workers.defer`, on a pool whose
   caller takes chunks too), against the same step with the weight gradients computed side by
   side with the input gradients and waited for, and as before this round (that, on a
   ``ThreadPoolExecutor`` pool whose caller sleeps until the helpers are done); ``--rounds``
   rounds of 3 steps each, the order rotating.

Prints GFLOP/s per shape (median of ``--calls`` calls, with the min-max of the per-call ratio
over ``--rounds`` groups), and the summed time of all shapes per candidate.

    python benchmarks/bench_gemm_split.py [--calls 60] [--rounds 5] [--threads 2] [--step] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))        # bench_train, for --step

import numpy as np

FORWARD = [(1024, 256, 256), (1024, 256, 128), (1024, 256, 688), (1024, 688, 256), (1024, 256, 1000)]  # x @ W^T
LAYERS = [(256, 256), (128, 256), (688, 256), (256, 688), (1000, 256)]                               # (out, in)


def side_by_side(products: list) -> list:
    """``[a @ b for a, b in products]``, each product one whole one-threaded BLAS call, the
    products spread over the threads (`axon_kernels.workers.run_chunks`)."""
    from axon_kernels.workers import run_chunks

    outs = [None] * len(products)

    def one(i: int) -> None:
        a, b = products[i]
        outs[i] = np.matmul(a, b)

    run_chunks(one, len(products))
    return outs


def _time(candidates: dict, calls: int, rounds: int) -> dict:
    """{name: [seconds per call]}, the candidates called in turn (the order swaps every call)."""
    names = list(candidates)
    for f in candidates.values():
        f()                                                  # warm-up
    times = {n: [] for n in names}
    for i in range(calls * rounds):
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            candidates[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def _spread(times: dict, a: str, b: str, rounds: int) -> str:
    """min-max over the rounds of median(a) / median(b)."""
    n = len(times[a]) // rounds
    r = [statistics.median(times[a][i * n:(i + 1) * n]) / statistics.median(times[b][i * n:(i + 1) * n]) for i in range(rounds)]
    return f"{min(r):.2f}-{max(r):.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=60, help="calls per candidate per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--step", action="store_true", help="also time the training step, helpers watching vs sleeping")
    ap.add_argument("--smoke", action="store_true", help="two small shapes, few calls: checks the script runs")
    args = ap.parse_args(argv)
    from axon_kernels import blas
    from axon_kernels._jit import set_threads

    set_threads(args.threads)
    calls, rounds = (3, 1) if args.smoke else (args.calls, args.rounds)
    forward, layers = (FORWARD[:1], LAYERS[:1]) if args.smoke else (FORWARD, LAYERS)
    rng = np.random.default_rng(0)
    before = blas._CHUNKS_PER_THREAD
    totals = {"1 chunk/thread": 0.0, "2 chunks/thread": 0.0, "one after the other": 0.0, "side by side": 0.0}
    print(f"products on {args.threads} threads (OpenBLAS on one thread per chunk); GFLOP/s, median of "
          f"{calls * rounds} calls; ratio = min-max over {rounds} rounds")
    try:
        print("1. rows in one chunk per thread vs two:")
        for m, k, n in forward:
            a = rng.standard_normal((m, k)).astype(np.float32)
            w = rng.standard_normal((n, k)).astype(np.float32)

            def split(c, a=a, w=w):
                blas._CHUNKS_PER_THREAD = c
                blas.gemm(a, w.T)

            times = _time({"1 chunk/thread": lambda: split(1), "2 chunks/thread": lambda: split(2)}, calls, rounds)
            flop = 2 * m * k * n / 1e9
            med = {name: statistics.median(t) for name, t in times.items()}
            for name in med:
                totals[name] += med[name]
            print(f"  [{m}, {k}] @ [{k}, {n}]: 1 chunk {flop / med['1 chunk/thread']:5.0f}, 2 chunks "
                  f"{flop / med['2 chunks/thread']:5.0f} GFLOP/s; 2 / 1 time {_spread(times, '2 chunks/thread', '1 chunk/thread', rounds)}")
    finally:
        blas._CHUNKS_PER_THREAD = before
    print("2. a linear layer's input and weight gradients, one after the other (gemm) vs side by side (one thread each):")
    for out, inp in layers:
        g = rng.standard_normal((1024, out)).astype(np.float32)
        w = rng.standard_normal((out, inp)).astype(np.float32)
        x = rng.standard_normal((1024, inp)).astype(np.float32)
        times = _time({"one after the other": lambda: (blas.gemm(g, w), blas.gemm(g.T, x)),
                       "side by side": lambda: side_by_side([(g, w), (g.T, x)])}, calls, rounds)
        flop = 4 * 1024 * out * inp / 1e9
        med = {name: statistics.median(t) for name, t in times.items()}
        for name in med:
            totals[name] += med[name]
        print(f"  out {out}, in {inp}: one after the other {flop / med['one after the other']:5.0f}, side by side "
              f"{flop / med['side by side']:5.0f} GFLOP/s; after / side time {_spread(times, 'one after the other', 'side by side', rounds)}")
    print("summed medians: " + ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in totals.items()))
    if args.step:
        _step_designs(args, rounds)
    return 0


def _executor_run_chunks():
    """The pool before this one, for comparison: ``concurrent.futures.ThreadPoolExecutor`` with
    one helper per thread (each with serial BLAS), the caller asleep until every future is done."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    from axon_kernels import workers

    n = workers.threads()
    pool = ThreadPoolExecutor(n, thread_name_prefix="executor", initializer=workers._set_local or (lambda n: None), initargs=(1,))

    def run_chunks(fn, n_chunks: int) -> None:
        counter = itertools.count()

        def work() -> None:
            while (i := next(counter)) < n_chunks:
                fn(i)

        for f in [pool.submit(work) for _ in range(min(n, n_chunks))]:
            f.result()

    return run_chunks


def _waited_backward(run_chunks):
    """`Linear.backward` as it was before the weight gradient was deferred: both products side by
    side on ``run_chunks``' threads, waited for."""
    from axon.nn import _fused

    def backward(ctx, grad):
        x2, w = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # [N, out]
        if w is not None and x2 is not None and g2.size * x2.shape[1] >= _fused.GEMM_MIN_WORK:
            products, outs = [(g2, w), (g2.T, x2)], [None, None]

            def one(i: int) -> None:
                outs[i] = np.matmul(*products[i])

            run_chunks(one, 2)
            gx, gw = outs[0].reshape(ctx.x_shape), outs[1]
        else:
            gx = _fused.gemm(g2, w).reshape(ctx.x_shape) if w is not None else None
            gw = _fused.gemm(g2.T, x2) if x2 is not None else None
        gb = g2.sum(axis=0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb

    return staticmethod(backward)


def _step_designs(args, rounds: int) -> None:
    """Part 3: the training step as it is, against the same step with one design choice undone
    at a time (see the module doc)."""
    import bench_train

    from axon.nn import _fused
    from axon_kernels import blas, workers

    config = bench_train.SMOKE_CONFIG if args.smoke else bench_train.CONFIG
    batch, length = (2, 16) if args.smoke else (8, 128)
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], size=(batch, length + 1))
    trainer = bench_train.AxonTrainer(config, ids[:, :-1].copy(), ids[:, 1:].copy())
    executor = _executor_run_chunks()
    this = _fused.Linear.__dict__["backward"]
    modes = {                                   # blas' run_chunks, Linear.backward
        "as it is": (workers.run_chunks, this),
        "weight grads waited for": (workers.run_chunks, _waited_backward(workers.run_chunks)),
        "before (executor pool, waited for)": (executor, _waited_backward(executor)),
    }
    times = {name: [] for name in modes}

    def use(mode) -> None:
        blas.run_chunks, _fused.Linear.backward = mode

    saved = (blas.run_chunks, this)
    try:
        for mode in modes.values():                                   # warm-up, every way
            use(mode)
            trainer.step()
        names = list(modes)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:   # the order rotates every round
                use(modes[name])
                times[name].append(statistics.median([trainer.step()[0] for _ in range(3)]))
    finally:
        use(saved)
    print(f"3. training step ({config['num_hidden_layers']} layers, batch {batch} x {length}), median of 3 steps per "
          f"round, {rounds} rounds: " + ", ".join(f"{name} {statistics.median(t) * 1e3:.1f} ms" for name, t in times.items()))
    for name in names[1:]:
        r = [a / b for a, b in zip(times[name], times["as it is"])]
        better = sum(x > 1 for x in r)
        print(f"   {name} / as it is: min {min(r):.2f}x median {statistics.median(r):.2f}x max {max(r):.2f}x "
              f"(as it is faster in {better} of {rounds} rounds)")


if __name__ == "__main__":
    sys.exit(main())
