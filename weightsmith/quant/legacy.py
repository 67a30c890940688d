"""ggml's legacy block types (32 weights a block) as numba kernels, each mirroring quantize_row_*_ref in
ggml-quants.c step for step in float32, so the bytes are libggml's.

Every kernel: (x float32 [n_blocks, 32], out uint8 [n_blocks, type_size]) -> (err2, norm2, bad): the float64 sums
of (dequantized - x)^2 (dequantized as ggml's dequantize_row_* does it) and of x^2, and the flat index of the first
NaN or Inf in x (-1 if none; the kernel stops there).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .cfloat import JIT, _bits, _from_bits, c_int, c_roundf, f32, fp16_bits, fp16_value, int8, put_fp16
from .search import make_qkx_quants, make_qx_quants

SIGNATURE = "Tuple((float64, float64, int64))(float32[:, ::1], uint8[:, ::1])"


# The error figure's float64 sums may be added in any order (reassoc: vectorized); nothing else here may.
SUMS = dict(JIT, fastmath={"reassoc"})
# Loops over values known to be finite, whose only float reduction is a max (exact in any order): vectorized.
FINITE = dict(JIT, fastmath={"nnan", "nsz", "reassoc"})


@njit(**SUMS)
def block_norm2(b):
    """sum(b^2) in float64 (no float32 square overflows there): not finite exactly when b holds a NaN or Inf."""
    s = 0.0
    for j in range(b.shape[0]):
        s += np.float64(b[j]) * np.float64(b[j])
    return s


@njit(**SUMS)
def block_err2(back, b):
    """sum((back - b)^2) in float64."""
    s = 0.0
    for j in range(b.shape[0]):
        e = np.float64(back[j]) - np.float64(b[j])
        s += e * e
    return s


@njit(**JIT)
def first_bad(x, i):
    """The flat index of block i's first non-finite value."""
    for j in range(x.shape[1]):
        if not np.isfinite(x[i, j]):
            return i * x.shape[1] + j
    return -1


@njit(**JIT)
def _signed_absmax(b):
    """The value of largest magnitude, sign kept, the first one on ties (`if (amax < fabsf(v))` from 0)."""
    amax = f32(0.0)
    mx = f32(0.0)
    for j in range(32):
        if amax < abs(b[j]):
            amax = abs(b[j])
            mx = b[j]
    return mx


@njit(**JIT)
def _min_max(b):
    lo = f32(3.4028234663852886e38)
    hi = f32(-3.4028234663852886e38)
    for j in range(32):
        if b[j] < lo:
            lo = b[j]
        if b[j] > hi:
            hi = b[j]
    return lo, hi


@njit(**JIT)
def _inverse(d):
    return f32(1.0) / d if d != f32(0.0) else f32(0.0)


@njit(**FINITE)
def _absmax(b):
    m = f32(0.0)
    for j in range(b.shape[0]):
        m = max(m, abs(b[j]))
    return m


@njit(**FINITE)
def _q8_0_normal(b, o, inv, dq, back):
    """The quants of a finite block whose scale d is a normal float: |b * inv| <= 127.5, so roundf's add and the
    conversion to int need no out-of-range care, and the loop vectorizes."""
    for j in range(32):
        v = b[j] * inv
        q = np.int32(v + (f32(0.49999997) if v >= f32(0.0) else f32(-0.49999997)))
        o[2 + j] = q & 0xFF
        back[j] = f32(q) * dq


