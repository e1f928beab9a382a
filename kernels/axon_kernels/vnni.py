"""AVX-512 VNNI as Numba values: 512-bit vector types and the few instructions the int8 prefill uses.

Numba has no SIMD types; its loops are vectorised (or not) by LLVM. The int8 dot product of
`axon_kernels.quant_int8` needs one instruction LLVM never picks on its own, ``vpdpbusd``
(AVX512-VNNI: for each of 16 int32 lanes, the four products of adjacent unsigned-byte x
signed-byte pairs added to the lane). So this file gives Numba three vector types, each held in
one zmm register (a Numba value whose LLVM type is an LLVM vector), and one small
``@intrinsic`` per instruction, written in llvmlite IR. A Numba kernel then reads like
intrinsics C code and LLVM keeps the vectors in registers (they are plain SSA values).

    u8x64   64 unsigned bytes   (4 bytes of each of 16 weight rows)
    i32x16  16 int32 lanes      (one partial integer dot product per weight row)
    f32x16  16 float32 lanes    (one output per weight row)

Only call these from code that runs when :func:`available` is True (the host has AVX512-VNNI);
the kernels that use them keep a NumPy reference for every other machine. Numba's disk cache
keys a kernel on its own file only: after editing an intrinsic here, touch the files of the
kernels that use it (`axon_kernels.quant_int8`) or they keep running the old code.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import models
from numba.extending import intrinsic, register_model

__all__ = ["available", "u8x64", "i32x16", "f32x16", "load_u8x64", "load_interleaved4", "store",
           "low_nibbles", "high_nibbles",
           "i32x16_zero", "dpbusd", "f32x16_zero", "madd_int", "madd"]


def available() -> bool:
    """True when this CPU runs AVX512-VNNI (``vpdpbusd`` on zmm registers), as LLVM sees the host."""
    features = llvm_binding.get_host_cpu_features()
    return bool(features.get("avx512vnni") and features.get("avx512bw") and features.get("avx512f"))


_I8, _I32, _F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_V_U8 = ir.VectorType(_I8, 64)
_V_I32 = ir.VectorType(_I32, 16)
_V_F32 = ir.VectorType(_F32, 16)


class _Vector(types.Type):
    """A Numba type whose values are one LLVM vector (a zmm register)."""

    def __init__(self, name: str, llvm_type):
        self.llvm_type = llvm_type
        super().__init__(name=name)


u8x64 = _Vector("u8x64", _V_U8)
i32x16 = _Vector("i32x16", _V_I32)
f32x16 = _Vector("f32x16", _V_F32)


@register_model(_Vector)
class _VectorModel(models.PrimitiveModel):
    """Data model: the value is the LLVM vector itself."""

    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.llvm_type)


def _pointer(context, builder, array_type, array, index, vector_type):
    """Pointer to element ``index`` of a C-contiguous 1-D array, cast to ``vector_type*``."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), vector_type.as_pointer())


@intrinsic
def load_u8x64(typingctx, arr, index):
    """``arr[index:index + 64]`` (a uint8 array, C-contiguous 1-D) as a u8x64 (``vmovdqu8``)."""
    def codegen(context, builder, sig, args):
        return builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _V_U8), align=1)
    return u8x64(arr, index), codegen


