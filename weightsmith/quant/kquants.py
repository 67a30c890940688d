"""ggml's k-quants (Q4_K, Q5_K, Q6_K: super-blocks of 256) as numba kernels, mirroring make_qkx2_quants +
quantize_row_q{4,5}_K_ref and make_qx_quants (rmse_type 1) + quantize_row_q6_K_ref in float32, sums accumulated
left to right as the C does (float addition is not associative), so the bytes are libggml's.

Kernels have legacy.py's contract: (x float32 [n_blocks, 256], out uint8 [n_blocks, type_size]) -> (err2, norm2,
first bad index or -1).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, f32, fp16_value, int8, nearest_int, put_fp16
from .legacy import SIGNATURE, block_err2, block_norm2, first_bad

GROUP_MAX_EPS = f32(1e-15)


# ---- Q4_K / Q5_K: 8 groups of 32, unsigned with a min ---------------------------------------------------------

@njit(**JIT)
def _make_qkx2_quants(x, w, L, Laux, nmax, rmin, rdelta, nstep):
    """Least-squares scale and min for one group (x, weights w) over nstep+1 candidate scales; L gets the quants.
    Returns (scale, -min)."""
    n = x.shape[0]
    lo = x[0]
    hi = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < lo:
            lo = x[i]
        if x[i] > hi:
            hi = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if lo > f32(0.0):
        lo = f32(0.0)
    if hi == lo:
        L[:] = 0
        return f32(0.0), -lo
    fmax = f32(nmax)
    iscale = fmax / (hi - lo)
    scale = f32(1.0) / iscale
    best = f32(0.0)
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - lo))))
        diff = scale * f32(L[i]) + lo - x[i]
        best += w[i] * (diff * diff)
    for step in range(nstep + 1):
        # `lo` is the best min so far: ggml updates it when a candidate wins, and later candidates start from it
        iscale = (rmin + rdelta * f32(step) + fmax) / (hi - lo)
        sum_l = sum_l2 = sum_xl = f32(0.0)
        for i in range(n):
            li = max(0, min(nmax, nearest_int(iscale * (x[i] - lo))))
            Laux[i] = li
            fl = f32(li)
            sum_l += w[i] * fl
            sum_l2 += w[i] * fl * fl
            sum_xl += w[i] * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > f32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > f32(0.0):
                this_min = f32(0.0)
                this_scale = sum_xl / sum_l2
            cur = f32(0.0)
            for i in range(n):
                diff = this_scale * f32(Laux[i]) + this_min - x[i]
                cur += w[i] * (diff * diff)
            if cur < best:
                L[:] = Laux
                best = cur
                scale = this_scale
                lo = this_min
    return scale, -lo


@njit(**JIT)
def _k4(b, o, L, nmax, rmin, nstep):
    """The half Q4_K and Q5_K share: d, dmin and the 12 packed 6-bit scales/mins at o[0:16], the quants in L;
    returns the float64 squared error of what they dequantize to."""
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    w = np.empty(32, np.float32)
    Laux = np.empty(32, np.int64)
    back = np.empty(256, np.float32)
    max_scale = max_min = f32(0.0)
    for j in range(8):
        g = b[32 * j:32 * j + 32]
        sum_x2 = f32(0.0)
        for l in range(32):
            sum_x2 += g[l] * g[l]
        av_x = np.sqrt(sum_x2 / f32(32.0))  # sqrtf: correctly rounded in both
        for l in range(32):
            w[l] = av_x + abs(g[l])
        scales[j], mins[j] = _make_qkx2_quants(g, w, L[32 * j:32 * j + 32], Laux, nmax, rmin, f32(0.1), nstep)
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_scale = f32(63.0) / max_scale if max_scale > f32(0.0) else f32(0.0)
    inv_min = f32(63.0) / max_min if max_min > f32(0.0) else f32(0.0)
    ls = np.empty(8, np.int64)
    lm = np.empty(8, np.int64)
    for j in range(8):
        ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)  # (uint8_t), then MIN
        lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    for j in range(4):
        o[4 + j] = ls[j] | ((ls[j + 4] >> 4) << 6)
        o[8 + j] = lm[j] | ((lm[j + 4] >> 4) << 6)
        o[12 + j] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4)
    d = put_fp16(o, 0, max_scale / f32(63.0))
    dmin = put_fp16(o, 2, max_min / f32(63.0))
    for j in range(8):
        dj = d * f32(ls[j])
        mj = dmin * f32(lm[j])
        if dj != f32(0.0):  # else the group keeps make_qkx2_quants' quants
            for i in range(32 * j, 32 * j + 32):
                L[i] = max(0, min(nmax, nearest_int((b[i] + mj) / dj)))
        for i in range(32 * j, 32 * j + 32):
            back[i] = dj * f32(L[i]) - mj  # dequantize_row_q*_K's d1 * q - m1
    return block_err2(back, b)


@njit(SIGNATURE, **JIT)
def q4_k(x, out):
    """d dmin scales[12] qs[128]: qs[32k + l] = L[64k + l] | L[64k + 32 + l] << 4."""
    L = np.empty(256, np.int64)
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        err2 += _k4(b, o, L, 15, f32(-1.0), 20)
        for k in range(4):
            for l in range(32):
                o[16 + 32 * k + l] = L[64 * k + l] | (L[64 * k + 32 + l] << 4)
    return err2, norm2, -1


@njit(SIGNATURE, **JIT)
def q5_k(x, out):
    """d dmin scales[12] qh[32] qs[128]: the low nibbles as Q4_K's, bit 4 of L[64k + l] (of L[64k + 32 + l]) in bit
    2k (2k + 1) of qh[l]."""
    L = np.empty(256, np.int64)
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        err2 += _k4(b, o, L, 31, f32(-0.5), 15)
        o[16:48] = 0
        for k in range(4):
            for l in range(32):
                l1, l2 = L[64 * k + l], L[64 * k + 32 + l]
                o[16 + l] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1))
                o[48 + 32 * k + l] = (l1 & 0xF) | ((l2 & 0xF) << 4)
    return err2, norm2, -1


# ---- Q6_K: 16 groups of 16, signed 6-bit ------------------------------------------------------------------------

@njit(**JIT)
def _make_qx_quants(x, L, nmax):
    """make_qx_quants, rmse_type 1 (weights x^2), no importance: a 19-step scale search. L gets quants + nmax."""
    n = x.shape[0]
    mx = amax = f32(0.0)
    for i in range(n):
        if abs(x[i]) > amax:
            amax = abs(x[i])
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        L[:] = 0
        return f32(0.0)
    iscale = f32(-nmax) / mx
    sumlx = suml2 = f32(0.0)
    for i in range(n):
        li = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = li + nmax
        w = x[i] * x[i]
        sumlx += w * x[i] * f32(li)
        suml2 += w * f32(li) * f32(li)
    scale = sumlx / suml2 if suml2 != f32(0.0) else f32(0.0)  # C's `suml2 ?`: NaN counts as true
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f32(nmax) + f32(0.1) * f32(step)) / mx
        sumlx = suml2 = f32(0.0)
        for i in range(n):
            li = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            w = x[i] * x[i]
            sumlx += w * x[i] * f32(li)
            suml2 += w * f32(li) * f32(li)
        if suml2 > f32(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(SIGNATURE, **JIT)
def q6_k(x, out):
    """ql[128] qh[64] scales[16] d: for each half h of 128, l < 32, quants a..e = L[128h + l + 32m], m = 0..3:
    ql[64h + l] = a | c << 4, ql[64h + 32 + l] = b | e << 4, qh[32h + l] = the four values' bits 4-5."""
    L = np.empty(256, np.int64)
    scales = np.empty(16, np.float32)
    sc = np.empty(16, np.int64)
    back = np.empty(256, np.float32)
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        max_scale = max_abs = f32(0.0)
        for g in range(16):
            scales[g] = _make_qx_quants(b[16 * g:16 * g + 16], L[16 * g:16 * g + 16], 32)
            if abs(scales[g]) > max_abs:  # a NaN scale (x*x overflowed) never wins
                max_abs = abs(scales[g])
                max_scale = scales[g]
        if max_abs < GROUP_MAX_EPS:
            o[:] = 0  # fp16 zero included
            err2 += n2
            continue
        iscale = f32(-128.0) / max_scale
        d = put_fp16(o, 208, f32(1.0) / iscale)
        for g in range(16):
            sc[g] = int8(min(127, nearest_int(iscale * scales[g])))
            o[192 + g] = sc[g] & 0xFF
        for g in range(16):
            dg = d * f32(sc[g])
            if dg != f32(0.0):  # else the group keeps make_qx_quants' quants
                for k in range(16 * g, 16 * g + 16):
                    L[k] = 32 + max(-32, min(31, nearest_int(b[k] / dg)))
            for k in range(16 * g, 16 * g + 16):
                back[k] = dg * f32(L[k] - 32)  # dequantize_row_q6_K's d * sc * q
        err2 += block_err2(back, b)
        for h in range(2):
            for l in range(32):
                a, bb, c, e = L[128 * h + l], L[128 * h + l + 32], L[128 * h + l + 64], L[128 * h + l + 96]
                o[64 * h + l] = (a & 0xF) | ((c & 0xF) << 4)
                o[64 * h + 32 + l] = (bb & 0xF) | ((e & 0xF) << 4)
                o[128 + 32 * h + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    return err2, norm2, -1
