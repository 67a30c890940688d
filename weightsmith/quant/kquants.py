"""ggml's k-quants (Q4_K, Q5_K, Q6_K: super-blocks of 256) as numba kernels, mirroring ggml-quants.c in float32,
sums accumulated left to right as the C does (float addition is not associative), so the bytes are libggml's.

Without an importance matrix ggml_quantize_chunk calls quantize_row_q{4,5,6}_K_ref; with one, quantize_row_q*_K_impl,
which differ in the searches, not only in the weights:

- Q4_K / Q5_K ref: value weights av_x + |x| (av_x the RMS of the 32-value group), make_qkx2_quants (nstep 20 / 15),
  the 8 scales and mins each rounded at 63 / their max.
  impl: weights qw * sqrtf(sigma2 + x^2), sigma2 = 2 * mean square of the super-block, make_qkx3_quants (37
  candidates), the scales and mins searched by make_qp_quants weighted by each group's sum of weights.
- Q6_K: make_qx_quants on the 16 groups of 16, weighted by x^2 (ref) or by the importance itself (impl: ggml
  leaves its sigma2 weighting commented out); the rest is common.

The group searches, nearly all the time, run on a tile of TILE super-blocks at once (search.py's lane forms: the
tile's 64 or 128 groups side by side); each super-block is then finished alone (its scales' quants, fp16 d,
requantization against the stored scales, packing).

Unweighted kernels: legacy.py's contract, (x float32 [n_blocks, 256], out uint8 [n_blocks, type_size]) -> (err2,
norm2, first bad index or -1); weighted ones (<name>_w): (x float32 [rows, n], qw float32 [n], out uint8 [rows,
n / 256 * type_size]). Both run the same driver over the super-blocks of their rows (an unweighted block is a row
of 256).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, f32, int8, nearest_int, put_fp16
from .legacy import SIGNATURE, SIGNATURE_W, block_err2, block_norm2, first_bad
from .search import (GROUP_MAX_EPS, LANE_ROWS, make_qkx_lanes, make_qp_quants, make_qx_lanes, near_clamp,
                     sum_lanes, tile_columns)

Q4_K, Q5_K, Q6_K = range(3)
# Q4_K's and Q5_K's largest quant, and make_qkx2_quants' rmin and nstep in their _ref quantizers
_NMAX = (15, 31)
_REF_SEARCH = ((f32(-1.0), 20), (f32(-0.5), 15))
TILE = 8  # super-blocks whose groups are searched side by side: 64 lanes of 32 values (Q4_K, Q5_K), 128 of 16


# ---- Q4_K / Q5_K: 8 groups of 32, unsigned with a min ---------------------------------------------------------
# Bytes: d dmin scales[12] then (Q5_K) qh[32] and qs[128]. lsm: int64 rows Ls, Lm (the C's uint8_t values).

@njit(**JIT)
def _scale_min_k4(o, j):
    """get_scale_min_k4: group j's 6-bit scale and min from the 12 scale bytes at o[4:16]."""
    if j < 4:
        return o[4 + j] & 63, o[8 + j] & 63
    return (o[8 + j] & 0xF) | ((o[j] >> 6) << 4), (o[8 + j] >> 4) | ((o[4 + j] >> 6) << 4)


