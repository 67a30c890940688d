"""compressed-tensors' round-to-nearest quantization (compressed.quantize) as a numba kernel over rows, so that a
conversion quantizes a piece of rows at a time without torch: the same float operations as torch performs them on
the CPU, giving the same bytes.

torch computes a bfloat16 / float16 op in float32 and rounds the result to nearest even; for the divisions here
that is the correctly rounded 16-bit quotient (float32's 24 bits are at least twice 8 or 11 plus 2), so each step
below is a float32 op followed by a rounding to the scale's dtype (`dt`). Per group of g values of a row:
    amax = max |x|, scale = rnd(amax / qrange) (eps(dt) where it is 0),
    int:   q = round_half_even(clamp(rnd(x / scale), qmin, qmax))
    fp8:   q = e4m3(clamp(rnd(x / scale) + 0, -448, 448))   (+0 turns -0.0 into +0.0, as compressed-tensors does)
with x first rounded to dt (compressed.quantize's w.to(dt); exact when the source has that dtype).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, _bits, _from_bits, f32, nearest_int
from .legacy import block_err2, block_norm2, first_bad

# the scale's dtype, as the kernel is told it
F32, BF16, F16 = 0, 1, 2
DT = {"F32": F32, "BF16": BF16, "F16": F16}
# torch.finfo(dt).eps: the scale of an all-zero group
EPS = {F32: 2.0 ** -23, BF16: 2.0 ** -7, F16: 2.0 ** -10}
# how the values are stored: compressed-tensors' pack-quantized (q - qmin, 4 or 8 bits, low bits first),
# int-quantized (int8 two's complement), float-quantized (float8 e4m3fn bits)
PACKED, INT8, FP8 = 0, 1, 2
FLT_MAX = f32(3.4028234663852886e38)
# the one float reduction outside the error figure's sums is a max of finite values (exact in any order): vectorized
MAX = dict(JIT, fastmath={"nnan", "reassoc"})


@njit(**JIT)
def rnd(v, dt):
    """float32 v rounded to dt (nearest even; beyond float16's range, inf), as float32. Branch-free (selects), so
    loops over it vectorize: bf16 and float16's normal range keep the top mantissa bits, rounded; float16's
    subnormals are multiples of 2^-24, which adding and taking away 0.5 (whose ulp in float32 is 2^-24) rounds to."""
    w = np.int64(_bits(v)) & 0xFFFFFFFF
    if dt == BF16:
        return _from_bits(np.int32(((w + 0x7FFF + ((w >> 16) & 1)) & 0xFFFF0000)))
    if dt == F16:
        a = abs(v)
        aw = w & 0x7FFFFFFF
        r = _from_bits(np.int32((aw + 0xFFF + ((aw >> 13) & 1)) & 0x7FFFE000))
        r = r if a >= f32(2.0 ** -14) else (a + f32(0.5)) - f32(0.5)
        r = r if r <= f32(65504.0) else f32(np.inf)
        return -r if w & 0x80000000 else r
    return v


@njit(**JIT)
def fp8(v):
    """float32 v (|v| <= 448) rounded to float8 e4m3fn, to nearest even, as c10's fp8e4m3fn_from_fp32_value
    rounds it: (its bits, its value as float32). The sign is kept (a tiny negative gives -0.0, 0x80). Branch-free:
    from 2^-6 up, float32's top 3 mantissa bits, rounded; below, multiples of 2^-9, which adding and taking away
    2^14 (whose ulp in float32 is 2^-9) rounds to."""
    w = np.int64(_bits(v)) & 0xFFFFFFFF
    a = abs(v)
    aw = w & 0x7FFFFFFF
    rn = _from_bits(np.int32((aw + 0x7FFFF + ((aw >> 20) & 1)) & 0x7FF00000))
    rs = (a + f32(16384.0)) - f32(16384.0)
    normal = a >= f32(2.0 ** -6)
    r = rn if normal else rs
    code = ((np.int64(_bits(rn)) >> 20) - (120 << 3)) if normal else np.int64(rs * f32(512.0))  # bias 127 -> 7
    neg = w >> 31
    return code | (neg << 7), -r if neg else r


@njit(**MAX)
def _absmax(v):
    m = f32(0.0)
    for j in range(v.shape[0]):
        m = max(m, abs(v[j]))
    return m


@njit(**JIT)
def _round_into(x, v, dt):
    for j in range(x.shape[0]):
        v[j] = rnd(x[j], dt)


@njit(**JIT)
def _int_codes(v, s, dt, qmin, qmax, codes, back):
    """q = round_half_even(clamp(rnd(v / s), qmin, qmax)) and the value it dequantizes to, q * s."""
    for j in range(v.shape[0]):
        q = nearest_int(min(max(rnd(v[j] / s, dt), qmin), qmax))
        codes[j] = q
        back[j] = f32(q) * s


@njit(**JIT)
def _fp8_codes(v, s, dt, codes, back):
    """e4m3(clamp(rnd(v / s) + 0, -448, 448)) and its value times s."""
    for j in range(v.shape[0]):
        b, r = fp8(min(max(rnd(v[j] / s, dt) + f32(0.0), f32(-448.0)), f32(448.0)))
        codes[j] = b
        back[j] = r * s


@njit(**JIT)
def _store(codes, offset, bits, o):
    if bits == 4:  # two per byte, the even column in the low nibble
        for j in range(o.shape[0]):
            o[j] = (codes[2 * j] + offset) | ((codes[2 * j + 1] + offset) << 4)
    else:
        for j in range(o.shape[0]):
            o[j] = (codes[j] + offset) & 0xFF


@njit(**JIT)
def quantize_rows(x, g, dt, exact, bits, store, qmin, qmax, eps, shrink, out, scale):
    """x float32 [rows, n] in groups of g columns -> out uint8 [rows, n * bits / 8] (store: PACKED, INT8, FP8) and
    scale float32 [rows, n / g] (dt values); exact: x's values are dt's already (the source's dtype); qmin, qmax,
    eps (an all-zero group's scale): float32; shrink: the mse observer's candidates (mse_scale, every column
    weighted 1), or empty for min-max. Returns the float64 sums |dequantized - x|^2 and |x|^2, and the flat
    index of the first NaN or Inf (-1 if none; the kernel stops there)."""
    rows, n = x.shape
    m = shrink.shape[0]
    c, inv, err = np.empty(m, np.float32), np.empty(m, np.float32), np.empty(m, np.float32)
    ones = np.ones(g, np.float32)
    qrange = (qmax - qmin) / f32(2.0)
    offset = -nearest_int(qmin) if store == PACKED else 0  # pack-quantized stores q - qmin
    v = np.empty(n, np.float32)       # a row in dt
    codes = np.empty(n, np.int32)     # its integers (fp8: bits)
    back = np.empty(n, np.float32)    # and what they dequantize to
    err2 = norm2 = 0.0
    for i in range(rows):
        xi = x[i]
        n2 = block_norm2(xi)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        if not exact:
            _round_into(xi, v, dt)
        vi = xi if exact else v
        for k in range(n // g):
            seg = vi[k * g:(k + 1) * g]
            amax = _absmax(seg)
            if amax > FLT_MAX:  # a float32 value beyond float16's range
                return err2, norm2, i * n + k * g + np.argmax(np.abs(seg))
            base = amax / qrange
            s = rnd(base, dt)
            if s == f32(0.0):
                s = eps
            elif m > 0:
                s = mse_scale(seg, ones, base, dt, qmin, qmax, shrink, c, inv, err)
            scale[i, k] = s
            if store == FP8:
                _fp8_codes(seg, s, dt, codes[k * g:(k + 1) * g], back[k * g:(k + 1) * g])
            else:
                _int_codes(seg, s, dt, qmin, qmax, codes[k * g:(k + 1) * g], back[k * g:(k + 1) * g])
        err2 += block_err2(back, xi)
        _store(codes, offset, bits, out[i])
    return err2, norm2, -1


@njit(**JIT)
def mse_scale(seg, wk, base, dt, qmin, qmax, shrink, c, inv, err):
    """The mse observer's scale of one group seg (float32, dt values; base = amax / qrange, rnd(base) > 0): among
    rnd(p * base) for p in shrink (shrink[0] = 1: the min-max scale, kept on a tie), the one whose integers lose
    least, sum_j wk[j] (seg_j - q_j s)^2 with q_j = clamp(round(seg_j / s)). wk: each column's weight (GPTQ:
    diag(H), the mean square of its input; else 1). c, inv, err: scratch of len(shrink). The candidates run in
    SIMD lanes, each its own sum in column order: no reduction is reordered, so every instruction set picks the
    same scale. seg_j / s is taken as seg_j * (1 / s) here: the search's own figure."""
    m = shrink.shape[0]
    for t in range(m):
        s = rnd(base * shrink[t], dt)
        c[t] = s if s > f32(0.0) else rnd(base, dt)  # a candidate that underflows: the min-max one again
        inv[t] = f32(1.0) / c[t]
        err[t] = f32(0.0)
    for j in range(seg.shape[0]):
        xj = seg[j]
        wj = wk[j]
        for t in range(m):
            d = xj - min(max(np.rint(xj * inv[t]), qmin), qmax) * c[t]
            err[t] += wj * (d * d)
    best = 0
    for t in range(1, m):
        if err[t] < err[best]:
            best = t
    return c[best]


@njit(**JIT)
def mse_scales(x, imp, g, dt, qmin, qmax, eps, shrink, scale):
    """mse_scale of each group of g columns of x float32 [rows, n], column weights imp [n] -> scale float32
    [rows, n / g] (dt values), x first rounded to dt as the min-max observer reads it."""
    rows, n = x.shape
    qrange = (qmax - qmin) / f32(2.0)
    m = shrink.shape[0]
    c, inv, err = np.empty(m, np.float32), np.empty(m, np.float32), np.empty(m, np.float32)
    v = np.empty(n, np.float32)
    for i in range(rows):
        _round_into(x[i], v, dt)
        for k in range(n // g):
            seg = v[k * g:(k + 1) * g]
            base = _absmax(seg) / qrange
            scale[i, k] = eps if rnd(base, dt) == f32(0.0) else mse_scale(
                seg, imp[k * g:(k + 1) * g], base, dt, qmin, qmax, shrink, c, inv, err)
