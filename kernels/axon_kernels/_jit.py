"""Shared plumbing for the Numba kernels: the JIT switch, a vectorisable exp, input validation.

Every public kernel `name` dispatches to its NumPy reference `name_ref` when Numba's JIT is
disabled (``NUMBA_DISABLE_JIT=1``): the `@njit` bodies would then run as plain Python loops,
which is correct but far too slow to be useful. The raw Numba implementations stay reachable
(`kernels.attention.flash_attention_nb`, ...) so tests compare them with the references in
both modes.
"""

from __future__ import annotations

import os

# Threads on a machine shared with other programs (measured in docs/performance.md "Threads").
# Each choice is a default: a variable the user set is left alone.
# * Wait policy: OpenMP's default keeps idle worker threads spinning; on a machine with more
#   runnable processes than cores, a worker that spins or got descheduled stalls the next
#   parallel kernel call by ~10 ms (ternary matvec 4096^2 on 2 shared cores: 7-11 ms with the
#   default, 0.2-0.3 ms with OMP_WAIT_POLICY=PASSIVE, see docs/kernels.md). So idle workers sleep.
#   It has to happen before the OpenMP runtime starts (the first parallel kernel).
# * Threading layer: Numba's default order (TBB, then OpenMP, then workqueue) is kept; here it
#   picks OpenMP (GNU libgomp; TBB is not installed). Numba's own `workqueue` layer decoded
#   faster under load, but it aborts the process when two Python threads launch parallel kernels
#   at once (the server can), so it is no choice for a library; NUMBA_THREADING_LAYER is the
#   user's to set (a program computing on one thread may choose workqueue).
# * BLAS: NumPy's OpenBLAS runs on one thread and `axon_kernels.blas.gemm` splits large products
#   over the threads of `axon_kernels.workers.run_chunks` instead (see `set_threads` and blas.py for why).
_USER_ENV = frozenset(v for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER", "OPENBLAS_NUM_THREADS",
                                  "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if v in os.environ)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

__all__ = ["CONTRACT", "REASSOC", "jit_disabled", "fast_exp", "fast_log1p", "float_array", "result_float_dtype", "set_threads",
           "default_threads", "gemm_split", "cached_on_disk", "own_cache_entry", "compile_in_background",
           "use_references"]

# Only FMA contraction: it never changes NaN/Inf propagation (unlike fastmath=True, which
# assumes no NaN/Inf and may drop them). Used on the hot loops of float kernels.
CONTRACT = {"contract"}
#: Contraction plus reassociation: loops that sum (dot products, row norms, softmax sums) may be
#: reordered, so LLVM vectorises them with several partial sums (8x faster than one serial chain
#: per sum in decode.py, ~4-7x in rms_norm.py). No other fast-math flag: nothing assumes finite
#: values, so NaN and Inf still propagate; only the rounding of the sums changes.
REASSOC = {"reassoc", "contract"}


def openblas_functions(*names: str) -> list:
    """For each OpenBLAS library this process loaded (NumPy's, found among its shared libraries;
    no threadpoolctl), its first entry point among ``names`` (ctypes functions; none found: [])."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        fn = next((getattr(lib, name) for name in names if hasattr(lib, name)), None)
        if fn is not None:
            found.append(fn)
    return found


def _blas_set_threads(n: int) -> bool:
    """Set the thread count of the OpenBLAS that NumPy loaded. False when no OpenBLAS entry
    point was found."""
    import ctypes

    fns = openblas_functions("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                             "openblas_set_num_threads64_", "openblas_set_num_threads")
    for fn in fns:
        fn(ctypes.c_int(n))
    return bool(fns)


_gemm_split = 1   # threads `blas.gemm` splits a large product for (1: none); kept here, where the policy is set


def _set_gemm_split(n: int) -> None:
    global _gemm_split
    _gemm_split = n


def gemm_split() -> int:
    """How many threads `axon_kernels.blas.gemm` splits a large product for (1: none)."""
    return _gemm_split


def set_threads(n: int) -> int:
    """Run the kernels on ``n`` threads (``n >= 1``): Numba's parallel kernels on ``n`` (at most
    the ``NUMBA_NUM_THREADS`` the process started with, the number of cores by default), and
    large BLAS products split over ``n`` threads by `axon_kernels.blas.gemm`, with OpenBLAS itself
    on one thread (its spinning, statically split workers stall on a shared machine; see
    docs/performance.md "Threads"; with another BLAS than OpenBLAS, no split). Returns the Numba
    thread count in force. ``--threads`` of the
    CLI calls this; importing axon_kernels calls `default_threads`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    os.environ["OMP_NUM_THREADS"] = str(n)               # for OpenMP runtimes started later / subprocesses
    os.environ["OPENBLAS_NUM_THREADS"] = "1"             # an OpenBLAS loaded later / subprocesses
    _set_gemm_split(n if _blas_set_threads(1) else 1)   # another BLAS keeps its own threads: no split on top
    used = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(used)
    return used


