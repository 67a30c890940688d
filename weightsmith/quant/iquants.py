"""ggml's non-linear 4-bit types as numba kernels: IQ4_NL (blocks of 32: fp16 d, 16 bytes of 4-bit indices into
the kvalues_iq4nl table) and IQ4_XS (super-blocks of 256: fp16 d, 6-bit signed scales for its 8 blocks of 32,
the same indices), mirroring quantize_row_iq4_nl_impl in ggml-quants.c step for step in float32.

ggml_quantize_chunk calls quantize_iq4_nl / quantize_iq4_xs, both with ntry = 7, with or without an importance
matrix (quantize_row_iq4_nl_ref's ntry = -1 is not what llama-quantize writes). Without one a value's weight is
x^2; with one qw * sqrtf(sigma2 + x^2), sigma2 = 2 * mean square of the *super-block* (32 values for IQ4_NL, 256 for
IQ4_XS), not of the row as in the legacy types.

Unweighted kernels: legacy.py's contract (x float32 [n_blocks, block], out uint8 [n_blocks, type_size]); weighted
ones (<name>_w): (x float32 [rows, n], qw float32 [n], out uint8 [rows, n / block * type_size]).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, f32, nearest_int, put_fp16
from .legacy import SIGNATURE, SIGNATURE_W, block_err2, block_norm2, first_bad
from .search import GROUP_MAX_EPS

# kvalues_iq4nl (ggml-common.h): the 16 levels an index stands for, in units of the block's scale
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_V = KVALUES_IQ4NL.astype(np.float32)  # the C compares and subtracts them as floats: exact
NTRY = 7


@njit(**JIT)
def best_index(x):
    """best_index_int8: the nearest level's index by bisection, the upper one on ties (and for NaN)."""
    if x <= _V[0]:
        return 0
    if x >= _V[15]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < _V[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - _V[mu - 1] < _V[mu] - x else mu


@njit(**JIT)
def _block_scale(xb, w, mx):
    """One block's scale: the least-squares fit at d = max / 127, then at 15 trial inverse scales
    (itry + values[0]) / max, keeping the best sumqx^2 / sumq2."""
    d = -mx / _V[0]  # ntry > 0: -max / -127, so the largest magnitude starts on level 113 or -127 by its sign
    inv = f32(1.0) / d
    sumqx = sumq2 = f32(0.0)
    for j in range(32):
        q = _V[best_index(inv * xb[j])]
        sumqx += w[j] * q * xb[j]
        sumq2 += w[j] * q * q
    d = sumqx / sumq2 if sumq2 > f32(0.0) else f32(0.0)
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        inv = f32(itry + np.int64(KVALUES_IQ4NL[0])) / mx
        sumqx = sumq2 = f32(0.0)
        for j in range(32):
            q = _V[best_index(inv * xb[j])]
            sumqx += w[j] * q * xb[j]
            sumq2 += w[j] * q * q
        if sumq2 > f32(0.0) and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d


@njit(**JIT)
def _super_block(x, qw, weighted, o, L, back):
    """quantize_row_iq4_nl_impl for one super-block x of nb = len(x) / 32 blocks (1: IQ4_NL, 8: IQ4_XS) into o,
    qw its slice of the importance (ignored unless weighted); back gets the dequantized values. Returns the
    float64 squared error."""
    size = x.shape[0]
    nb = size // 32
    sigma2 = f32(0.0)
    for j in range(size):
        sigma2 += x[j] * x[j]
    sigma2 *= f32(2.0) / f32(size)
    scales = np.empty(nb, np.float32)
    w = np.empty(32, np.float32)
    max_scale = amax_scale = f32(0.0)
    for ib in range(nb):
        xb = x[32 * ib:32 * ib + 32]
        for j in range(32):
            w[j] = qw[32 * ib + j] * np.sqrt(sigma2 + xb[j] * xb[j]) if weighted else xb[j] * xb[j]
        amax = mx = f32(0.0)
        for j in range(32):
            if abs(xb[j]) > amax:
                amax = abs(xb[j])
                mx = xb[j]
        if amax < GROUP_MAX_EPS:  # the block's first-pass quants stay unset: both types recompute them below
            scales[ib] = f32(0.0)
            continue
        scales[ib] = _block_scale(xb, w, mx)
        if abs(scales[ib]) > amax_scale:  # a NaN scale (x*x overflowed) never wins
            amax_scale = abs(scales[ib])
            max_scale = scales[ib]
    if nb > 1:
        # IQ4_XS: d = -max_scale / 32 (an all-zero super-block stores -0.0, fp16 0x8000), each block's scale
        # as l in [-32, 31], stored l + 32: low nibbles in scales_l, high 2 bits in the uint16 scales_h
        d = -max_scale / f32(32.0)
        dq = put_fp16(o, 0, d)
        inv = f32(1.0) / d if d != f32(0.0) else f32(0.0)
        scales_h = 0
        for ib in range(nb):
            l = max(-32, min(31, nearest_int(inv * scales[ib])))
            dl = d * f32(l)
            idl = f32(1.0) / dl if dl != f32(0.0) else f32(0.0)
            for j in range(32 * ib, 32 * ib + 32):
                L[j] = best_index(idl * x[j])
            l += 32
            if ib % 2 == 0:
                o[4 + ib // 2] = l & 0xF
            else:
                o[4 + ib // 2] |= (l & 0xF) << 4
            scales_h |= (l >> 4) << (2 * ib)
            dlq = dq * f32(l - 32)  # dequantize_row_iq4_xs's d * (ls - 32), with d read back from fp16
            for j in range(32 * ib, 32 * ib + 32):
                back[j] = dlq * _V[L[j]]
        o[2] = scales_h & 0xFF
        o[3] = scales_h >> 8
        qs = 8
    else:
        # IQ4_NL: d is the block's own scale, the indices redone with its float32 (not fp16) inverse
        dq = put_fp16(o, 0, scales[0])
        inv = f32(1.0) / scales[0] if scales[0] != f32(0.0) else f32(0.0)
        for j in range(32):
            L[j] = best_index(inv * x[j])
            back[j] = dq * _V[L[j]]
        qs = 2
    for i in range(nb):
        for j in range(16):
            o[qs + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4)
    return block_err2(back[:size], x)


@njit(**JIT)
def _unweighted(x, out):
    L = np.empty(x.shape[1], np.int64)
    back = np.empty(x.shape[1], np.float32)
    none = np.empty(0, np.float32)
    err2 = norm2 = 0.0
    for i in range(x.shape[0]):
        n2 = block_norm2(x[i])
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, i)
        norm2 += n2
        err2 += _super_block(x[i], none, False, out[i], L, back)
    return err2, norm2, -1


@njit(**JIT)
def _weighted(x, qw, out, size):
    type_size = out.shape[1] // (x.shape[1] // size)  # a super-block's bytes, from the caller's out
    L = np.empty(size, np.int64)
    back = np.empty(size, np.float32)
    err2 = norm2 = 0.0
    for r in range(x.shape[0]):
        n2 = block_norm2(x[r])
        if not np.isfinite(n2):
            return err2, norm2, first_bad(x, r)
        norm2 += n2
        for ib in range(x.shape[1] // size):
            err2 += _super_block(x[r, size * ib:size * ib + size], qw[size * ib:size * ib + size], True,
                                 out[r, type_size * ib:type_size * ib + type_size], L, back)
    return err2, norm2, -1


@njit(SIGNATURE, **JIT)
def iq4_nl(x, out):
    return _unweighted(x, out)


@njit(SIGNATURE, **JIT)
def iq4_xs(x, out):
    return _unweighted(x, out)


@njit(SIGNATURE_W, **JIT)
def iq4_nl_w(x, qw, out):
    return _weighted(x, qw, out, 32)


@njit(SIGNATURE_W, **JIT)
def iq4_xs_w(x, qw, out):
    return _weighted(x, qw, out, 256)