@njit(SIGNATURE, **JIT)
def q8_0(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        d = _absmax(b) / f32(127.0)
        inv = _inverse(d)
        dq = put_fp16(o, 0, d)
        if d >= f32(1.1754944e-38):
            _q8_0_normal(b, o, inv, dq, back)
        else:  # zero or subnormal d: 1/d may overflow, and C's conversion of inf to int gives INT_MIN
            for j in range(32):
                q = int8(c_roundf(b[j] * inv))
                o[2 + j] = q & 0xFF
                back[j] = f32(q) * dq
        err2 += block_err2(back, b)
    return err2, norm2, -1


# ---- Q4_0, Q4_1, Q5_0, Q5_1 --------------------------------------------------------------------------------------
# A block whose scale d is a normal float (_normal) takes the fast path, the rest (a zero or subnormal d; Q4_1/Q5_1's
# infinite one) the exact scalar one of _nibbles_with_offset / _five_bits (_exact_*): the same bytes and sums either
# way. What the fast path is written around (LLVM's choices, read in the assembly on AVX2):
# - No views in the kernel's loop: x[i] and out[i] each take a reference on their array, an atomic add and subtract
#   a block, which cost more than its arithmetic. The fast path indexes x[i, j] and out[i, k]; _exact_* take their
#   views in a function of their own.
# - Integer reductions: LLVM vectorizes no float min/max reduction written in numba (its select of two floats has
#   no fast-math flags, whatever the function's), while an integer min or max vectorizes, and is exact in any
#   order. The bits of a float order its magnitude; _pos_neg_at, _flip order its value. They are int32 (numba widens
#   int32 arithmetic to int64, its max and min keep the type; _shl32), 8 to a ymm register.
# - A reduction's loop runs to x.shape[1] (32, unknown to LLVM): a loop of a constant 32 is unrolled in full first,
#   and the SLP vectorizer then leaves the reduction scalar; the loop vectorizer takes it whole. The quantizing
#   loops (pairs j, j + 16) run to a constant 16: vectorized, then unrolled, with no count or remainder checks.
# - The kernel calls each loop's function itself: LLVM inlines a function of one vectorized loop, not of two.
# - A block's finiteness comes from its largest bits, and its two float64 sums from one loop (_norm2_err2_at).
# - Q4_1/Q5_1 take their blocks 8 at a time, the scales first (_min_max_scales): a block's two divisions in a row
#   are most of its latency, which the blocks of a group then overlap (slower for Q4_0/Q5_0, which have one).

_NONFINITE = np.int32(0x7F800000)  # inf's bits: a larger magnitude is a NaN
_NONFINITE_LOW = np.int32(-0x7F800001)  # _flip(-inf's bits): a negative NaN's lie below


@njit(**JIT)
def _pos_neg_at(x, i):
    """The largest bits of block i's values as int32 (p: its largest value's if that is +0.0 or more, else negative)
    and as uint32 (q: its most negative value's if a value has its sign bit set, else below 2^31)."""
    p = np.int32(-2147483648)
    q = np.uint32(0)
    for j in range(x.shape[1]):
        b = _bits(x[i, j])
        p = max(p, b)
        q = max(q, np.uint32(b))
    return p, q


@njit(**JIT)
def _signed_absmax_pq(p, q):
    """_signed_absmax from _pos_neg_at's (p, q): (amax's bits, the value, whether a tie leaves it to the first
    index holding amax). +amax and -amax both there: the first one; amax zero: +0.0, C's initial max, whichever
    zeros the block holds (an all -0.0 block too)."""
    mp = p if p >= 0 else np.int32(-1)
    mn = np.int32(np.int64(q) & 0x7FFFFFFF) if np.int32(q) < 0 else np.int32(-1)
    m = max(mp, mn)
    if m == 0:
        return m, f32(0.0), False
    if mp > mn:
        return m, _from_bits(p), False
    if mn > mp:
        return m, _from_bits(np.int32(q)), False
    return m, f32(0.0), True


@njit(**JIT)
def _magnitude(v):
    """The bits of |v| as an int32: ordered as |v| is, for every v but NaN."""
    return np.int32(np.int64(_bits(v)) & 0x7FFFFFFF)


@njit(**JIT)
def _first_magnitude_at(x, i, m):
    """The first index of block i whose value's magnitude has the bits m."""
    n = np.int32(x.shape[1])
    k = n
    for j in range(x.shape[1]):
        k = min(k, np.int32(j) if _magnitude(x[i, j]) == m else n)
    return k


@njit(**JIT)
def _flip(i):
    """A float's bits (int32) to an int32 ordered as the float is (-0.0 just below +0.0, every value but NaN), and
    back: the magnitude bits of a negative value reversed."""
    return np.int32(i ^ ((i >> 31) & 0x7FFFFFFF))


@njit(**JIT)
def _min_max_keys_at(x, i):
    """Block i's least and largest value as _flip orders them."""
    lo = np.int32(2147483647)
    hi = np.int32(-2147483648)
    for j in range(x.shape[1]):
        k = _flip(_bits(x[i, j]))
        lo = min(lo, k)
        hi = max(hi, k)
    return lo, hi


@njit(**JIT)
def _first_zero_at(x, i, v):
    """Block i's first zero (v if none): a zero min or max of C's `v < min` / `v > max` scans, which keep the first
    of equal values (only a zero has two, +0.0 and -0.0)."""
    for j in range(x.shape[1]):
        if x[i, j] == f32(0.0):
            return x[i, j]
    return v


@intrinsic
def _half_bits(typingctx, v):
    """v rounded to IEEE half as LLVM's fptrunc does (to nearest even, overflow to inf: F16C's vcvtps2ph), its bits
    as int32."""
    def codegen(context, builder, sig, args):
        h = builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
        return builder.zext(h, ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _half_value(typingctx, h):
    """The float32 value of IEEE half bits h (int32): exact (F16C's vcvtph2ps)."""
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(builder.trunc(args[0], ir.IntType(16)), ir.HalfType()), ir.FloatType())
    return types.float32(types.int32), codegen


def _compiles_f16c() -> bool:
    """Whether numba compiles for a CPU with F16C: then LLVM's half conversions are one instruction each (without
    it, a libgcc call that numba's linker may not find)."""
    from numba.core.registry import cpu_target
    return "+f16c" in cpu_target.target_context.codegen().magic_tuple()[2].split(",")


if _compiles_f16c():
    @njit(**JIT)
    def _put_fp16_at(out, i, k, v):
        """put_fp16(out[i], k, v) in F16C's instructions: the same bits and value (NaN aside: not here)."""
        h = _half_bits(v)
        out[i, k] = h & 0xFF
        out[i, k + 1] = h >> 8
        return _half_value(h)
else:
    @njit(**JIT)
    def _put_fp16_at(out, i, k, v):
        """put_fp16(out[i], k, v)."""
        h = fp16_bits(v)
        out[i, k] = h & 0xFF
        out[i, k + 1] = h >> 8
        return fp16_value(h)


@intrinsic
def _shl32(typingctx, a, b):
    """a << b in int32 (numba's int32 << int32 is int64: Q5's qh would take 4 lanes a register, not 8)."""
    def codegen(context, builder, sig, args):
        return builder.shl(args[0], args[1])
    return types.int32(types.int32, types.int32), codegen


@njit(**JIT)
def _normal(d):
    """Whether the fast path takes a block of scale d: a normal float. Then so is 1/d (|d| <= FLT_MAX / 8), and for
    every x of the (finite) block v = (x - min) * (1/d) + offset lies within a few ulps of [0.5, 16.5] (Q4_0, x * id
    + 8.5), [0.5, 32.5] (Q5_0), [0.5, nmax + 0.5] (Q4_1/Q5_1, nmax 15/31): C's (int)v is a plain truncation, its
    int8_t/uint8_t casts keep it, and MIN(nmax, q) clamps only Q4_0's 16 and Q5_0's 32 (at x = -max)."""
    return f32(1.1754944e-38) <= abs(d) <= f32(3.4028234663852886e38)


@njit(**SUMS)
def _norm2_err2_at(back, x, i):
    """(block_norm2(x[i]), block_err2(back, x[i])) in one loop: LLVM vectorizes each of its sums as it does the
    loop of either alone (4 lanes, 4 accumulators here), so each comes out the same, added in the same order
    (test_quant_bytes checks that it does)."""
    s = 0.0
    t = 0.0
    for j in range(x.shape[1]):
        v = np.float64(x[i, j])
        s += v * v
        e = np.float64(back[j]) - v
        t += e * e
    return s, t


# The fast path's quants: C's MIN(nmax, (int8_t)v) or (uint8_t)v is the int32 of v (see _normal), clamped for
# Q4_0/Q5_0. One function a kernel (small enough for LLVM to inline), a loop over the pairs (j, j + 16) of a byte:
# it stores the bytes and the dequantized values (`back`) from the quants, as dequantize_row_* computes them,
# (q - 8) * d as f32(q) - 8 (exact) times d.


@njit(**JIT)
def _q4_0_normal(x, i, out, inv, dq, back):
    for j in range(16):
        q0 = min(np.int32(15), np.int32(x[i, j] * inv + f32(8.5)))
        q1 = min(np.int32(15), np.int32(x[i, j + 16] * inv + f32(8.5)))
        out[i, 2 + j] = q0 | (q1 << 4)
        back[j] = (f32(q0) - f32(8.0)) * dq
        back[j + 16] = (f32(q1) - f32(8.0)) * dq


@njit(**JIT)
def _q4_1_normal(x, i, out, inv, lo, dq, mq, back):
    for j in range(16):
        q0 = np.int32((x[i, j] - lo) * inv + f32(0.5))
        q1 = np.int32((x[i, j + 16] - lo) * inv + f32(0.5))
        out[i, 4 + j] = q0 | (q1 << 4)
        back[j] = f32(q0) * dq + mq
        back[j + 16] = f32(q1) * dq + mq


@njit(**JIT)
def _q5_0_normal(x, i, out, inv, dq, back):
    """Bit 4 of quant j as bit j of qh (out[i, 2:6]), bits 0..3 packed in pairs at out[i, 6:22]."""
    qh = np.int32(0)
    for j in range(16):
        q0 = min(np.int32(31), np.int32(x[i, j] * inv + f32(16.5)))
        q1 = min(np.int32(31), np.int32(x[i, j + 16] * inv + f32(16.5)))
        out[i, 6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
        qh = np.int32(qh | _shl32(np.int32(q0 >> 4), np.int32(j)) | _shl32(np.int32(q1 >> 4), np.int32(j + 16)))
        back[j] = (f32(q0) - f32(16.0)) * dq
        back[j + 16] = (f32(q1) - f32(16.0)) * dq
    for b in range(4):
        out[i, 2 + b] = (qh >> (8 * b)) & 0xFF


@njit(**JIT)
def _q5_1_normal(x, i, out, inv, lo, dq, mq, back):
    """Q5_0's layout shifted by the 2 bytes of m: qh at out[i, 4:8], bits 0..3 at out[i, 8:24]."""
    qh = np.int32(0)
    for j in range(16):
        q0 = np.int32((x[i, j] - lo) * inv + f32(0.5))
        q1 = np.int32((x[i, j + 16] - lo) * inv + f32(0.5))
        out[i, 8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
        qh = np.int32(qh | _shl32(np.int32(q0 >> 4), np.int32(j)) | _shl32(np.int32(q1 >> 4), np.int32(j + 16)))
        back[j] = f32(q0) * dq + mq
        back[j + 16] = f32(q1) * dq + mq
    for b in range(4):
        out[i, 4 + b] = (qh >> (8 * b)) & 0xFF


@njit(**JIT)
def _nibbles_with_offset(b, o, k, inv, lo, offset):
    """Q4_0/Q4_1's quants: MIN(15, (int8_t)((x - lo) * inv + offset)), the pair packed without masking the low
    nibble, as the C does (only an infinite `inv` can make it exceed 15: cvttss2si's INT_MIN, low byte 0)."""
    for j in range(16):
        q0 = min(15, int8(c_int((b[j] - lo) * inv + offset))) & 0xFF
        q1 = min(15, int8(c_int((b[j + 16] - lo) * inv + offset))) & 0xFF
        o[k + j] = (q0 | (q1 << 4)) & 0xFF


@njit(**JIT)
def _five_bits(b, o, inv, lo, offset, signed):
    """Q5_0/Q5_1's quants: low nibbles packed at o[6:22], bit 4 of value j as bit j of the uint32 at o[2:6].
    Q5_0 takes MIN(31, (int8_t)(...)), Q5_1 (uint8_t)(...)."""
    qh = 0
    for j in range(16):
        q0 = c_int((b[j] - lo) * inv + offset)
        q1 = c_int((b[j + 16] - lo) * inv + offset)
        if signed:
            q0, q1 = min(31, int8(q0)), min(31, int8(q1))
        q0 &= 0xFF
        q1 &= 0xFF
        o[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
        qh |= ((q0 & 0x10) >> 4) << j
        qh |= ((q1 & 0x10) >> 4) << (j + 16)
    for k in range(4):
        o[2 + k] = (qh >> (8 * k)) & 0xFF


@njit(**JIT)
def _five_bit_value(o, j, qh):
    return (o[6 + j % 16] >> (4 * (j // 16)) & 0x0F) | (((qh >> j) & 1) << 4)


@njit(**JIT)
def _exact_q4_0(x, out, i, d, dq, back):
    """Q4_0's block i on the exact path: zero or subnormal d (1/d may overflow, and C's conversion of inf to int
    gives INT_MIN)."""
    b, o = x[i], out[i]
    _nibbles_with_offset(b, o, 2, _inverse(d), f32(0.0), f32(8.5))
    for j in range(16):
        back[j] = f32((o[2 + j] & 0xF) - 8) * dq
        back[j + 16] = f32((o[2 + j] >> 4) - 8) * dq


@njit(**JIT)
def _exact_q4_1(x, out, i, d, lo, dq, mq, back):
    """Q4_1's block i on the exact path: zero, subnormal or infinite d (hi - lo overflowing)."""
    b, o = x[i], out[i]
    _nibbles_with_offset(b, o, 4, _inverse(d), lo, f32(0.5))
    for j in range(16):
        back[j] = f32(o[4 + j] & 0xF) * dq + mq
        back[j + 16] = f32(o[4 + j] >> 4) * dq + mq


@njit(**JIT)
def _exact_q5_0(x, out, i, d, dq, back):
    b, o = x[i], out[i]
    _five_bits(b, o, _inverse(d), f32(0.0), f32(16.5), True)
    qh = o[2] | (o[3] << 8) | (o[4] << 16) | (np.int64(o[5]) << 24)
    for j in range(32):
        back[j] = f32(_five_bit_value(o, j, qh) - 16) * dq


@njit(**JIT)
def _exact_q5_1(x, out, i, d, lo, dq, mq, back):
    # Q5_1's layout is d, m, qh, qs: the same offsets as Q5_0's shifted by the 2 bytes of m
    b, o = x[i], out[i, 2:]
    _five_bits(b, o, _inverse(d), lo, f32(0.5), False)
    qh = o[2] | (o[3] << 8) | (o[4] << 16) | (np.int64(o[5]) << 24)
    for j in range(32):
        back[j] = f32(_five_bit_value(o, j, qh)) * dq + mq


@njit(SIGNATURE, **JIT)
def q4_0(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        p, q = _pos_neg_at(x, i)
        m, mx, tie = _signed_absmax_pq(p, q)
        if m >= _NONFINITE:
            return err2, norm2, first_bad(x, i)
        if tie:
            mx = x[i, _first_magnitude_at(x, i, m)]
        d = mx / f32(-8.0)
        dq = _put_fp16_at(out, i, 0, d)
        if _normal(d):
            _q4_0_normal(x, i, out, f32(1.0) / d, dq, back)
        else:
            _exact_q4_0(x, out, i, d, dq, back)
        n2, e2 = _norm2_err2_at(back, x, i)
        norm2 += n2
        err2 += e2
    return err2, norm2, -1


_GROUP = 8  # Q4_1/Q5_1's blocks a group: the scales of 8 blocks (_min_max_scales), then their quants


@njit(**JIT)
def _min_max_scales(x, out, g, e, nmax, s):
    """Blocks g..e-1 of Q4_1 (nmax 15) or Q5_1 (31): min, d = (max - min) / nmax, their fp16 (written, and read
    back), 1/d, into s[:, i - g] (min, d, dq, mq, 1/d); the first non-finite block stops it: its index, else e.
    A block of both signs has its max and min in _pos_neg_at's p and q; one of a single sign takes _flip's order."""
    for i in range(g, e):
        p, q = _pos_neg_at(x, i)
        if p >= 0 and np.int32(q) < 0:  # both signs: the largest positive, the most negative value
            if p >= _NONFINITE or (np.int64(q) & 0x7FFFFFFF) >= _NONFINITE:
                return i
            lo = _from_bits(np.int32(q))
            hi = _from_bits(p)
        else:
            klo, khi = _min_max_keys_at(x, i)
            if khi >= _NONFINITE or klo <= _NONFINITE_LOW:
                return i
            lo = _from_bits(_flip(klo))
            hi = _from_bits(_flip(khi))
        if lo == f32(0.0):
            lo = _first_zero_at(x, i, lo)
        if hi == f32(0.0):
            hi = _first_zero_at(x, i, hi)
        d = (hi - lo) / nmax
        t = i - g
        s[0, t] = lo
        s[1, t] = d
        s[2, t] = _put_fp16_at(out, i, 0, d)
        s[3, t] = _put_fp16_at(out, i, 2, lo)
        s[4, t] = f32(1.0) / d  # used where _normal(d) only
    return e


@njit(SIGNATURE, **JIT)
def q4_1(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    s = np.empty((5, _GROUP), np.float32)
    err2 = norm2 = 0.0
    for g in range(0, x.shape[0], _GROUP):
        e = min(g + _GROUP, x.shape[0])
        stop = _min_max_scales(x, out, g, e, f32(15.0), s)
        for i in range(g, stop):
            t = i - g
            if _normal(s[1, t]):
                _q4_1_normal(x, i, out, s[4, t], s[0, t], s[2, t], s[3, t], back)
            else:
                _exact_q4_1(x, out, i, s[1, t], s[0, t], s[2, t], s[3, t], back)
            n2, e2 = _norm2_err2_at(back, x, i)
            norm2 += n2
            err2 += e2
        if stop < e:
            return err2, norm2, first_bad(x, stop)
    return err2, norm2, -1


@njit(SIGNATURE, **JIT)
def q5_0(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        p, q = _pos_neg_at(x, i)
        m, mx, tie = _signed_absmax_pq(p, q)
        if m >= _NONFINITE:
            return err2, norm2, first_bad(x, i)
        if tie:
            mx = x[i, _first_magnitude_at(x, i, m)]
        d = mx / f32(-16.0)
        dq = _put_fp16_at(out, i, 0, d)
        if _normal(d):
            _q5_0_normal(x, i, out, f32(1.0) / d, dq, back)
        else:
            _exact_q5_0(x, out, i, d, dq, back)
        n2, e2 = _norm2_err2_at(back, x, i)
        norm2 += n2
        err2 += e2
    return err2, norm2, -1


@njit(SIGNATURE, **JIT)
def q5_1(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    s = np.empty((5, _GROUP), np.float32)
    err2 = norm2 = 0.0
    for g in range(0, x.shape[0], _GROUP):
        e = min(g + _GROUP, x.shape[0])
        stop = _min_max_scales(x, out, g, e, f32(31.0), s)
        for i in range(g, stop):
            t = i - g
            if _normal(s[1, t]):
                _q5_1_normal(x, i, out, s[4, t], s[0, t], s[2, t], s[3, t], back)
            else:
                _exact_q5_1(x, out, i, s[1, t], s[0, t], s[2, t], s[3, t], back)
            n2, e2 = _norm2_err2_at(back, x, i)
            norm2 += n2
            err2 += e2
        if stop < e:
            return err2, norm2, first_bad(x, stop)
    return err2, norm2, -1


# ---- With an importance matrix: quantize_row_q{4,5}_{0,1}_impl ------------------------------------------------
# Whole rows: each value's weight is qw[j] * sqrtf(sigma2 + x[j]^2), sigma2 the mean square of the *row* (float32,
# summed left to right), so a block's bytes depend on every other value of its row. Q4_0/Q5_0 search a signed
# scale (make_qx_quants), Q4_1/Q5_1 a scale and min (make_qkx3_quants, 37 candidates), unlike the _ref
# quantizers' single absmax / min-max guess.

SIGNATURE_W = "Tuple((float64, float64, int64))(float32[:, ::1], float32[::1], uint8[:, ::1])"


@njit(**JIT)
def row_weights(row, qw, weight, ib, sigma2):
    """Block ib's weights, as quantize_row_*_impl compute them."""
    for j in range(32):
        v = row[32 * ib + j]
        weight[j] = qw[32 * ib + j] * np.sqrt(sigma2 + v * v)  # sqrtf: correctly rounded in both


@njit(**JIT)
def row_sigma2(row):
    """sum_x2 / n_per_row in float32, the sum left to right."""
    s = f32(0.0)
    for j in range(row.shape[0]):
        s += row[j] * row[j]
    return s / f32(row.shape[0])


@njit(**JIT)
def _pack_nibbles(L, o, k):
    for j in range(16):
        o[k + j] = (L[j] | (L[j + 16] << 4)) & 0xFF


@njit(**JIT)
def _pack_five(L, o, k):
    """Quants 0..31 as Q5's qh (uint32 at o[k:k+4], bit j = bit 4 of quant j) and qs (low nibbles at o[k+4:])."""
    qh = 0
    for j in range(16):
        o[k + 4 + j] = (L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4)
        qh |= ((L[j] & 0x10) >> 4) << j
        qh |= ((L[j + 16] & 0x10) >> 4) << (j + 16)
    for b in range(4):
        o[k + b] = (qh >> (8 * b)) & 0xFF


Q4_0, Q4_1, Q5_0, Q5_1 = range(4)


@njit(**JIT)
def _weighted(x, qw, out, kind, sigma2s):
    """sigma2s: each row's sigma2 (GPTQ's blocks: x is one block of each row, sigma2 that of the whole row); empty:
    computed from the rows of x."""
    n = x.shape[1]
    ts = out.shape[1] // (n // 32)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.int64)
    Laux = np.empty(32, np.int64)
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for r in range(x.shape[0]):
        row = x[r]
        n2 = block_norm2(row)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, r)
        norm2 += n2
        sigma2 = row_sigma2(row) if sigma2s.shape[0] == 0 else sigma2s[r]
        for ib in range(n // 32):
            xb = row[32 * ib:32 * ib + 32]
            o = out[r, ts * ib:ts * ib + ts]
            row_weights(row, qw, weight, ib, sigma2)
            if kind == Q4_0 or kind == Q5_0:
                nmax = 8 if kind == Q4_0 else 16
                dq = put_fp16(o, 0, make_qx_quants(xb, weight, L, nmax))
                if kind == Q4_0:
                    _pack_nibbles(L, o, 2)
                else:
                    _pack_five(L, o, 2)
                for j in range(32):
                    back[j] = f32(L[j] - nmax) * dq
            else:
                nmax = 15 if kind == Q4_1 else 31
                d, the_min = make_qkx_quants(xb, weight, L, Laux, nmax, f32(-0.9), f32(0.05), 36, False)
                dq = put_fp16(o, 0, d)
                mq = put_fp16(o, 2, -the_min)
                if kind == Q4_1:
                    _pack_nibbles(L, o, 4)
                else:
                    _pack_five(L, o, 4)
                for j in range(32):
                    back[j] = f32(L[j]) * dq + mq
            err2 += block_err2(back, xb)
    return err2, norm2, -1


_NO_SIGMA2 = np.empty(0, np.float32)


@njit("Tuple((float64, float64, int64))(float32[:, ::1], float32[::1], float32[::1], uint8[:, ::1], int64)", **JIT)
def weighted_rows(x, qw, sigma2, out, kind):
    """quantize_row_*_impl (kind Q4_0, Q4_1, Q5_0, Q5_1) on x [rows, n] with each row's sigma2 given."""
    return _weighted(x, qw, out, kind, sigma2)


@njit(SIGNATURE_W, **JIT)
def q4_0_w(x, qw, out):
    return _weighted(x, qw, out, Q4_0, _NO_SIGMA2)


@njit(SIGNATURE_W, **JIT)
def q4_1_w(x, qw, out):
    return _weighted(x, qw, out, Q4_1, _NO_SIGMA2)


@njit(SIGNATURE_W, **JIT)
def q5_0_w(x, qw, out):
    return _weighted(x, qw, out, Q5_0, _NO_SIGMA2)


@njit(SIGNATURE_W, **JIT)
def q5_1_w(x, qw, out):
    return _weighted(x, qw, out, Q5_1, _NO_SIGMA2)
