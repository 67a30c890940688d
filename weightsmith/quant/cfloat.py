"""C's float conversions as ggml compiles them on x86, for the numba kernels (legacy.py, kquants.py).

Every float here is float32: numba promotes float32 op Python-float (and op int64) to float64, so constants are
np.float32 and integers are converted with f32() before they meet a float. No fastmath: the kernels must do the
same IEEE operations, in the same order, without FMA contraction, as libggml's reference C.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _cacheable() -> bool:
    """Whether numba has somewhere to cache compiled kernels: __pycache__ here, else the user's cache directory
    (or NUMBA_CACHE_DIR). Without one, cache=True fails at decoration; then kernels compile in every process."""
    try:
        njit(cache=True)(_cacheable)
        return True
    except RuntimeError:
        return False


JIT = dict(nogil=True, cache=_cacheable(), error_model="numpy")  # "numpy": x/0 is inf or NaN as in C, not raising
f32 = np.float32
INT_MIN = -(1 << 31)


@intrinsic
def _bits(typingctx, x):
    """The bits of a float32 as int32."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _from_bits(typingctx, i):
    """The float32 whose bits are the int32 i."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(**JIT)
def nearest_int(v):
    """ggml's nearest_int: the low mantissa bits of v + 1.5*2^23. Half to even for |v| < 2^22; beyond that (and
    for NaN or inf, which ggml's scale searches do meet) the same garbage as the C, bit for bit."""
    return (np.int64(_bits(v + f32(12582912.0))) & 0x007FFFFF) - 0x00400000


@njit(**JIT)
def c_int(v):
    """(int)v as x86's cvttss2si computes it: truncation toward zero, INT_MIN when out of range or NaN."""
    if v >= f32(-2147483648.0) and v < f32(2147483648.0):
        return np.int64(v)
    return INT_MIN


@njit(**JIT)
def c_roundf(v):
    """(int)roundf(v): halves away from zero. v + copysign(0.49999997f, v) rounded once to float32 carries exactly
    the fractions >= 0.5 into the next integer (an exact .5 lands halfway and rounds to the even, whole one); from
    2^23 up every float is an integer and the add gives v back."""
    return c_int(v + (f32(0.49999997) if v >= f32(0.0) else f32(-0.49999997)))


@njit(**JIT)
def int8(i):
    """An int's low byte, read as int8 (C's conversion to int8_t)."""
    return ((i & 0xFF) ^ 0x80) - 0x80


@njit(**JIT)
def fp16_bits(v):
    """float32 to IEEE half bits, as x86's F16C (and torch) converts: round to nearest even, overflow to inf, a NaN
    keeps its sign and the top of its payload, quietened (ggml's scalar GGML_FP32_TO_FP16 writes 0x7E00 there; its
    quantizers, like ours, never meet a NaN: they refuse the tensor). Branch-free, so loops over it vectorize:
    |v| is scaled so that adding 2^(e-13) (e its exponent, at least half's smallest) leaves exactly half's 10
    mantissa bits rounded by the FPU (maratyszcza/FP16's fp16_ieee_from_fp32_value)."""
    base = (abs(v) * f32(2.0 ** 112)) * f32(2.0 ** -110)
    w = np.int64(_bits(v)) & 0xFFFFFFFF
    shl1 = (w + w) & 0xFFFFFFFF
    bias = max(shl1 & 0xFF000000, 0x71000000)
    bits = np.int64(_bits(_from_bits(np.int32((bias >> 1) + 0x07800000)) + base))
    finite = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF)
    nan = 0x7E00 | ((w & 0x7FFFFF) >> 13)
    return ((w >> 16) & 0x8000) | (nan if shl1 > 0xFF000000 else finite)


@njit(**JIT)
def fp16_value(h):
    """GGML_FP16_TO_FP32 of uint16 bits h: exact; a NaN comes back quietened, as F16C's vcvtph2ps (and torch)
    return it."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = f32(m) * f32(2.0 ** -24)
        return -v if h & 0x8000 else v
    if e == 31:
        bits = ((h & 0x8000) << 16) | 0x7F800000 | (m << 13) | (0x400000 if m else 0)
    else:
        bits = ((h & 0x8000) << 16) | ((e + 112) << 23) | (m << 13)
    return _from_bits(np.int32(bits))


@njit(**JIT)
def put_fp16(out, k, v):
    """fp16 of v at out[k], out[k+1] (little-endian); returns the float32 it reads back as."""
    h = fp16_bits(v)
    out[k] = h & 0xFF
    out[k + 1] = h >> 8
    return fp16_value(h)


@njit("void(uint16[::1], float32[::1], boolean)", **JIT)
def widen(src, dst, bf16):
    """16-bit floats (uint16 bits: bfloat16 when bf16, else IEEE half) to float32, exactly."""
    for i in range(src.shape[0]):
        h = np.int64(src[i])
        dst[i] = _from_bits(np.int32(h << 16)) if bf16 else fp16_value(h)



@njit("void(uint16[::1], uint16[::1])", **JIT)
def bf16_to_fp16(src, dst):
    """bfloat16 bits to IEEE half bits in one pass (the float32 between them is exact)."""
    for i in range(src.shape[0]):
        dst[i] = fp16_bits(_from_bits(np.int32(np.int64(src[i]) << 16)))


@njit("void(float32[::1], uint16[::1])", **JIT)
def fp16_from_f32(src, dst):
    for i in range(src.shape[0]):
        dst[i] = fp16_bits(src[i])


@njit("void(float32[::1], uint16[::1])", **JIT)
def bf16_from_f32(src, dst):
    """float32 to bfloat16 bits: to nearest even; a NaN keeps its sign and payload's top, quietened (gguf-py's)."""
    for i in range(src.shape[0]):
        w = np.int64(_bits(src[i])) & 0xFFFFFFFF
        dst[i] = ((w >> 16) | 0x40) if (w & 0x7FFFFFFF) > 0x7F800000 else (w + 0x7FFF + ((w >> 16) & 1)) >> 16
