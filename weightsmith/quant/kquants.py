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
tile's 64 or 128 groups side by side); then each super-block's scales are quantized and stored (fp16 d, 6- or
8-bit group scales), every value of the tile is requantized against them in the same lanes, and each super-block's
quants are packed.

Unweighted kernels: legacy.py's contract, (x float32 [n_blocks, 256], out uint8 [n_blocks, type_size]) -> (err2,
norm2, first bad index or -1); weighted ones (<name>_w): (x float32 [rows, n], qw float32 [n], out uint8 [rows,
n / 256 * type_size]). Both run the same driver over the super-blocks of their rows (an unweighted block is a row
of 256).
"""
import numpy as np
from numba import njit

from .cfloat import JIT, f32, int8, nearest_int, put_fp16
from .legacy import SIGNATURE, SIGNATURE_W, SUMS, block_norm2, first_bad
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
def _k4_scales(o, d, dmin, lsm, dl, ml):
    """The half Q4_K and Q5_K share: d, dmin and the 12 packed 6-bit scales/mins at o[0:16]; each group's d * scale
    and dmin * min as dequantize_row_q*_K reads them, into dl[8] and ml[8]."""
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
        dl[j] = d * f32(sc)
        ml[j] = dmin * f32(m)


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
def _q6_scales(o, scales, sc, dl):
    """One Q6_K super-block's d and 8-bit group scales from its 16 group scales; each group's d * scale into dl[16].
    Returns False for a block whose scales are all (nearly) zero: its bytes are zero, and it dequantizes to 0."""
    max_scale = max_abs = f32(0.0)
    for g in range(16):
        if abs(scales[g]) > max_abs:  # a NaN scale (x*x overflowed) never wins
            max_abs = abs(scales[g])
            max_scale = scales[g]
    if max_abs < GROUP_MAX_EPS:
        o[:] = 0  # fp16 zero included
        dl[:16] = f32(0.0)
        return False
    iscale = f32(-128.0) / max_scale
    d = put_fp16(o, 208, f32(1.0) / iscale)
    for g in range(16):
        sc[g] = int8(min(127, nearest_int(iscale * scales[g])))
        o[192 + g] = sc[g] & 0xFF
        dl[g] = d * f32(sc[g])
    return True


@njit(**JIT)
def _pack_q6(L, o):
    """For each half h of 128, l < 32, quants a..e = L[128h + l + 32m], m = 0..3: ql[64h + l] = a | c << 4,
    ql[64h + 32 + l] = b | e << 4, qh[32h + l] = the four values' bits 4-5."""
    for h in range(2):
        for l in range(32):
            a, bb = np.int32(L[128 * h + l]), np.int32(L[128 * h + l + 32])
            c, e = np.int32(L[128 * h + l + 64]), np.int32(L[128 * h + l + 96])
            o[64 * h + l] = (a & 0xF) | ((c & 0xF) << 4)
            o[64 * h + 32 + l] = (bb & 0xF) | ((e & 0xF) << 4)
            o[128 + 32 * h + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)


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
def requantize_min(xt, Lt, Lq, back, dl, ml, nmax):
    """The unsigned k-quants' last step in tile form: each value requantized against its group's stored scale and
    min, l = nearest_int((x + ml) / dl) in [0, nmax] (a group whose dl is zero keeps the search's quants Lt: the
    C's `if (!d) continue`, which a NaN passes), into Lq; back: what dequantize_row_* reads back, dl * l - ml."""
    gl, m = xt.shape
    for i in range(gl):
        for k in range(m):
            v, d, mn, old = xt[i, k], dl[k], ml[k], Lt[i, k]
            l = near_clamp((v + mn) / d, 0, nmax)
            l = old if d == f32(0.0) else l
            Lq[i, k] = l
            back[i, k] = d * l - mn


@njit(**JIT)
def requantize_signed(xt, Lt, Lq, back, dl, nmax):
    """The same for the signed k-quants: l = nearest_int(x / dl) in [-nmax, nmax - 1], stored offset by nmax;
    back = dl * (L - nmax)."""
    gl, m = xt.shape
    for i in range(gl):
        for k in range(m):
            v, d, old = xt[i, k], dl[k], Lt[i, k]
            l = near_clamp(v / d, -nmax, nmax - 1) + f32(nmax)
            l = old if d == f32(0.0) else l
            Lq[i, k] = l
            back[i, k] = d * (l - f32(nmax))


@njit(**SUMS)
def tile_err2(back, xt):
    """sum((back - x)^2) over the tile, in float64 (in any order: the figure is the log's error, not bytes)."""
    gl, m = xt.shape
    s = 0.0
    for i in range(gl):
        for k in range(m):
            e = np.float64(back[i, k]) - np.float64(xt[i, k])
            s += e * e
    return s


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
    lsm = np.empty((2, 16), np.int64)
    sc = np.empty(16, np.int64)
    live = np.empty(TILE, np.bool_)
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
        dl, ml, Lq, back = work[0], work[1], Laux, wt  # the searches' scratch, free again
        for s in range(s1 - s0):  # each super-block's scales, then every value requantized against them
            kb, o = s * gpb, os[s0 + s]
            if kind == Q6_K:
                live[s] = _q6_scales(o, res[0, kb:kb + 16], sc, dl[kb:kb + 16])
                continue
            if weighted:
                d, dmin = _impl_scales(res[0, kb:kb + 8], res[1, kb:kb + 8], sw[kb:kb + 8], kind, lsm)
            else:
                d, dmin = _ref_scales(res[0, kb:kb + 8], res[1, kb:kb + 8], lsm)
            _k4_scales(o, d, dmin, lsm, dl[kb:kb + 8], ml[kb:kb + 8])
        if kind == Q6_K:
            requantize_signed(xt, Lt, Lq, back, dl, 32)  # a zero block's dl is 0: it reads back as 0
        else:
            requantize_min(xt, Lt, Lq, back, dl, ml, _NMAX[kind])
        err2 += tile_err2(back, xt)
        for s in range(s1 - s0):
            group_quants(Lq, s * gpb, L)
            o = os[s0 + s]
            if kind == Q4_K:
                _pack_q4(L, o)
            elif kind == Q5_K:
                _pack_q5(L, o)
            elif live[s]:
                _pack_q6(L, o)
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
