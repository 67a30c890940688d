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

As in kquants.py, the group searches run on tiles of TILE super-blocks (128 groups side by side, search.py's lane
forms; Q3_K's impl search over each super-block's 16 group scales too, one lane per super-block), and so does the
requantization against the stored scales; the scales are quantized, and the quants packed, super-block by
super-block.

Unweighted kernels: legacy.py's contract (x float32 [n_blocks, 256], out uint8 [n_blocks, type_size]); weighted
ones (<name>_w): (x float32 [rows, n], qw float32 [n], out uint8 [rows, n / 256 * type_size]).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, f32, int8, nearest_int, put_fp16
from .kquants import (TILE, group_quants, impl_weights, requantize_min, requantize_signed, scan, tile_err2,
                      tile_scratch)
from .legacy import SIGNATURE, SIGNATURE_W
from .search import make_q3_lanes, make_qkx_lanes, make_qp_quants, make_qx_lanes, tile_columns

QK_K = 256
Q2_K, Q3_K = range(2)


@njit(**JIT)
def _pack_2bit(L, o, k):
    """Four 2-bit quants a byte: o[k + 32h + l] = L[128h + l] | L[128h + l + 32] << 2 | ... << 4 | ... << 6."""
    for h in range(2):
        for l in range(32):
            j = 128 * h + l
            o[k + 32 * h + l] = (np.int32(L[j]) | (np.int32(L[j + 32]) << 2) | (np.int32(L[j + 64]) << 4)
                                 | (np.int32(L[j + 96]) << 6))


# ---- Q2_K -------------------------------------------------------------------------------------------------------

@njit(**JIT)
def _q2_ref_scales(o, scales, mins):
    """quantize_row_q2_K_ref's 4-bit scales and mins, each at 15 / their max, into o[0:16]: returns the float32s
    its d and dmin read back as."""
    max_scale = max_min = f32(0.0)
    for j in range(16):
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
    return d, dmin


