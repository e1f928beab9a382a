"""Throughput and latency of `axon-llm serve` under 1, 4 and 8 concurrent clients.

Starts ``axon-llm serve`` (the real SmolLM2) in its own process on a free port of 127.0.0.1, as
users run it, then for each client count runs that many streaming `/v1/completions` requests at
once through the official `openai` client from this process, each generating exactly N tokens
(``ignore_eos``), and prints:

- aggregate tokens/s (all clients' tokens / wall time) and its ratio to one client's (the peer:
  the same server answering one client at a time — the goal is 8 clients >= 3x);
- time to first token (p50 / max) and request latency (p50 / p99) under that load;
- for reference, ``model.generate`` alone (no HTTP, no scheduler) on the same prompt.

The clients live in another process than the server because that is how a server is used: with
``--in-process`` (the server on a thread of this process, which also prints how many rows the
scheduler decoded together) the eight clients' Python (the `openai` client parses every SSE
chunk into pydantic objects) competes with the scheduler thread for this process's GIL.

    python benchmarks/bench_serve.py                # 64 tokens, 1/4/8 clients, 2 repeats
    python benchmarks/bench_serve.py --smoke        # seconds: 4 tokens, 1/2 clients, in-process (the tests run this)
    python benchmarks/bench_serve.py --steps        # no HTTP: the scheduler's decode steps, 1 row vs 8, profiled

``--steps`` drives `BatchScheduler` directly on this thread (no HTTP, no clients): the time
per decode step with 1 row and with the largest client count of rows (the ratio of tokens/s is
what batching alone gives), through the batched plan (`axon_llm.batch_decode`, what the server
runs) and through the module forward (the peer), then a cProfile of the many-row steps.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

PROMPTS = ["Once upon a time", "The history of Rome", "A recipe for bread", "The weather today",
           "My favourite book", "In the year 2050", "The best way to learn", "Dear diary,"]


def _pct(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_clients(client, model_name: str, clients: int, tokens: int) -> dict:
    """``clients`` streaming requests at once; per-request TTFT / latency and aggregate tokens/s."""
    results = [None] * clients

    def one(i):
        t0 = time.perf_counter()
        first, count = None, 0
        stream = client.completions.create(model=model_name, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=tokens,
                                           temperature=0, stream=True, stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
        results[i] = (first if first is not None else time.perf_counter() - t0, time.perf_counter() - t0, count)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in results]
    lat = [r[1] for r in results]
    total = sum(r[2] for r in results)
    return {"clients": clients, "tokens": total, "wall": wall, "tps": total / wall,
            "ttft_p50": _pct(ttft, 50), "ttft_max": max(ttft), "lat_p50": _pct(lat, 50), "lat_p99": _pct(lat, 99)}


def main(argv=None) -> int:
    """Run the benchmark and print one line per client count."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per request (default 64)")
    ap.add_argument("--clients", default="1,4,8", help="client counts (default 1,4,8)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per client count; the spread is printed")
    ap.add_argument("--smoke", action="store_true", help="a few seconds: 4 tokens, 1 and 2 clients, 1 repeat, in-process")
    ap.add_argument("--threads", type=int, default=None, help="compute threads of the server (default: all cores)")
    ap.add_argument("--steps", action="store_true", help="time and profile the scheduler's decode steps without HTTP")
    ap.add_argument("--in-process", action="store_true",
                    help="run the server on a thread of this process (prints the rows decoded together)")
    args = ap.parse_args(argv)
    if args.smoke:                   # in-process: one model load, so the test that runs this stays quick
        args.tokens, args.clients, args.repeats, args.in_process = 4, "1,2", 1, True
    counts = [int(c) for c in args.clients.split(",")]

    import openai

    from axon_llm.auto import from_pretrained
    from axon_llm.tokenizer import HFTokenizer

    model, tok = from_pretrained(args.model), HFTokenizer.from_pretrained(args.model)
    if args.threads:
        from axon_kernels._jit import set_threads
        set_threads(args.threads)            # this process (model.generate alone, or the in-process server)
    if args.steps:
        return steps(model, tok, max(counts), args.tokens)
    serve = _serve_in_process if args.in_process else _serve_in_child
    url, app, stop = serve(args.model, max(counts), model, tok, args.threads)
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    try:
        run_clients(client, args.model, 1, 2)                                  # warm-up (JIT): one row
        run_clients(client, args.model, max(counts), 2)                        # and many rows (other kernels)
        ids = np.asarray([tok.encode(PROMPTS[0])])
        model.generate(ids, max_new_tokens=2, eos_token_id=None)               # warm-up of this process
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=args.tokens, eos_token_id=None)
        direct = args.tokens / (time.perf_counter() - t0)
        print(f"server: {'a thread of this process' if app else 'its own process (axon-llm serve)'}, "
              f"threads {args.threads or 'all cores'}; load average {os.getloadavg()[0]:.1f}")
        print(f"model.generate alone (no server): {direct:.1f} tokens/s ({args.tokens} tokens)")
        base = None
        for c in counts:
            runs = [run_clients(client, args.model, c, args.tokens) for _ in range(args.repeats)]
            tps = [r["tps"] for r in runs]
            best = max(runs, key=lambda r: r["tps"])
            if c == counts[0]:
                base = statistics.median(tps)
            ratio = statistics.median(tps) / base
            rows = f"; most rows decoded together {app.scheduler.max_active}" if app else ""
            print(f"{c} client(s): {statistics.median(tps):.1f} tokens/s aggregate (runs {min(tps):.1f}-{max(tps):.1f}), "
                  f"{ratio:.2f}x {counts[0]} client(s); TTFT p50 {best['ttft_p50']:.2f}s max {best['ttft_max']:.2f}s; "
                  f"latency p50 {best['lat_p50']:.2f}s p99 {best['lat_p99']:.2f}s{rows}", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        stop()
    return 0


def steps(model, tok, rows: int, tokens: int) -> int:
    """Decode steps of `BatchScheduler` on this thread: 1 row vs ``rows`` rows, each through the
    batched plan (`axon_llm.batch_decode`, what the server runs) and through the module forward
    (its reference, the peer), alternated; then a profile of the plan's many-row steps."""
    import cProfile
    import io
    import pstats

    import axon
    from axon_llm.batching import BatchScheduler, SequenceRequest
    from axon_llm.generation_config import GenerationConfig

    def run(n, new_tokens, fast=True):
        sched = BatchScheduler(model, max_batch=rows, fast_decode=fast)
        for i in range(n):
            cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, temperature=0)
            sched.submit(SequenceRequest(tok.encode(PROMPTS[i % len(PROMPTS)]), cfg))
        with axon.no_grad():
            model.eval()
            sched._admit()                                   # prefill, not timed
            t0, count = time.perf_counter(), 0
            while sched.rows:
                sched._step()
                count += 1
        return (time.perf_counter() - t0) / count

    paths = {"plan": True, "modules": False}
    for fast in paths.values():
        run(rows, 3, fast)                                   # warm-up (JIT)
    per_step = {}
    for rnd in range(2):                                     # alternate 1 row and many, plan and modules
        for name, fast in paths.items():
            for n in (1, rows):
                per_step.setdefault((name, n), []).append(run(n, tokens, fast))
    print(f"load average {os.getloadavg()[0]:.1f}; {tokens} tokens per row, best of 2 (runs in brackets)")
    for name in paths:
        one, many = min(per_step[(name, 1)]), min(per_step[(name, rows)])
        print(f"{name}: 1 row: {one * 1e3:.1f} ms/step ({1 / one:.1f} tokens/s) {[round(t * 1e3, 1) for t in per_step[(name, 1)]]}; "
              f"{rows} rows: {many * 1e3:.1f} ms/step ({rows / many:.1f} tokens/s) "
              f"{[round(t * 1e3, 1) for t in per_step[(name, rows)]]}; {rows} rows / 1 row tokens/s {rows * one / many:.2f}x")
    for n in (1, rows):
        print(f"{n} row(s): plan {min(per_step[('modules', n)]) / min(per_step[('plan', n)]):.2f}x the module forward's tokens/s")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    prof = cProfile.Profile()
    prof.enable()
    run(rows, tokens)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    print(f"cProfile of {rows}-row steps (prefill included):")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    return 0


def _serve_in_process(name, max_batch, model, tok, threads):
    """The server on a thread of this process: ``(base url, app, stop)``."""
    from axon_llm.server import ServerApp, make_server

    app = ServerApp(model, tok, name, max_batch=max_batch, log=lambda line: None)
    srv = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop():
        srv.shutdown()
        srv.server_close()
        app.close()

    return f"http://127.0.0.1:{srv.server_address[1]}/v1", app, stop


def _serve_in_child(name, max_batch, model, tok, threads):
    """``axon-llm serve`` in a child process importing the same code as this one: ``(base url, None, stop)``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "axon_llm", "serve", "--model", name, "--embedding-model", "none",
                             "--port", str(port), "--max-batch", str(max_batch)] + (["--threads", str(threads)] if threads else []),
                            env=env, stdout=subprocess.DEVNULL, stderr=log)

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    deadline = time.monotonic() + 600
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return f"http://127.0.0.1:{port}/v1", None, stop
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_reason = "exited" if proc.poll() is not None else "did not answer /health in 600 s"
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
                stop()
                raise RuntimeError(f"axon-llm serve {stop_reason}: {tail}")
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