@intrinsic
def load_interleaved4(typingctx, arr, index, stride):
    """Four runs of 16 bytes, ``arr[index + c * stride:][:16]`` for c = 0..3, interleaved into a
    u8x64 whose byte ``4r + c`` is ``arr[index + c * stride + r]`` (4 loads and one ``vpermb``):
    16 rows of 4 consecutive bytes each, from a layout that stores byte c of every row together."""
    def codegen(context, builder, sig, args):
        arr_, index_, stride_ = args
        data = context.make_array(sig.args[0])(context, builder, arr_).data
        v16 = ir.VectorType(_I8, 16)
        runs = [builder.load(builder.bitcast(builder.gep(data, [builder.add(index_, builder.mul(stride_, ir.Constant(stride_.type, c)))]),
                                             v16.as_pointer()), align=1) for c in range(4)]
        ab = builder.shuffle_vector(runs[0], runs[1], ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
        cd = builder.shuffle_vector(runs[2], runs[3], ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
        mask = [c * 16 + r for r in range(16) for c in range(4)]      # byte 4r + c <- run c, byte r
        return builder.shuffle_vector(ab, cd, ir.Constant(ir.VectorType(_I32, 64), mask))
    return u8x64(arr, index, stride), codegen


@intrinsic
def low_nibbles(typingctx, v):
    """Each byte's low 4 bits, ``v & 15`` (``vpandd``)."""
    def codegen(context, builder, sig, args):
        return builder.and_(args[0], ir.Constant(_V_U8, [15] * 64))
    return u8x64(u8x64), codegen


@intrinsic
def high_nibbles(typingctx, v):
    """Each byte's high 4 bits, ``v >> 4`` (``vpsrlw`` + ``vpandd``: x86 has no byte shift)."""
    def codegen(context, builder, sig, args):
        return builder.lshr(args[0], ir.Constant(_V_U8, [4] * 64))
    return u8x64(u8x64), codegen


@intrinsic
def i32x16_zero(typingctx):
    """Sixteen int32 zeros (``vpxord``)."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_V_I32, None)
    return i32x16(), codegen


@intrinsic
def dpbusd(typingctx, acc, w, a, index):
    """``acc + vpdpbusd(w, a[index:index + 4] in every lane)``: lane r gets
    ``sum_c w[4r + c] * a[index + c]`` for c = 0..3 (w unsigned bytes, ``a`` an int8 array whose
    four bytes are broadcast to all 16 lanes: ``vpdpbusd zmm, zmm, m32{1to16}``)."""
    def codegen(context, builder, sig, args):
        acc_, w_, a_, index_ = args
        data = context.make_array(sig.args[2])(context, builder, a_).data
        word = builder.load(builder.bitcast(builder.gep(data, [index_]), _I32.as_pointer()), align=1)
        splat = builder.insert_element(ir.Constant(_V_I32, None), word, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(splat, ir.Constant(_V_I32, None), ir.Constant(_V_I32, [0] * 16))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_I32, [_V_I32] * 3),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [acc_, builder.bitcast(w_, _V_I32), splat])
    return i32x16(i32x16, u8x64, a, index), codegen


@intrinsic
def f32x16_zero(typingctx):
    """Sixteen float32 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_V_F32, None)
    return f32x16(), codegen


def _splat(builder, s):
    """A float32 scalar in all 16 lanes."""
    v = builder.insert_element(ir.Constant(_V_F32, None), s, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V_F32, None), ir.Constant(_V_I32, [0] * 16))


def _fma(builder, a, b, c):
    """``a * b + c`` in one rounding (``vfmadd``)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_F32, [_V_F32] * 3), "llvm.fma.v16f32")
    return builder.call(fn, [a, b, c])


@intrinsic
def madd_int(typingctx, acc, isum, scales, index, s):
    """``acc + float(isum) * (scales[index:index + 16] * s)``: an int32 block sum converted
    (``vcvtdq2ps``), scaled per lane by a float32 array's 16 values times the scalar ``s``
    (``vmulps``) and added (``vfmadd``: one rounding for the last multiply-add)."""
    def codegen(context, builder, sig, args):
        acc_, isum_, scales_, index_, s_ = args
        vs = builder.load(_pointer(context, builder, sig.args[2], scales_, index_, _V_F32), align=4)
        return _fma(builder, builder.sitofp(isum_, _V_F32), builder.fmul(vs, _splat(builder, s_)), acc_)
    return f32x16(f32x16, i32x16, scales, index, types.float32), codegen


@intrinsic
def madd(typingctx, acc, values, index, s):
    """``acc + values[index:index + 16] * s`` (a float32 array's 16 values times the scalar ``s``;
    ``vfmadd`` with a broadcast, one rounding)."""
    def codegen(context, builder, sig, args):
        acc_, values_, index_, s_ = args
        vs = builder.load(_pointer(context, builder, sig.args[1], values_, index_, _V_F32), align=4)
        return _fma(builder, vs, _splat(builder, s_), acc_)
    return f32x16(f32x16, values, index, types.float32), codegen


@intrinsic
def store(typingctx, arr, index, v):
    """``arr[index:index + n] = v`` for a vector of n lanes (u8x64 into a uint8 array, f32x16
    into a float32 array; C-contiguous 1-D; ``vmovdqu8`` / ``vmovups``)."""
    if not isinstance(v, _Vector):
        return None
    def codegen(context, builder, sig, args):
        builder.store(args[2], _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[2].llvm_type), align=1)
        return context.get_dummy_value()
    return types.none(arr, index, v), codegen
