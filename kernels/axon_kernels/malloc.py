"""Keep freed array memory in the process for the next arrays (glibc's malloc only).

Why: NumPy allocates every array with ``malloc``. glibc serves a block above its mmap threshold
(128 KB at first, raised as mmapped blocks are freed) with a fresh ``mmap`` and returns the pages
to the kernel when the block is freed, and it hands the top of the heap back (``trim``) whenever
more than twice that threshold lies free there. A training step frees most of its activations
in the backward pass, so the next step's forward gets fresh pages again, and every first touch
of a page is a page fault plus the kernel zeroing 4 KB. In `benchmarks/bench_train.py`'s step
(LLaMA 4 layers x 256, batch 8 x 128, one thread) that was ~35 ms of a ~300 ms step: the
elementwise kernels (RMSNorm, SwiGLU, RoPE, residual adds) took twice as long as on reused
memory, and dropping the gradients in ``zero_grad`` ran ``munmap``.

What: at import, `keep_freed_memory` raises both thresholds with ``mallopt`` (blocks up to
`MMAP_THRESHOLD` come from the heap, and up to `TRIM_THRESHOLD` of free heap is kept), so a
step reuses the pages the previous step freed. The price: the process keeps up to
`TRIM_THRESHOLD` of freed memory instead of returning it (its resident size stays near its peak
rather than shrinking between steps). Blocks larger than `MMAP_THRESHOLD` (big weights, long
sequences' activations) keep glibc's behaviour.

The user's choice wins: with glibc's own variables set (``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or ``GLIBC_TUNABLES``) or
``AXON_KEEP_FREED_MEMORY=0``, nothing is changed. Other C libraries (musl, macOS, Windows):
nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: blocks up to this size come from the heap, not from their own mmap (glibc's largest allowed value on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: free memory at the top of the heap kept for later arrays before glibc returns it to the kernel
TRIM_THRESHOLD = 256 << 20

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (<malloc.h>)
_M_MMAP_THRESHOLD = -3
_USER_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                   "GLIBC_TUNABLES")


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def keep_freed_memory() -> bool:
    """Apply the policy of the module docstring; True when ``mallopt`` accepted both thresholds,
    False when nothing was changed (the user chose, or the C library is not glibc)."""
    if os.environ.get("AXON_KEEP_FREED_MEMORY", "1") == "0" or any(v in os.environ for v in _USER_VARIABLES):
        return False
    if not sys.platform.startswith("linux") or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
