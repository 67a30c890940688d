"""ggml's k-quants (Q4_K, Q5_K, Q6_K: super-blocks of 256), bit-exact with quantize_row_q*_K_ref.

The reference code searches scales with float32 sums accumulated left to right; floating-point addition is not
associative, so those sums are reproduced in the same order (`_seqsum`) while everything elementwise is vectorized
over all blocks at once. libggml-base (where the reference quantizers live) is built without FMA contraction,
so plain float32 multiply-then-add matches it. nearest_int() rounds half to even, as torch.round does.

Groups are held transposed, [positions, groups], so each step of a sequential sum reads contiguous memory.
"""
import torch

from .rounding import f16, fp16_bytes

GROUP_MAX_EPS = 1e-15


def _seqsum(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 in order, in float32, as `for (i...) s += t[i]` starting from 0 does."""
    acc = t[0].clone()
    for k in range(1, t.shape[0]):
        acc += t[k]
    return acc


def _where_nonzero(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, d, torch.ones_like(d))


# ---- Q6_K: 16 groups of 16, signed 6-bit, make_qx_quants(rmse_type=1) ---------------------------------------

def _make_qx_quants(x: torch.Tensor, nmax: int):
    """x [16, G] -> (scale [G], L [16, G] in 0..2*nmax-1). rmse_type 1: weights x^2, 19-step scale search."""
    idx = x.abs().argmax(dim=0, keepdim=True)  # first of equal magnitudes, as `if (ax > amax)`
    mx = x.gather(0, idx).squeeze(0)
    zero = mx.abs() < GROUP_MAX_EPS
    mx_safe = torch.where(zero, torch.ones_like(mx), mx)
    w = x * x
    wx = w * x
    sums = torch.empty(x.shape[0], 2, x.shape[1])

    def attempt(iscale):
        lf = torch.mul(x, iscale).round_().clamp_(-nmax, nmax - 1)
        torch.mul(wx, lf, out=sums[:, 0])                          # w * x * l
        torch.mul(w, lf, out=sums[:, 1]).mul_(lf)                  # w * l * l
        sumlx, suml2 = _seqsum(sums)  # both sums, one pass
        return lf, sumlx, suml2

    lf, sumlx, suml2 = attempt(torch.tensor(float(-nmax), dtype=torch.float32) / mx_safe)
    scale = torch.where(suml2 != 0, sumlx / torch.where(suml2 != 0, suml2, torch.ones_like(suml2)),
                        torch.zeros_like(suml2))
    best = scale * sumlx
    L = lf
    for step in range(-9, 10):
        if step == 0:
            continue
        num = torch.tensor(float(nmax), dtype=torch.float32) + torch.tensor(0.1, dtype=torch.float32) * step
        lf2, sumlx2, suml22 = attempt(-num / mx_safe)
        better = (suml22 > 0) & (sumlx2 * sumlx2 > best * suml22)
        L = torch.where(better, lf2, L)
        scale = torch.where(better, sumlx2 / torch.where(better, suml22, torch.ones_like(suml22)), scale)
        best = torch.where(better, scale * sumlx2, best)
    L = torch.where(zero, torch.full_like(L, -nmax), L)  # all-zero group: L = 0 after the +nmax below
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    return scale, (L + nmax).to(torch.int32)


def q6_k(x: torch.Tensor) -> torch.Tensor:
    """float32 [n_blocks, 256] -> uint8 [n_blocks, 210]: ql[128] qh[64] scales[16] d."""
    nb = x.shape[0]
    groups = x.reshape(nb * 16, 16).t().contiguous()            # [16, nb*16]
    scales, L = _make_qx_quants(groups, 32)
    scales = scales.reshape(nb, 16)
    L = L.t().reshape(nb, 16, 16)                                # [nb, group, position]
    mag = scales.abs()
    mag = torch.where(torch.isnan(mag), torch.zeros_like(mag), mag)  # NaN (x*x overflowed) never wins `>`
    idx = mag.argmax(dim=1, keepdim=True)
    max_scale = scales.gather(1, idx).squeeze(1)
    dead = mag.gather(1, idx).squeeze(1) < GROUP_MAX_EPS
    iscale = torch.tensor(-128.0, dtype=torch.float32) / torch.where(dead, torch.ones_like(max_scale), max_scale)
    d = 1 / iscale
    sc = torch.round(iscale[:, None] * scales).clamp(max=127).to(torch.int32)
    dq = f16(d)[:, None] * sc.to(torch.float32)                 # [nb, 16]
    xs = x.reshape(nb, 16, 16)
    lnew = torch.round(xs / _where_nonzero(dq)[..., None]).clamp(-32, 31).to(torch.int32) + 32
    L = torch.where((dq != 0)[..., None], lnew, L)
    deq = (dq[..., None] * (L - 32)).reshape(nb, 256)
    L = L.reshape(nb, 256)
    ql, qh = [], []
    for half in (0, 128):
        a, b, c, e = (L[:, half + o: half + o + 32] for o in (0, 32, 64, 96))
        ql += [(a & 0xF) | ((c & 0xF) << 4), (b & 0xF) | ((e & 0xF) << 4)]
        qh.append((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6))
    out = torch.cat([torch.cat(ql, 1).to(torch.uint8), torch.cat(qh, 1).to(torch.uint8),
                     sc.to(torch.int8).view(torch.uint8), fp16_bytes(d)], dim=1)
    return torch.where(dead[:, None], torch.zeros_like(out), out), torch.where(dead[:, None], 0.0, deq)


# ---- Q4_K / Q5_K: 8 groups of 32, unsigned with a min, make_qkx2_quants ------------------------------------

def _make_qkx2_quants(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int):
    """x, w [32, G] -> (scale [G], -min [G], L [32, G]): least-squares scale/min search over nstep+1 candidates."""
    lo = torch.minimum(x.amin(dim=0), torch.zeros(()))
    hi = x.amax(dim=0)
    flat = hi == lo
    span = torch.where(flat, torch.ones_like(hi), hi - lo)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    iscale = f32(float(nmax)) / span
    scale = 1 / iscale
    L = torch.round(iscale * (x - lo)).clamp(0, nmax)
    diff = scale * L + lo - x
    best = _seqsum(w * (diff * diff))
    mn = lo
    la, err, sums = torch.empty_like(x), torch.empty_like(x), torch.empty(x.shape[0], 3, x.shape[1])
    for step in range(nstep + 1):
        # ggml updates `min` when a candidate wins, and later candidates start from it. In-place ops into reused
        # buffers: the same float32 operations in the same order, without allocating per step.
        iscale = (f32(rmin) + f32(rdelta) * step + nmax) / torch.where(flat, span, hi - mn)
        torch.sub(x, mn, out=la).mul_(iscale).round_().clamp_(0, nmax)
        wl = torch.mul(w, la, out=sums[:, 0])
        torch.mul(wl, la, out=sums[:, 1])
        torch.mul(wl, x, out=sums[:, 2])
        sum_l, sum_l2, sum_xl = _seqsum(sums)  # three sums, one pass
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = torch.where(ok, D, torch.ones_like(D))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_scale = torch.where(pos, sum_xl / torch.where(pos, sum_l2, torch.ones_like(sum_l2)), this_scale)
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        torch.mul(la, this_scale, out=err).add_(this_min).sub_(x).square_().mul_(w)  # w * diff * diff
        cur = _seqsum(err)
        better = ok & (cur < best)
        torch.where(better, la, L, out=L)
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    L = torch.where(flat, torch.zeros_like(L), L)
    return scale, -torch.where(flat, lo, mn), L.to(torch.int32)


def _k4(x: torch.Tensor, nmax: int, rmin: float, nstep: int):
    """The shared half of Q4_K and Q5_K: scales, mins and the 12 packed scale bytes, d, dmin and L [nb, 256]."""
    nb = x.shape[0]
    groups = x.reshape(nb * 8, 32).t().contiguous()             # [32, nb*8]
    # sqrtf is correctly rounded; torch's vectorized float32 sqrt (SLEEF, 0.5001 ulp) is not always. In float64 and
    # rounded once to float32 it is (53 >= 2*24 + 2 bits: no double-rounding error for sqrt)
    av = torch.sqrt((_seqsum(groups * groups) / 32).double()).float()
    w = av + groups.abs()
    scales, mins, L = _make_qkx2_quants(groups, w, nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    L = L.t().reshape(nb, 8, 32)
    zero = torch.zeros(())
    max_scale = torch.where(scales.amax(dim=1) > 0, scales.amax(dim=1), zero)  # `if (x > m) m = x` from +0.0:
    max_min = torch.where(mins.amax(dim=1) > 0, mins.amax(dim=1), zero)        # -0.0 never wins

    c63 = torch.tensor(63.0, dtype=torch.float32)
    inv_scale = torch.where(max_scale > 0, c63 / torch.where(max_scale > 0, max_scale, torch.ones_like(max_scale)),
                            torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, c63 / torch.where(max_min > 0, max_min, torch.ones_like(max_min)),
                          torch.zeros_like(max_min))
    ls = (torch.round(inv_scale[:, None] * scales).to(torch.int32) & 0xFF).clamp(max=63)  # (uint8_t) then MIN
    lm = (torch.round(inv_min[:, None] * mins).to(torch.int32) & 0xFF).clamp(max=63)
    packed = torch.cat([ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                        (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)], dim=1).to(torch.uint8)
    d, dmin = max_scale / c63, max_min / c63
    dq = f16(d)[:, None] * ls.to(torch.float32)
    mq = f16(dmin)[:, None] * lm.to(torch.float32)
    xs = x.reshape(nb, 8, 32)
    lnew = torch.round((xs + mq[..., None]) / _where_nonzero(dq)[..., None]).clamp(0, nmax).to(torch.int32)
    L = torch.where((dq != 0)[..., None], lnew, L)
    deq = (dq[..., None] * L - mq[..., None]).reshape(nb, 256)
    return torch.cat([fp16_bytes(d), fp16_bytes(dmin), packed], dim=1), L.reshape(nb, 256), deq


def q4_k(x: torch.Tensor) -> torch.Tensor:
    """float32 [n_blocks, 256] -> uint8 [n_blocks, 144]: d dmin scales[12] qs[128]."""
    head, L, deq = _k4(x, 15, -1.0, 20)
    qs = [L[:, j:j + 32] | (L[:, j + 32:j + 64] << 4) for j in (0, 64, 128, 192)]
    return torch.cat([head, torch.cat(qs, 1).to(torch.uint8)], dim=1), deq


def q5_k(x: torch.Tensor) -> torch.Tensor:
    """float32 [n_blocks, 256] -> uint8 [n_blocks, 176]: d dmin scales[12] qh[32] qs[128]."""
    head, L, deq = _k4(x, 31, -0.5, 15)
    qh = torch.zeros(x.shape[0], 32, dtype=torch.int32)
    qs = []
    for k, n in enumerate((0, 64, 128, 192)):
        l1, l2 = L[:, n:n + 32], L[:, n + 32:n + 64]
        qh |= ((l1 > 15).to(torch.int32) << (2 * k)) | ((l2 > 15).to(torch.int32) << (2 * k + 1))
        qs.append((l1 & 0xF) | ((l2 & 0xF) << 4))
    return torch.cat([head, qh.to(torch.uint8), torch.cat(qs, 1).to(torch.uint8)], dim=1), deq
