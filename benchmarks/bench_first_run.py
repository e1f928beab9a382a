"""How long does the README's first command take with a cold Numba cache, against the same command warm?

The peer is the command itself with Numba's on-disk cache already filled (the "warm" run): the
issue's goal is the first answer within 2x the warm time. Each round runs, in fresh processes,

- cold: ``NUMBA_CACHE_DIR=<new empty dir> python -m axon_llm generate --chat --prompt ...``
  (every kernel the command uses compiles in that run);
- warm: the same command twice more with the same cache directory (best of the two).

and prints wall times, their ratio and the load average, the CPU time of each run (the process and
the compiling processes it starts: on a busy machine wall time mostly measures the waiting), when
the answer was on stdout (a cold run answers before it has finished compiling), plus the CLI's own
stderr line (time to the first token and tokens/s, which keep compilation out of the rate). Rounds alternate cold and
warm so a change of machine load hits both.

    python benchmarks/bench_first_run.py [--rounds 2] [--max-new-tokens 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

PROMPT = "What is the capital of France?"


def run(cache_dir: str, args) -> tuple[float, float, str, float, str]:
    """(wall seconds, CPU seconds of the process and its children, the CLI's timing line, seconds
    until the answer's first line was on stdout, the answer) of one ``generate`` in a fresh process."""
    cmd = [sys.executable, "-m", "axon_llm", "generate", "--chat", "--prompt", PROMPT,
           "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answer = proc.stdout.readline()                      # this prompt's answer is one line
    answered = time.perf_counter() - t0
    rest, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 or not answer:
        sys.exit(f"bench_first_run: {' '.join(cmd)} failed:\n{err[-2000:]}")
    timing = next((line for line in err.splitlines() if "tokens in" in line), "")
    return wall, cpu, timing.strip(), answered, answer + rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"axon-llm generate --chat --prompt {PROMPT!r} --max-new-tokens {args.max_new_tokens} "
          f"--threads {args.threads}; cold = empty NUMBA_CACHE_DIR, warm = same cache, best of 2")
    ratios, answers = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="axon-numba-cache-") as cache:
            load = os.getloadavg()[0]
            cold, cold_cpu, cold_line, cold_answer, cold_text = run(cache, args)
            warm, warm_cpu, warm_line, warm_answer, warm_text = min(run(cache, args) for _ in range(2))
        ratios.append(cold / warm)
        answers.append(cold_answer / warm_answer)
        print(f"round {r + 1} (load {load:.1f}): cold {cold:.2f} s, warm {warm:.2f} s, cold / warm {cold / warm:.2f}x; "
              f"CPU time cold {cold_cpu:.2f} s, warm {warm_cpu:.2f} s ({cold_cpu / warm_cpu:.2f}x)")
        print(f"    cold: answer on stdout after {cold_answer:.2f} s; {cold_line}")
        print(f"    warm: answer on stdout after {warm_answer:.2f} s; {warm_line}")
        same = "the same answer" if cold_text == warm_text else f"DIFFERENT answers: {cold_text!r} / {warm_text!r}"
        print(f"    cold and warm: {same}")
    print(f"first answer on stdout, cold / warm over {len(answers)} rounds: min {min(answers):.2f}x, "
          f"max {max(answers):.2f}x (the issue's goal: the first answer within 2x the warm time)")
    print(f"whole command, cold / warm over {len(ratios)} rounds: min {min(ratios):.2f}x, max {max(ratios):.2f}x "
          f"(after answering, a cold run waits for its background compiles so the next run is warm)")


if __name__ == "__main__":
    main()