@njit(**JIT)
def _ref_scales(scales, mins, lsm):
    """quantize_row_q{4,5}_K_ref's scales and mins at 63 / their max: returns (d, dmin) before fp16."""
    max_scale = max_min = f32(0.0)
    for j in range(8):
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_scale = f32(63.0) / max_scale if max_scale > f32(0.0) else f32(0.0)
    inv_min = f32(63.0) / max_min if max_min > f32(0.0) else f32(0.0)
    for j in range(8):
        lsm[0, j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)  # (uint8_t), then MIN
        lsm[1, j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    return max_scale / f32(63.0), max_min / f32(63.0)


@njit(**JIT)
def _impl_scales(scales, mins, sw, kind, lsm):
    """quantize_row_q{4,5}_K_impl's: make_qp_quants over the scales and over the mins, weighted by each group's sum
    of weights sw: returns (d, dmin)."""
    d = make_qp_quants(8, 63, scales, lsm[0], sw)
    dmin = make_qp_quants(8, 63, mins, lsm[1], sw)
    if kind == Q5_K:  # Q5_K clamps the uint8 quants to 63, Q4_K stores them as they are
        for j in range(8):
            lsm[0, j] = min(63, lsm[0, j])
            lsm[1, j] = min(63, lsm[1, j])
    return d, dmin


@njit(**JIT)
def _k4(b, o, L, kind, d, dmin, lsm, back):
    """The half Q4_K and Q5_K share: d, dmin and the 12 packed 6-bit scales/mins at o[0:16], the final quants in
    L (float32; the search's where a group's scale is zero); returns the float64 squared error of what they
    dequantize to."""
    nmax = _NMAX[kind]
    for j in range(8):  # the C's uint8_t stores: an unclamped Q4_K impl quant above 63 spills into its neighbours
        ls, lm = lsm[0, j], lsm[1, j]
        if j < 4:
            o[4 + j] = ls
            o[8 + j] = lm
        else:
            o[8 + j] = (ls & 0xF) | ((lm & 0xF) << 4)
            o[j] |= ((ls >> 4) << 6) & 0xFF
            o[4 + j] |= ((lm >> 4) << 6) & 0xFF
    d = put_fp16(o, 0, d)
    dmin = put_fp16(o, 2, dmin)
    for j in range(8):
        sc, m = _scale_min_k4(o, j)
        dj = d * f32(sc)
        mj = dmin * f32(m)
        if dj != f32(0.0):  # else the group keeps the search's quants
            for i in range(32 * j, 32 * j + 32):
                L[i] = near_clamp((b[i] + mj) / dj, 0, nmax)
        for i in range(32 * j, 32 * j + 32):
            back[i] = dj * L[i] - mj  # dequantize_row_q*_K's d1 * q - m1
    return block_err2(back, b)


@njit(**JIT)
def _pack_q4(L, o):
    """qs[32k + l] = L[64k + l] | L[64k + 32 + l] << 4."""
    for k in range(4):
        for l in range(32):
            o[16 + 32 * k + l] = np.int32(L[64 * k + l]) | (np.int32(L[64 * k + 32 + l]) << 4)


@njit(**JIT)
def _pack_q5(L, o):
    """The low nibbles as Q4_K's at o[48:], bit 4 of L[64k + l] (of L[64k + 32 + l]) in bit 2k (2k + 1) of qh[l]."""
    o[16:48] = 0
    for k in range(4):
        for l in range(32):
            l1, l2 = np.int32(L[64 * k + l]), np.int32(L[64 * k + 32 + l])
            o[16 + l] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1))
            o[48 + 32 * k + l] = (l1 & 0xF) | ((l2 & 0xF) << 4)


# ---- Q6_K: 16 groups of 16, signed 6-bit ------------------------------------------------------------------------
# Bytes: ql[128] qh[64] scales[16] d.

