"""The first ``axon-llm generate`` on a cold Numba disk cache: answer while the kernels compile.

Compiling the kernels one answer calls costs several seconds of CPU (the decode step's attention
alone ~2 s), more than the whole warm command. Numba compiles under the GIL, so compiling in this
process would hold up the answer; instead second processes compile them
(`axon_kernels._jit.compile_in_background` running `axon_kernels.first_run.warm_up`) while this
process loads the model and answers on the NumPy references every kernel has
(`axon_kernels._jit.use_references`), slower per token but with nothing to compile. The
compiling processes run at a lower priority (`axon_kernels._jit.BACKGROUND_NICENESS`): on two
cores this process keeps one to itself and answers ~0.7 s sooner, while the compiles take
longer (`benchmarks/bench_first_run.py`). Between
tokens :meth:`FirstRun.poll` checks the processes; once all are done the next token runs on the
compiled kernels, loaded from the disk cache. Once it has answered, this process compiles the
parts no background process has started yet (they claim parts in a shared folder,
`axon_kernels.first_run.claim`), then waits for them before it exits, so the next run finds the
cache full; if the command fails it kills them, so no process outlives it.

The references compute the same functions as the kernels up to float rounding, so a greedy answer
can differ from a warm run's only where two tokens' logits tie to rounding.
"""

from __future__ import annotations

import shutil
import tempfile
import time

__all__ = ["FirstRun"]


class FirstRun:
    """The background compiles of one ``generate`` command, and the switch to the references.

    Use as a context manager around the command: on leaving it normally it waits for the
    processes (:meth:`finish`); on an error it kills them. ``log`` prints a line on stderr."""

    def __init__(self, log):
        self.log = log
        self.procs: list = []
        self.parts: list[str] = []       # every part handed to a background process
        self.claims: str | None = None   # the folder where the processes claim parts
        self.t0 = time.perf_counter()

    def start(self, parts) -> None:
        """Compile ``parts`` in a new background process if the disk cache lacks any of them
        (then it helps with the parts of earlier ones, which they have not started yet)."""
        from axon_kernels import first_run
        from axon_kernels._jit import compile_in_background

        if not parts or first_run.compiled_on_disk(parts):
            return
        if self.claims is None:
            self.log("compiling kernels for the first run in the background (cached on disk for the next ones)...")
            self.claims = tempfile.mkdtemp(prefix="axon-first-run-")
        # its own parts, then those of earlier processes they have not started yet (last first)
        queue = tuple(parts) + tuple(reversed(self.parts))
        proc = compile_in_background("axon_kernels.first_run", "warm_up", queue, self.claims)
        if proc is not None:
            self.procs.append(proc)
            self.parts.extend(parts)

    def answer_on_references(self) -> None:
        """Run the kernels on their references from now on, if anything is still compiling."""
        from axon_kernels._jit import use_references

        running = self.poll_running()
        if running:
            self.log("answering on the NumPy reference kernels meanwhile (slower per token)")
        use_references(running)

    def poll_running(self) -> bool:
        """True while a background compile is running."""
        return any(p.poll() is None for p in self.procs)

    def poll(self, *_ignored) -> None:
        """Between tokens: once every background compile is done, back to the compiled kernels."""
        from axon_kernels._jit import jit_disabled, use_references

        if self.procs and jit_disabled() and not self.poll_running():
            use_references(False)

    def finish(self) -> None:
        """Back to the compiled kernels; compile here the parts no background process has
        started yet, then wait for them."""
        from axon_kernels import first_run
        from axon_kernels._jit import use_references

        use_references(False)
        if self.procs:
            if self.poll_running():
                self.log("finishing the kernel compile...")
                # the parts no process has started yet, last first (each process takes its own in order)
                first_run.warm_up(tuple(reversed(self.parts)), self.claims)
            for p in self.procs:
                p.wait()                 # if one failed, its kernels compile when first called
            cpu = [getattr(p, "cpu_seconds", None) for p in self.procs]
            used = f" ({' + '.join(f'{c:.1f}' for c in cpu)}s of CPU)" if None not in cpu else ""
            self.log(f"kernels compiled in {time.perf_counter() - self.t0:.1f}s{used}")
        self._forget_claims()

    def kill(self) -> None:
        """Stop the background compiles now (the command failed or was interrupted)."""
        from axon_kernels._jit import use_references

        use_references(False)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self._forget_claims()

    def _forget_claims(self) -> None:
        if self.claims is not None:
            shutil.rmtree(self.claims, ignore_errors=True)
            self.claims = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.kill()
        return False
