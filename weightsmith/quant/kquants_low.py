"""ggml's k-quants below 4 bits: Q2_K and Q3_K (super-blocks of 256 in 16 groups of 16), mirroring
quantize_row_q{2,3}_K_ref and quantize_row_q{2,3}_K_impl in ggml-quants.c step for step in float32, so the bytes
are libggml's.

- Q2_K: scales[16] qs[64] d dmin. Each group a 2-bit scale-and-min fit; its 4-bit scale and 4-bit min share a
  byte (ls | lm << 4). Without an importance matrix make_qkx2_quants (weights |x|, absolute error) and both
  super-block scales from the largest group's; with one make_qkx3_quants (weights qw * sqrtf(sigma2 + x^2), sigma2
  the super-block's mean square) and make_qp_quants for the scales and the mins.
- Q3_K: hmask[32] qs[64] scales[12] d. Each group a signed 3-bit fit; its 6-bit scale (offset by 32) split into
  a low nibble (scales[0:8], groups 8..15 in the high nibbles) and two high bits (scales[8:12], group j at bit
  2 * (j / 4) of byte j % 4). Without an importance matrix make_q3_quants, the super-block scale from the largest
  group's; with one make_qx_quants on the values (weights qw * sqrtf(sigma2 + x^2), sigma2 twice the mean square)
  and on the group scales (weights their groups' summed weights).

Both then requantize every value against the stored scales, as the C does. ggml_quantize_chunk takes the _ref
path for the whole chunk when no importance is given, the _impl path row by row otherwise.

Unweighted kernels: legacy.py's contract (x float32 [n_blocks, 256], out uint8 [n_blocks, type_size]); weighted
ones (<name>_w): (x float32 [rows, n], qw float32 [n], out uint8 [rows, n / 256 * type_size]).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, f32, int8, nearest_int, put_fp16
from .legacy import SIGNATURE, SIGNATURE_W, block_err2, block_norm2, first_bad
from .search import make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants

QK_K = 256


@njit(**JIT)
def _pack_2bit(L, o, k):
    """Four 2-bit quants a byte: o[k + 32h + l] = L[128h + l] | L[128h + l + 32] << 2 | ... << 4 | ... << 6."""
    for h in range(2):
        for l in range(32):
            j = 128 * h + l
            o[k + 32 * h + l] = L[j] | (L[j + 32] << 2) | (L[j + 64] << 4) | (L[j + 96] << 6)


# ---- Q2_K -------------------------------------------------------------------------------------------------------

@njit(**JIT)
def _q2_finish(b, o, L, d, dmin, back):
    """Requantize each group whose scale is not zero against the stored d * (scale & 15) and dmin * (scale >> 4)
    (a zero one keeps the search's quants), pack the quants, and return the float64 squared error of what
    dequantize_row_q2_K reads back."""
    for j in range(16):
        sc = np.int64(o[j])
        dj = d * f32(sc & 0xF)
        mj = dmin * f32(sc >> 4)
        if dj != f32(0.0):  # C's `if (!d) continue`: NaN requantizes
            for k in range(16 * j, 16 * j + 16):
                L[k] = max(0, min(3, nearest_int((b[k] + mj) / dj)))
        for k in range(16 * j, 16 * j + 16):
            back[k] = dj * f32(L[k]) - mj
    _pack_2bit(L, o, 16)
    return block_err2(back, b)


@njit(SIGNATURE, **JIT)
def q2_k(x, out):
    L = np.empty(QK_K, np.int64)
    Laux = np.empty(16, np.int64)
    w = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    back = np.empty(QK_K, np.float32)
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        max_scale = max_min = f32(0.0)
        for j in range(16):
            g = b[16 * j:16 * j + 16]
            for l in range(16):
                w[l] = abs(g[l])
            scales[j], mins[j] = make_qkx_quants(g, w, L[16 * j:16 * j + 16], Laux, 3, f32(-0.5), f32(0.1), 15,
                                                 True)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        if max_scale > f32(0.0):
            iscale = f32(15.0) / max_scale
            for j in range(16):
                o[j] = nearest_int(iscale * scales[j]) & 0xFF  # (uint8_t) of the int
            d = put_fp16(o, 80, max_scale / f32(15.0))
        else:
            o[:16] = 0
            d = put_fp16(o, 80, f32(0.0))
        if max_min > f32(0.0):
            iscale = f32(15.0) / max_min
            for j in range(16):
                o[j] = (np.int64(o[j]) | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
            dmin = put_fp16(o, 82, max_min / f32(15.0))
        else:
            dmin = put_fp16(o, 82, f32(0.0))
        err2 += _q2_finish(b, o, L, d, dmin, back)
    return err2, norm2, -1


@njit(SIGNATURE_W, **JIT)
def q2_k_w(x, qw, out):
    n = x.shape[1]
    ts = out.shape[1] // (n // QK_K)
    L = np.empty(QK_K, np.int64)
    Laux = np.empty(16, np.int64)
    Ls = np.empty(16, np.int64)
    Lm = np.empty(16, np.int64)
    w = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    back = np.empty(QK_K, np.float32)
    err2 = norm2 = 0.0
    for r in range(x.shape[0]):
        row = x[r]
        n2 = block_norm2(row)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, r)
        norm2 += n2
        for ib in range(n // QK_K):
            b = row[QK_K * ib:QK_K * ib + QK_K]
            q = qw[QK_K * ib:QK_K * ib + QK_K]
            o = out[r, ts * ib:ts * ib + ts]
            sumx2 = f32(0.0)
            for j in range(QK_K):
                sumx2 += b[j] * b[j]
            sigma2 = sumx2 / f32(QK_K)
            for j in range(16):
                g = b[16 * j:16 * j + 16]
                s = f32(0.0)
                for l in range(16):
                    w[l] = q[16 * j + l] * np.sqrt(sigma2 + g[l] * g[l])  # sqrtf: correctly rounded in both
                    s += w[l]
                sw[j] = s
                scales[j], mins[j] = make_qkx_quants(g, w, L[16 * j:16 * j + 16], Laux, 3, f32(-0.9), f32(0.05),
                                                     36, False)
            d = put_fp16(o, 80, make_qp_quants(16, 15, scales, Ls, sw))
            dmin = put_fp16(o, 82, make_qp_quants(16, 15, mins, Lm, sw))
            for j in range(16):
                o[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
            err2 += _q2_finish(b, o, L, d, dmin, back)
    return err2, norm2, -1


# ---- Q3_K -------------------------------------------------------------------------------------------------------

@njit(**JIT)
def _q3_put_scale(o, j, l):
    """Group j's 6-bit scale l (0..63) into scales[12] at o[96:108] (zeroed first)."""
    if j < 8:
        o[96 + j] = l & 0xF
    else:
        o[96 + j - 8] |= (l & 0xF) << 4
    o[104 + j % 4] |= (l >> 4) << (2 * (j // 4))


@njit(**JIT)
def _q3_finish(b, o, L, d, back):
    """Requantize each group whose d * (scale - 32) is not zero (a zero one keeps the search's quants), split the
    quants into hmask (bit j / 32 of byte j % 32: quant j > 3) and 2-bit qs, and return the float64 squared error
    of what dequantize_row_q3_K reads back."""
    for j in range(16):
        low = (np.int64(o[96 + j]) & 0xF) if j < 8 else (np.int64(o[96 + j - 8]) >> 4)
        sc = (low | (((np.int64(o[104 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
        dj = d * f32(sc)
        if dj != f32(0.0):  # C's `if (!d) continue`: NaN requantizes
            for k in range(16 * j, 16 * j + 16):
                L[k] = max(-4, min(3, nearest_int(b[k] / dj))) + 4
        for k in range(16 * j, 16 * j + 16):
            back[k] = dj * f32(L[k] - 4)
    o[:32] = 0
    for j in range(QK_K):
        if L[j] > 3:
            o[j % 32] |= 1 << (j // 32)
            L[j] -= 4
    _pack_2bit(L, o, 32)
    return block_err2(back, b)


@njit(SIGNATURE, **JIT)
def q3_k(x, out):
    L = np.empty(QK_K, np.int64)
    scales = np.empty(16, np.float32)
    back = np.empty(QK_K, np.float32)
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        b, o = x[i], out[i]
        n2 = block_norm2(b)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        max_scale = amax = f32(0.0)
        for j in range(16):
            scales[j] = make_q3_quants(b[16 * j:16 * j + 16], L[16 * j:16 * j + 16], 4)
            if abs(scales[j]) > amax:
                amax = abs(scales[j])
                max_scale = scales[j]
        o[96:108] = 0
        if max_scale != f32(0.0):
            iscale = f32(-32.0) / max_scale
            for j in range(16):
                l = int8(nearest_int(iscale * scales[j]))  # int8_t l = nearest_int(...), then clamped
                _q3_put_scale(o, j, max(-32, min(31, l)) + 32)
            d = put_fp16(o, 108, f32(1.0) / iscale)
        else:
            d = put_fp16(o, 108, f32(0.0))
        err2 += _q3_finish(b, o, L, d, back)
    return err2, norm2, -1


@njit(SIGNATURE_W, **JIT)
def q3_k_w(x, qw, out):
    n = x.shape[1]
    ts = out.shape[1] // (n // QK_K)
    L = np.empty(QK_K, np.int64)
    Ls = np.empty(16, np.int64)
    w = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    back = np.empty(QK_K, np.float32)
    err2 = norm2 = 0.0
    for r in range(x.shape[0]):
        row = x[r]
        n2 = block_norm2(row)
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, r)
        norm2 += n2
        for ib in range(n // QK_K):
            b = row[QK_K * ib:QK_K * ib + QK_K]
            q = qw[QK_K * ib:QK_K * ib + QK_K]
            o = out[r, ts * ib:ts * ib + ts]
            sumx2 = f32(0.0)
            for j in range(QK_K):
                sumx2 += b[j] * b[j]
            sigma2 = f32(2.0) * sumx2 / f32(QK_K)
            for j in range(16):
                g = b[16 * j:16 * j + 16]
                s = f32(0.0)
                for l in range(16):
                    w[l] = q[16 * j + l] * np.sqrt(sigma2 + g[l] * g[l])  # sqrtf: correctly rounded in both
                    s += w[l]
                sw[j] = s
                scales[j] = make_qx_quants(g, w, L[16 * j:16 * j + 16], 4)
            o[96:108] = 0
            d_block = make_qx_quants(scales, sw, Ls, 32)
            for j in range(16):
                _q3_put_scale(o, j, Ls[j])
            d = put_fp16(o, 108, d_block)
            err2 += _q3_finish(b, o, L, d, back)
    return err2, norm2, -1