@njit(**JIT)
def _q6(b, o, L, scales, sc, back):
    """Finish one Q6_K super-block from its 16 group scales and the searches' quants L (float32, offset by 32);
    returns the squared error."""
    max_scale = max_abs = f32(0.0)
    for g in range(16):
        if abs(scales[g]) > max_abs:  # a NaN scale (x*x overflowed) never wins
            max_abs = abs(scales[g])
            max_scale = scales[g]
    if max_abs < GROUP_MAX_EPS:
        o[:] = 0  # fp16 zero included
        return block_norm2(b)  # every value dequantizes to 0
    iscale = f32(-128.0) / max_scale
    d = put_fp16(o, 208, f32(1.0) / iscale)
    for g in range(16):
        sc[g] = int8(min(127, nearest_int(iscale * scales[g])))
        o[192 + g] = sc[g] & 0xFF
    for g in range(16):
        dg = d * f32(sc[g])
        if dg != f32(0.0):  # else the group keeps make_qx_quants' quants
            for k in range(16 * g, 16 * g + 16):
                L[k] = near_clamp(b[k] / dg, -32, 31) + f32(32.0)
        for k in range(16 * g, 16 * g + 16):
            back[k] = dg * (L[k] - f32(32.0))  # dequantize_row_q6_K's d * sc * q
    for h in range(2):
        # for each half h of 128, l < 32, quants a..e = L[128h + l + 32m], m = 0..3: ql[64h + l] = a | c << 4,
        # ql[64h + 32 + l] = b | e << 4, qh[32h + l] = the four values' bits 4-5
        for l in range(32):
            a, bb = np.int32(L[128 * h + l]), np.int32(L[128 * h + l + 32])
            c, e = np.int32(L[128 * h + l + 64]), np.int32(L[128 * h + l + 96])
            o[64 * h + l] = (a & 0xF) | ((c & 0xF) << 4)
            o[64 * h + 32 + l] = (bb & 0xF) | ((e & 0xF) << 4)
            o[128 + 32 * h + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    return block_err2(back, b)


# ---- The driver: tiles of super-blocks ---------------------------------------------------------------------------

@njit(**JIT)
def scan(x):
    """sum(x^2) in float64 and the flat index of the first NaN or Inf (-1 if none): checked before anything is
    written, since a tile spans several rows."""
    norm2 = 0.0
    for r in range(x.shape[0]):
        n2 = block_norm2(x[r])
        if not np.isfinite(n2):
            return 0.0, first_bad(x, r)
        norm2 += n2
    return norm2, -1


@njit(**JIT)
def tile_scratch(gl, m):
    """A tile's arrays for m groups of gl: values, importance, weights, quants, a candidate's quants ([gl, m]);
    the searches' results [2, m] and state [LANE_ROWS, m]; each group's sum of weights [m]."""
    return (np.empty((gl, m), np.float32), np.empty((gl, m), np.float32), np.empty((gl, m), np.float32),
            np.empty((gl, m), np.float32), np.empty((gl, m), np.float32), np.empty((2, m), np.float32),
            np.empty((LANE_ROWS, m), np.float32), np.empty(m, np.float32))


@njit(**JIT)
def group_quants(Lt, kb, L):
    """Super-block quants L[256] from the tile's lanes kb, kb + 1, ... (one group of Lt.shape[0] values each)."""
    gl = Lt.shape[0]
    for j in range(256 // gl):
        for i in range(gl):
            L[gl * j + i] = Lt[i, kb + j]


@njit(**JIT)
def impl_weights(xs, qw, s0, xt, qt, wt, sw, sigma2, twice):
    """The _impl quantizers' weights qw * sqrtf(sigma2 + x^2) for the tile of super-blocks from s0 (values in xt),
    sigma2 the super-block's mean square (twice: doubled, as Q3_K, Q4_K and Q5_K have it); sw: each group's sum."""
    gl, m = xt.shape
    gpb = 256 // gl
    for s in range(m // gpb):
        b = xs[s0 + s]
        sum_x2 = f32(0.0)
        for l in range(256):
            sum_x2 += b[l] * b[l]
        v = f32(2.0) * sum_x2 / f32(256.0) if twice else sum_x2 / f32(256.0)
        for j in range(gpb):
            sigma2[gpb * s + j] = v
    tile_columns(qw, s0 * gpb, gl, qt)
    for i in range(gl):
        for k in range(m):
            wt[i, k] = qt[i, k] * np.sqrt(sigma2[k] + xt[i, k] * xt[i, k])  # sqrtf: correctly rounded in both
    sum_lanes(wt, sw)


@njit(**JIT)
def _weights(xs, qw, weighted, kind, s0, xt, qt, wt, sw, work):
    """The search weights of the tile of super-blocks from s0 (their values already in xt), as the C computes them
    per group; sw: each group's sum of weights (the impl's make_qp_quants weights)."""
    gl, m = xt.shape
    if kind == Q6_K:
        if weighted:
            tile_columns(qw, s0 * 16, gl, wt)  # the importance itself
        else:
            for i in range(gl):
                for k in range(m):
                    wt[i, k] = xt[i, k] * xt[i, k]  # make_qx_quants' weights when quant_weights is NULL
    elif weighted:
        impl_weights(xs, qw, s0, xt, qt, wt, sw, work[0], True)
    else:
        av_x = work[0]
        for k in range(m):
            av_x[k] = f32(0.0)
        for i in range(gl):
            for k in range(m):
                av_x[k] += xt[i, k] * xt[i, k]
        for k in range(m):
            av_x[k] = np.sqrt(av_x[k] / f32(32.0))  # sqrtf: correctly rounded in both
        for i in range(gl):
            for k in range(m):
                wt[i, k] = av_x[k] + abs(xt[i, k])


@njit(**JIT)
def _quantize(x, qw, weighted, out, kind):
    norm2, bad = scan(x)
    nsb = x.shape[0] * (x.shape[1] // 256)
    if bad >= 0 or nsb == 0:
        return 0.0, norm2, bad
    xs, os, flat = x.reshape((nsb, 256)), out.reshape((nsb, out.size // nsb)), x.reshape(-1)
    gl = 16 if kind == Q6_K else 32
    gpb = 256 // gl
    L = np.empty(256, np.float32)
    back = np.empty(256, np.float32)
    lsm = np.empty((2, 16), np.int64)
    sc = np.empty(16, np.int64)
    m = TILE * gpb
    xt, qt, wt, Lt, Laux, res, work, sw = tile_scratch(gl, m)
    err2 = 0.0
    for s0 in range(0, nsb, TILE):
        s1 = min(s0 + TILE, nsb)
        if (s1 - s0) * gpb != m:  # a short last tile
            m = (s1 - s0) * gpb
            xt, qt, wt, Lt, Laux, res, work, sw = tile_scratch(gl, m)
        tile_columns(flat, s0 * gpb, gl, xt)
        _weights(xs, qw, weighted, kind, s0, xt, qt, wt, sw, work)
        if kind == Q6_K:
            make_qx_lanes(xt, wt, Lt, res[0], work, 32)
        elif weighted:
            make_qkx_lanes(xt, wt, Lt, Laux, res, work, _NMAX[kind], f32(-0.9), f32(0.05), 36, False)
        else:
            rmin, nstep = _REF_SEARCH[kind]
            make_qkx_lanes(xt, wt, Lt, Laux, res, work, _NMAX[kind], rmin, f32(0.1), nstep, False)
        for s in range(s0, s1):
            kb = (s - s0) * gpb
            group_quants(Lt, kb, L)
            b, o = xs[s], os[s]
            if kind == Q6_K:
                err2 += _q6(b, o, L, res[0, kb:kb + 16], sc, back)
                continue
            if weighted:
                d, dmin = _impl_scales(res[0, kb:kb + 8], res[1, kb:kb + 8], sw[kb:kb + 8], kind, lsm)
            else:
                d, dmin = _ref_scales(res[0, kb:kb + 8], res[1, kb:kb + 8], lsm)
            err2 += _k4(b, o, L, kind, d, dmin, lsm, back)
            if kind == Q4_K:
                _pack_q4(L, o)
            else:
                _pack_q5(L, o)
    return err2, norm2, -1


_NONE = np.empty(0, np.float32)


@njit(SIGNATURE, **JIT)
def q4_k(x, out):
    return _quantize(x, _NONE, False, out, Q4_K)


@njit(SIGNATURE, **JIT)
def q5_k(x, out):
    return _quantize(x, _NONE, False, out, Q5_K)


@njit(SIGNATURE, **JIT)
def q6_k(x, out):
    return _quantize(x, _NONE, False, out, Q6_K)


@njit(SIGNATURE_W, **JIT)
def q4_k_w(x, qw, out):
    return _quantize(x, qw, True, out, Q4_K)


@njit(SIGNATURE_W, **JIT)
def q5_k_w(x, qw, out):
    return _quantize(x, qw, True, out, Q5_K)


@njit(SIGNATURE_W, **JIT)
def q6_k_w(x, qw, out):
    return _quantize(x, qw, True, out, Q6_K)