@njit(**JIT)
def _q2_impl_scales(o, scales, mins, sw, Ls, Lm):
    """quantize_row_q2_K_impl's: make_qp_quants over the scales and over the mins, weighted by the groups' sums of
    weights sw."""
    d = put_fp16(o, 80, make_qp_quants(16, 15, scales, Ls, sw))
    dmin = put_fp16(o, 82, make_qp_quants(16, 15, mins, Lm, sw))
    for j in range(16):
        o[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
    return d, dmin


@njit(**JIT)
def _q2_group_scales(o, d, dmin, dl, ml):
    """Each group's d * (scale & 15) and dmin * (scale >> 4), as dequantize_row_q2_K reads them, into dl, ml."""
    for j in range(16):
        sc = np.int64(o[j])
        dl[j] = d * f32(sc & 0xF)
        ml[j] = dmin * f32(sc >> 4)


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
def _q3_ref_scales(o, scales):
    """quantize_row_q3_K_ref's 6-bit scales at -32 / the largest |scale|'s: returns the float32 d reads back as."""
    max_scale = amax = f32(0.0)
    for j in range(16):
        if abs(scales[j]) > amax:
            amax = abs(scales[j])
            max_scale = scales[j]
    o[96:108] = 0
    if max_scale == f32(0.0):
        return put_fp16(o, 108, f32(0.0))
    iscale = f32(-32.0) / max_scale
    for j in range(16):
        l = int8(nearest_int(iscale * scales[j]))  # int8_t l = nearest_int(...), then clamped
        _q3_put_scale(o, j, max(-32, min(31, l)) + 32)
    return put_fp16(o, 108, f32(1.0) / iscale)


@njit(**JIT)
def _q3_group_scales(o, d, dl):
    """Each group's d * (scale - 32), as dequantize_row_q3_K reads it, into dl."""
    for j in range(16):
        low = (np.int64(o[96 + j]) & 0xF) if j < 8 else (np.int64(o[96 + j - 8]) >> 4)
        sc = (low | (((np.int64(o[104 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
        dl[j] = d * f32(sc)


@njit(**JIT)
def _pack_q3(L, o):
    """Quants 0..7 split into hmask (bit j / 32 of byte j % 32: quant j > 3) and 2-bit qs."""
    o[:32] = 0
    for j in range(QK_K):
        if L[j] > f32(3.0):
            o[j % 32] |= 1 << (j // 32)
            L[j] -= f32(4.0)
    _pack_2bit(L, o, 32)


# ---- The driver: tiles of super-blocks ---------------------------------------------------------------------------

@njit(**JIT)
def _quantize(x, qw, weighted, out, kind):
    norm2, bad = scan(x)
    nsb = x.shape[0] * (x.shape[1] // QK_K)
    if bad >= 0 or nsb == 0:
        return 0.0, norm2, bad
    xs, os, flat = x.reshape((nsb, QK_K)), out.reshape((nsb, out.size // nsb)), x.reshape(-1)
    L = np.empty(QK_K, np.float32)
    Ls = np.empty(16, np.int64)
    Lm = np.empty(16, np.int64)
    m = TILE * 16
    xt, qt, wt, Lt, Laux, res, work, sw = tile_scratch(16, m)
    st, swt, Lst, dres, swork = tile_scratch(16, TILE)[:5]  # Q3_K impl: the super-blocks' group scales as lanes
    err2 = 0.0
    for s0 in range(0, nsb, TILE):
        s1 = min(s0 + TILE, nsb)
        if (s1 - s0) * 16 != m:  # a short last tile
            m = (s1 - s0) * 16
            xt, qt, wt, Lt, Laux, res, work, sw = tile_scratch(16, m)
            st, swt, Lst, dres, swork = tile_scratch(16, s1 - s0)[:5]
        tile_columns(flat, s0 * 16, 16, xt)
        if weighted:
            impl_weights(xs, qw, s0, xt, qt, wt, sw, work[0], kind == Q3_K)
        if kind == Q2_K:
            if weighted:
                make_qkx_lanes(xt, wt, Lt, Laux, res, work, 3, f32(-0.9), f32(0.05), 36, False)
            else:
                for i in range(16):
                    for k in range(m):
                        wt[i, k] = abs(xt[i, k])
                make_qkx_lanes(xt, wt, Lt, Laux, res, work, 3, f32(-0.5), f32(0.1), 15, True)
        elif weighted:
            make_qx_lanes(xt, wt, Lt, res[0], work, 4)
            for s in range(s1 - s0):  # d_block = make_qx_quants(16, 32, scales, Ls, sw): lane s, super-block s0 + s
                for j in range(16):
                    st[j, s] = res[0, 16 * s + j]
                    swt[j, s] = sw[16 * s + j]
            make_qx_lanes(st, swt, Lst, dres[0], swork, 32)
        else:
            make_q3_lanes(xt, Lt, Laux, res[0], work, 4)
        dl, ml, Lq, back = work[0], work[1], Laux, wt  # the searches' scratch, free again
        for s in range(s1 - s0):  # each super-block's scales, then every value requantized against them
            kb, o = 16 * s, os[s0 + s]
            if kind == Q2_K:
                if weighted:
                    d, dmin = _q2_impl_scales(o, res[0, kb:kb + 16], res[1, kb:kb + 16], sw[kb:kb + 16], Ls, Lm)
                else:
                    d, dmin = _q2_ref_scales(o, res[0, kb:kb + 16], res[1, kb:kb + 16])
                _q2_group_scales(o, d, dmin, dl[kb:kb + 16], ml[kb:kb + 16])
                continue
            if weighted:
                o[96:108] = 0
                for j in range(16):
                    _q3_put_scale(o, j, np.int64(Lst[j, s]))
                d = put_fp16(o, 108, dres[0, s])
            else:
                d = _q3_ref_scales(o, res[0, kb:kb + 16])
            _q3_group_scales(o, d, dl[kb:kb + 16])
        if kind == Q2_K:  # a group whose d * scale is zero keeps the search's quants (C's `if (!d) continue`)
            requantize_min(xt, Lt, Lq, back, dl, ml, 3)
        else:
            requantize_signed(xt, Lt, Lq, back, dl, 4)
        err2 += tile_err2(back, xt)
        for s in range(s1 - s0):
            group_quants(Lq, 16 * s, L)
            if kind == Q2_K:
                _pack_2bit(L, os[s0 + s], 16)
            else:
                _pack_q3(L, os[s0 + s])
    return err2, norm2, -1


_NONE = np.empty(0, np.float32)


@njit(SIGNATURE, **JIT)
def q2_k(x, out):
    return _quantize(x, _NONE, False, out, Q2_K)


@njit(SIGNATURE, **JIT)
def q3_k(x, out):
    return _quantize(x, _NONE, False, out, Q3_K)


@njit(SIGNATURE_W, **JIT)
def q2_k_w(x, qw, out):
    return _quantize(x, qw, True, out, Q2_K)


@njit(SIGNATURE_W, **JIT)
def q3_k_w(x, qw, out):
    return _quantize(x, qw, True, out, Q3_K)