def default_threads() -> None:
    """The thread policy at import: like ``set_threads(cores)`` unless the user chose BLAS threads
    (``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set
    before the import): then OpenBLAS keeps the user's count and `gemm` does not split products.
    Nor does it when NumPy's BLAS is not an OpenBLAS found among the process's libraries (MKL,
    Accelerate): that BLAS keeps its own threads."""
    if _USER_ENV & {"OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}:
        _set_gemm_split(1)
        return
    _set_gemm_split(numba.config.NUMBA_NUM_THREADS if _blas_set_threads(1) else 1)


_ON_REFERENCES = [False]      # set by use_references: the public kernels run their NumPy references


def jit_disabled() -> bool:
    """True when the public kernels run their NumPy references: Numba runs `@njit` functions as
    plain Python (NUMBA_DISABLE_JIT=1), or this process chose the references for a while
    (:func:`use_references`)."""
    return bool(numba.config.DISABLE_JIT) or _ON_REFERENCES[0]


def use_references(on: bool) -> None:
    """Make every public kernel of this process run its NumPy reference (``on``) or its Numba
    kernel again (not ``on``), as ``NUMBA_DISABLE_JIT=1`` would but at any time: the first
    ``axon-llm generate`` answers on the references while second processes fill Numba's cold
    disk cache, then switches back (``axon_llm.first_run``). Process-wide, not per thread."""
    _ON_REFERENCES[0] = bool(on)


# --------------------------------------------------------------------------------------------
# the first run: Numba's on-disk cache, and compiling in a second process
# --------------------------------------------------------------------------------------------


def cached_on_disk(*dispatchers) -> bool:
    """True when Numba's on-disk cache has an index for every given ``@njit(cache=True)``
    function (False: their first call compiles, which takes seconds). True under
    ``NUMBA_DISABLE_JIT=1`` (nothing compiles) and on a Numba whose cache layout is unknown."""
    if numba.config.DISABLE_JIT:
        return True
    for disp in dispatchers:
        try:
            index = disp._cache._cache_file._index_path  # Numba's FunctionCache -> IndexDataCacheFile
        except AttributeError:
            return True                                  # a Numba without this layout: do not guess
        if not os.path.exists(index):
            return False
    return True


def own_cache_entry(fn, suffix: str):
    """A copy of the Python function ``fn`` named ``<name>_<suffix>``, for a second `njit` variant
    of it (e.g. ``parallel=True`` beside a serial one) to get its own on-disk cache entry. Numba
    keys its cache by the function's qualified name and argument types, not by the `njit`
    options: two variants compiled from one function share one entry, and every later process
    loads whichever was saved last for both (a "parallel" kernel then runs on one thread, or a
    serial one wakes the thread pool on every call)."""
    import types as pytypes

    copy = pytypes.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_{suffix}", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}_{suffix}"
    copy.__doc__ = fn.__doc__
    return copy


def compile_in_background(module: str, function: str = "warm_up", *args):
    """Start ``module.function(*args)`` (``args`` plain Python literals) in a second process, to
    fill Numba's on-disk cache while this process does other work. Returns a handle with
    ``poll()``, ``wait(timeout=None)`` and ``kill()`` as ``subprocess.Popen`` has (None under
    ``NUMBA_DISABLE_JIT=1``).

    Compiling holds the GIL, so a thread would not overlap with this process's own compiling;
    a second process does, on a second core (and, on a busy machine, gets its own share of the
    CPU). Where it can (POSIX, no other Python thread running) it forks this process, so the
    child skips starting Python and importing Numba and the kernels (~0.4 s of CPU each time)
    and Numba's own start-up (done once here first, `_start_compiler`);
    otherwise it starts ``python -c`` importing the same ``axon_kernels`` (its folder goes first
    on ``PYTHONPATH``), also when ``NUMBA_CACHE_DIR`` changed since Numba was imported (a fork
    would write to the folder read at import). Either way the child writes to the current
    ``NUMBA_CACHE_DIR`` and its output is discarded."""
    import subprocess
    import sys
    import threading

    if numba.config.DISABLE_JIT:
        return None
    # a fork writes where this process's kernels were set up to cache: only while NUMBA_CACHE_DIR
    # still says what Numba read at import (a caller may have changed it since, as tests do)
    same_cache = os.environ.get("NUMBA_CACHE_DIR", "") == numba.config.CACHE_DIR
    if hasattr(os, "fork") and threading.active_count() == 1 and same_cache:
        _start_compiler()
        return _Forked(module, function, args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding axon_kernels
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    code = (f"from axon_kernels._jit import _yield_cpu; _yield_cpu(); import importlib; "
            f"getattr(importlib.import_module({module!r}), {function!r})(*{args!r})")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_COMPILER_STARTED = [False]


def _start_compiler() -> None:
    """Compile one trivial function here, once: Numba's first compile in a process sets up its
    typing and target contexts and LLVM (~0.4 s of CPU); children forked afterwards share that
    instead of each paying it (measured: 0.4-0.5 s less CPU per child, 0.42 s here)."""
    if not _COMPILER_STARTED[0]:
        _COMPILER_STARTED[0] = True
        numba.njit(lambda x: x + 1)(1)


def _die_with(parent: int) -> None:
    """In a forked child: be killed when ``parent`` dies, even by SIGKILL (Linux's
    ``PR_SET_PDEATHSIG``; elsewhere the child just finishes its compile and exits)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                           # it died before the call above
        os._exit(1)


#: how much lower the scheduling priority of a background compile is than its parent's (``nice``)
BACKGROUND_NICENESS = 10


def _yield_cpu() -> None:
    """In a background compile: lower this process's priority, so that the parent, which is
    answering meanwhile, keeps a whole core when the compiles want more cores than there are."""
    try:
        os.nice(BACKGROUND_NICENESS)
    except OSError:                                      # not allowed: run at the parent's priority
        pass


class _Forked:
    """A forked child running ``module.function(*args)`` then exiting (0, or 1 if it raised)
    without running this process's exit handlers; ``poll`` / ``wait`` / ``kill`` as Popen's."""

    def __init__(self, module: str, function: str, args: tuple):
        import importlib
        import sys

        for stream in (sys.stdout, sys.stderr):          # nothing buffered gets written twice
            stream.flush()
        self.returncode = None
        self.cpu_seconds = None                          # its CPU time, once it exited
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:                                # the child
            code = 1
            try:
                _die_with(parent)
                _yield_cpu()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                _ON_REFERENCES[0] = False
                getattr(importlib.import_module(module), function)(*args)
                code = 0
            finally:
                os._exit(code)

    def poll(self):
        """The exit code, or None while it runs."""
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def _reap(self, flags: int) -> None:
        pid, status, usage = os.wait4(self.pid, flags)
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_seconds = usage.ru_utime + usage.ru_stime

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code (``subprocess.TimeoutExpired`` after ``timeout`` seconds)."""
        import subprocess
        import time

        if timeout is None and self.returncode is None:
            self._reap(0)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"compile_in_background pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it, unless it already exited (then ``wait`` reaps it)."""
        import signal

        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# exp that LLVM can vectorise
# --------------------------------------------------------------------------------------------
# Numba calls libm's expf once per element, which stops LLVM from vectorising any loop that
# contains it (there is no SVML here). The float32 kernels spend most of their time in exp, so
# `fast_exp` uses the Cephes expf polynomial written in plain arithmetic: x = k ln2 + r,
# |r| <= ln2/2, exp(r) by a degree-7 polynomial, times 2**k built from the exponent bits.
# Measured max relative error vs float64 exp: 8.3e-8 (< 1 ulp) over the normal range; NaN
# propagates, +-Inf give Inf / 0. float64 inputs use np.exp (full double accuracy).


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret an int32 bit pattern as a float32 (LLVM bitcast; vectorises)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _float32_bits_as_int32(typingctx, value):
    """Reinterpret a float32 as its int32 bit pattern (LLVM bitcast; vectorises)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


def fast_exp(x):
    """exp(x); inside Numba kernels float32 uses a vectorisable polynomial (see module doc)."""
    return np.exp(x)


@overload(fast_exp)
def _fast_exp_overload(x):
    if x != types.float32:
        return lambda x: np.exp(x)

    def impl(x):
        xx = min(max(x, np.float32(-104.0)), np.float32(89.0))  # beyond: result is 0 / inf anyway
        k = np.float32(np.floor(xx * np.float32(1.44269504088896341) + np.float32(0.5)))
        r = xx - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)  # x - k ln2, two-part ln2
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        ki = np.int32(k)
        half = ki >> np.int32(1)  # 2**k as two factors so neither exponent field overflows
        scale1 = _int32_bits_as_float32((half + np.int32(127)) << np.int32(23))
        scale2 = _int32_bits_as_float32((ki - half + np.int32(127)) << np.int32(23))
        res = (p * scale1) * scale2
        return x if x != x else res

    return impl


def fast_log1p(x):
    """log(1 + x); inside Numba kernels float32 uses a vectorisable polynomial (Cephes logf)."""
    return np.log1p(x)


@overload(fast_log1p)
def _fast_log1p_overload(x):
    if x != types.float32:
        return lambda x: np.log1p(x)

    def impl(x):
        w = np.float32(1.0) + x
        bits = _float32_bits_as_int32(w)
        e = ((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(126)  # w = f * 2**e, f in [0.5, 1)
        f = _int32_bits_as_float32((bits & np.int32(-2139095041)) | np.int32(126 << 23))  # mask 0x807FFFFF
        if f < np.float32(0.707106781186547524):  # keep f in [sqrt(1/2), sqrt(2))
            e -= np.int32(1)
            f = f + f
        ef = np.float32(e)
        r = f - np.float32(1.0)
        rr = r * r
        p = np.float32(7.0376836292e-2)
        p = p * r - np.float32(1.1514610310e-1)
        p = p * r + np.float32(1.1676998740e-1)
        p = p * r - np.float32(1.2420140846e-1)
        p = p * r + np.float32(1.4249322787e-1)
        p = p * r - np.float32(1.6668057665e-1)
        p = p * r + np.float32(2.0000714765e-1)
        p = p * r - np.float32(2.4999993993e-1)
        p = p * r + np.float32(3.3333331174e-1)
        p = p * r * rr - np.float32(2.12194440e-4) * ef - np.float32(0.5) * rr
        log_w = r + p + np.float32(0.693359375) * ef
        res = log_w + (x - (w - np.float32(1.0))) / w  # corrects the rounding of 1 + x
        res = x if w == np.float32(1.0) else res  # log1p(x) = x to float32 precision
        res = x if x == np.float32(np.inf) else res
        res = np.float32(-np.inf) if w == np.float32(0.0) else res
        res = np.float32(np.nan) if (w < np.float32(0.0) or x != x) else res
        return res

    return impl


# --------------------------------------------------------------------------------------------
# validation (runs in Python, before any kernel)
# --------------------------------------------------------------------------------------------


def float_array(name: str, x, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """`x` as a float32/float64 ndarray, or a TypeError/ValueError naming `name`."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # axon.Tensor and friends
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {arr.shape}")
    return arr


def result_float_dtype(*arrays) -> np.dtype:
    """float32 if every given array is float32, else float64 (None entries are ignored)."""
    dts = [a.dtype for a in arrays if a is not None]
    return np.dtype(np.float32) if all(d == np.float32 for d in dts) else np.dtype(np.float64)
