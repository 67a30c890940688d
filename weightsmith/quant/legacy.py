"""ggml's legacy block types (32 weights a block) as numba kernels, each mirroring quantize_row_*_ref in
ggml-quants.c step for step in float32, so the bytes are libggml's.

Every kernel: (x float32 [n_blocks, 32], out uint8 [n_blocks, type_size]) -> (err2, norm2, bad): the float64 sums
of (dequantized - x)^2 (dequantized as ggml's dequantize_row_* does it) and of x^2, and the flat index of the first
NaN or Inf in x (-1 if none; the kernel stops there).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, c_int, c_roundf, f32, int8, put_fp16
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


@njit(**JIT)
def _nibbles_with_offset(b, o, k, inv, lo, offset):
    """Q4_0/Q4_1's quants: MIN(15, (int8_t)((x - lo) * inv + offset)), the pair packed without masking the low
    nibble, as the C does (only an infinite `inv` can make it exceed 15: cvttss2si's INT_MIN, low byte 0)."""
    for j in range(16):
        q0 = min(15, int8(c_int((b[j] - lo) * inv + offset))) & 0xFF
        q1 = min(15, int8(c_int((b[j + 16] - lo) * inv + offset))) & 0xFF
        o[k + j] = (q0 | (q1 << 4)) & 0xFF


@njit(SIGNATURE, **JIT)
def q4_0(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        d = _signed_absmax(b) / f32(-8.0)
        dq = put_fp16(o, 0, d)
        _nibbles_with_offset(b, o, 2, _inverse(d), f32(0.0), f32(8.5))
        for j in range(16):
            back[j] = f32((o[2 + j] & 0xF) - 8) * dq
            back[j + 16] = f32((o[2 + j] >> 4) - 8) * dq
        err2 += block_err2(back, b)
    return err2, norm2, -1


@njit(SIGNATURE, **JIT)
def q4_1(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        lo, hi = _min_max(b)
        d = (hi - lo) / f32(15.0)
        dq = put_fp16(o, 0, d)
        mq = put_fp16(o, 2, lo)
        _nibbles_with_offset(b, o, 4, _inverse(d), lo, f32(0.5))
        for j in range(16):
            back[j] = f32(o[4 + j] & 0xF) * dq + mq
            back[j + 16] = f32(o[4 + j] >> 4) * dq + mq
        err2 += block_err2(back, b)
    return err2, norm2, -1


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


@njit(SIGNATURE, **JIT)
def q5_0(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        d = _signed_absmax(b) / f32(-16.0)
        dq = put_fp16(o, 0, d)
        _five_bits(b, o, _inverse(d), f32(0.0), f32(16.5), True)
        qh = o[2] | (o[3] << 8) | (o[4] << 16) | (np.int64(o[5]) << 24)
        for j in range(32):
            back[j] = f32(_five_bit_value(o, j, qh) - 16) * dq
        err2 += block_err2(back, b)
    return err2, norm2, -1


@njit(SIGNATURE, **JIT)
def q5_1(x, out):
    back = np.empty(32, np.float32)  # the block's dequantized values
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        lo, hi = _min_max(b)
        d = (hi - lo) / f32(31.0)
        dq = put_fp16(o, 0, d)
        mq = put_fp16(o, 2, lo)
        # Q5_1's layout is d, m, qh, qs: the same offsets as Q5_0's shifted by the 2 bytes of m
        _five_bits(b, o[2:], _inverse(d), lo, f32(0.5), False)
        qh = o[4] | (o[5] << 8) | (o[6] << 16) | (np.int64(o[7]) << 24)
        for j in range(32):
            back[j] = f32(_five_bit_value(o[2:], j, qh)) * dq + mq
        err2 += block_err2(back, b)
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
