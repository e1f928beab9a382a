"""AVX-512F float vectors as Numba values: the few instructions of the few-token quantised matmul.

`axon_kernels.vnni` gives Numba 512-bit vector types whose values LLVM keeps in zmm registers
(plain SSA values). This file adds what a float kernel needs on top of them -- load a float32
vector, widen 16 quantised bytes to 16 int32 / float32 lanes, split nibbles, multiply-add -- so
that a kernel can hold many accumulators in registers across a loop, which Numba's own loops
over arrays do not achieve (LLVM keeps such partial sums in memory or leaves the loop scalar).
Used by `axon_kernels.quant`'s few-token kernel (`_matmul_avx512`).

Only call these from code that runs when :func:`available` is True (the host has AVX-512F).
Numba's disk cache keys a kernel on its own file only: after editing an intrinsic here, touch
`axon_kernels/quant.py` or its kernels keep running the old code.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba.extending import intrinsic

from axon_kernels.vnni import _fma, _pointer, _splat, f32x16, i32x16

__all__ = ["available", "load_f32x16", "load_u8_i32x16", "load_i8_f32x16", "nibble_low_f32", "nibble_high_f32",
           "fma", "fma_bcast"]


def available() -> bool:
    """True when this CPU runs AVX-512F (16 float32 lanes per zmm register), as LLVM sees the host."""
    return bool(llvm_binding.get_host_cpu_features().get("avx512f"))


_I8, _I32, _F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_V_I8 = ir.VectorType(_I8, 16)
_V_I32 = ir.VectorType(_I32, 16)
_V_F32 = ir.VectorType(_F32, 16)


@intrinsic
def load_f32x16(typingctx, arr, index):
    """``arr[index:index + 16]`` (a float32 array, C-contiguous 1-D) as an f32x16 (``vmovups``)."""
    def codegen(context, builder, sig, args):
        return builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _V_F32), align=4)
    return f32x16(arr, index), codegen


@intrinsic
def load_u8_i32x16(typingctx, arr, index):
    """``arr[index:index + 16]`` (a uint8 array, C-contiguous 1-D) zero-extended to 16 int32 lanes
    (``vpmovzxbd``)."""
    def codegen(context, builder, sig, args):
        v = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _V_I8), align=1)
        return builder.zext(v, _V_I32)
    return i32x16(arr, index), codegen


@intrinsic
def load_i8_f32x16(typingctx, arr, index):
    """``arr[index:index + 16]`` (an int8 array, C-contiguous 1-D) as 16 float32 lanes, exact
    (``vpmovsxbd`` + ``vcvtdq2ps``)."""
    def codegen(context, builder, sig, args):
        v = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _V_I8), align=1)
        return builder.sitofp(builder.sext(v, _V_I32), _V_F32)
    return f32x16(arr, index), codegen


@intrinsic
def nibble_low_f32(typingctx, v):
    """Each int32 lane's low 4 bits as a float32, ``float(v & 15)`` (``vpandd`` + ``vcvtdq2ps``)."""
    def codegen(context, builder, sig, args):
        return builder.sitofp(builder.and_(args[0], ir.Constant(_V_I32, [15] * 16)), _V_F32)
    return f32x16(i32x16), codegen


@intrinsic
def nibble_high_f32(typingctx, v):
    """Bits 4..7 of each int32 lane (a zero-extended byte) as a float32, ``float(v >> 4)``
    (``vpsrld`` + ``vcvtdq2ps``)."""
    def codegen(context, builder, sig, args):
        return builder.sitofp(builder.lshr(args[0], ir.Constant(_V_I32, [4] * 16)), _V_F32)
    return f32x16(i32x16), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` lane by lane in one rounding (three f32x16; ``vfmadd``)."""
    def codegen(context, builder, sig, args):
        return _fma(builder, *args)
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def fma_bcast(typingctx, acc, w, arr, index):
    """``acc + w * arr[index]``: one float32 of a C-contiguous 1-D array broadcast to all lanes,
    one rounding (``vfmadd231ps zmm, zmm, m32{1to16}``; no negative-index wraparound, unlike
    Numba's ``arr[index]``, whose extra address arithmetic kept LLVM from folding the load)."""
    def codegen(context, builder, sig, args):
        acc_, w_, arr_, index_ = args
        data = context.make_array(sig.args[2])(context, builder, arr_).data
        return _fma(builder, w_, _splat(builder, builder.load(builder.gep(data, [index_]), align=4)), acc_)
    return f32x16(f32x16, f32x16, arr, index), codegen
