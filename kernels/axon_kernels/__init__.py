"""Numba kernels for axon, each `name` beside its pure-NumPy reference `name_ref`.

The reference is the definition; the Numba version must agree with it (tests/kernels check
both, also under NUMBA_DISABLE_JIT=1, when every public name runs its reference). One module
per family: matmul, attention (flash, query-blocked BLAS, the one visibility rule), scan (Mamba's selective scan), ternary (BitNet b1.58),
quant (GGUF blocks). `kernels.testing` holds hypothesis strategies and `check_kernel` for
testing any kernel against its reference. See docs/kernels.md.
"""

from axon_kernels._jit import default_threads
from axon_kernels.malloc import keep_freed_memory
from axon_kernels.attention import (
    FlashAttentionConfig,
    blas_attention,
    blas_attention_ref,
    flash_attention,
    flash_attention_backward,
    flash_attention_backward_ref,
    flash_attention_ref,
    visible_mask,
)
from axon_kernels.matmul import matmul, matmul_ref
from axon_kernels.scan import (
    selective_scan,
    selective_scan_backward,
    selective_scan_backward_ref,
    selective_scan_ref,
    selective_scan_step,
    selective_scan_step_ref,
)
from axon_kernels.ternary import (
    quantize_activations,
    ternary_codes,
    ternary_matmul,
    ternary_matmul_ref,
    ternary_pack,
    ternary_quantize,
    ternary_quantize_ref,
    ternary_unpack,
)

__all__ = [
    "FlashAttentionConfig",
    "blas_attention",
    "blas_attention_ref",
    "visible_mask",
    "flash_attention",
    "flash_attention_ref",
    "flash_attention_backward",
    "flash_attention_backward_ref",
    "matmul",
    "matmul_ref",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_backward",
    "selective_scan_backward_ref",
    "selective_scan_step",
    "selective_scan_step_ref",
    "quantize_activations",
    "ternary_codes",
    "ternary_matmul",
    "ternary_matmul_ref",
    "ternary_pack",
    "ternary_quantize",
    "ternary_quantize_ref",
    "ternary_unpack",
]

from axon_kernels.quant import QuantMatrix, dequantize_ref, quant_matmul, quant_matmul_ref, quant_matvec, quant_matvec_ref, quant_rows, quant_rows_ref  # noqa: E402,F401

keep_freed_memory()  # a step reuses the pages the last one freed (axon_kernels/malloc.py)
default_threads()  # OpenBLAS on one thread, products split by blas.gemm (docs/performance.md "Threads")
