"""What the first ``axon-llm generate`` compiles, by part, so second processes can fill Numba's
disk cache (`axon_kernels._jit.compile_in_background`) while the caller answers on the NumPy
references (``axon_llm.first_run``).

Parts (:data:`PARTS`): ``"decode"`` the decode step's kernels (:func:`axon_kernels.decode.warm_up`);
the float32 kernels of the module forward (the prompt's pass), one part each so that several
processes can share them out: ``"prefill_norm"`` RMSNorm, ``"prefill_silu"`` the SiLU gate,
``"prefill_rope"`` RoPE; and each name
of :data:`axon_kernels.quant.INFERENCE_KERNELS` (one quantised kernel). :data:`MODEL_INDEPENDENT`
are the parts every model's generation compiles.
"""

from __future__ import annotations

import os

import numpy as np

from axon_kernels import decode, quant, rms_norm, rope, swiglu
from axon_kernels._jit import cached_on_disk, jit_disabled

__all__ = ["MODEL_INDEPENDENT", "PARTS", "claim", "compiled_on_disk", "warm_up"]

#: the parts of every generation, the largest first (the decode step's attention kernel)
MODEL_INDEPENDENT = ("decode", "prefill_silu", "prefill_rope", "prefill_norm")
PARTS = MODEL_INDEPENDENT + quant.INFERENCE_KERNELS


def _check(parts) -> None:
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"first_run: unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")


def compiled_on_disk(parts) -> bool:
    """True when Numba's on-disk cache holds every kernel of ``parts`` (False: the first call of
    one of them compiles). True under ``NUMBA_DISABLE_JIT=1``."""
    _check(parts)
    for part in parts:
        if part == "decode":
            warm = decode.compiled_on_disk()
        elif part == "prefill_norm":
            warm = cached_on_disk(rms_norm.rms_norm_forward_nb)
        elif part == "prefill_silu":
            warm = cached_on_disk(swiglu.swiglu_forward_nb)
        elif part == "prefill_rope":
            warm = cached_on_disk(rope._rope_rows)
        else:
            warm = quant.compiled_on_disk((part,))
        if not warm:
            return False
    return True


def claim(claims: str, part: str) -> bool:
    """True for the one caller that claims ``part`` first among the processes sharing the folder
    ``claims`` (it creates the file ``claims/part``; an existing file means another has it)."""
    try:
        os.close(os.open(os.path.join(claims, part), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def warm_up(parts, claims: str | None = None) -> None:
    """Compile (or load from the disk cache) the kernels of ``parts``, in order, with the
    argument types inference passes. With a folder ``claims``, only the parts this process
    :func:`claim` s first: processes given the same parts share them out as each gets free."""
    _check(parts)
    if jit_disabled():
        return
    for part in parts:
        if claims is not None and not claim(claims, part):
            continue
        if part == "decode":
            decode.warm_up()
        elif part == "prefill_norm":
            rms_norm.rms_norm_forward(np.ones((2, 4), np.float32), np.ones(4, np.float32), 1e-5)   # [N, D], [D]
        elif part == "prefill_silu":
            swiglu.swiglu_forward(np.ones((2, 4), np.float32), np.ones((2, 4), np.float32))         # gate, up [N, D]
        elif part == "prefill_rope":
            heads = np.ones((1, 2, 2, 4), np.float32)                       # [B, H, T, Dh]
            rope.rope_rotate(heads, heads[:, :1], heads[:, :1])              # cos, sin [B, 1, T, D]
        else:
            quant.warm_up((part,))
