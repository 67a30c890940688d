"""ggml's weighted scale searches (ggml-quants.c), shared by the legacy kernels (legacy.py) and the k-quants
(kquants.py): one copy of each algorithm, float32 in the C's order (cfloat.py's rules: no fastmath, no FMA).

- make_qx_quants(x, w, L, nmax): ggml's make_qx_quants with rmse_type 1, the only one its quantizers call. w is
  the weight of each value: quant_weights where the C gets them, else x*x (the C computes x[i]*x[i] inline when
  qw is NULL: the same float32, so callers pass an array either way). L gets the quants offset by nmax.
- make_qkx_quants(x, w, L, Laux, nmax, rmin, rdelta, nstep, use_mad): ggml's make_qkx2_quants and
  make_qkx3_quants, which are one algorithm (qkx3 adds the NULL-weights case, x*x, which callers pass as an
  array, and tests `max <= min` where qkx2 tests `max == min`: the same, since min <= x[0] <= max and min is
  only ever raised to 0 when it is above 0). Returns (scale, the_min), the_min = -min as the C's *the_min.

- make_qp_quants(n, nmax, x, L, quant_weights): ggml's make_qp_quants, the unsigned search the weighted k-quants
  run over a super-block's sub-block scales and mins (weights: each sub-block's sum of value weights).

L and Laux may be any integer arrays (int64 is convenient); they hold what the C's int8_t / uint8_t arrays hold.
Add further shared searches (make_q3_quants, ...) here, not a second copy in a kernel module.
"""
import numpy as np
from numba import njit

from .cfloat import JIT, f32, nearest_int

GROUP_MAX_EPS = f32(1e-15)  # ggml's threshold below which a group's absmax counts as all zero


@njit(**JIT)
def make_qx_quants(x, w, L, nmax):
    """The signed scale search (rmse_type 1): nearest_int(iscale * x) clamped to [-nmax, nmax - 1], at the first
    guess -nmax / max and at 18 nearby scales, keeping the one that maximises sum(w x l)^2 / sum(w l^2)."""
    n = x.shape[0]
    mx = amax = f32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        L[:n] = 0
        return f32(0.0)
    iscale = f32(-nmax) / mx
    sumlx = suml2 = f32(0.0)
    for i in range(n):
        li = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = li + nmax
        fl = f32(li)
        sumlx += w[i] * x[i] * fl
        suml2 += w[i] * fl * fl
    scale = sumlx / suml2 if suml2 != f32(0.0) else f32(0.0)  # C's `suml2 ?`: NaN counts as true
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f32(nmax) + f32(0.1) * f32(step)) / mx
        sumlx = suml2 = f32(0.0)
        for i in range(n):
            fl = f32(max(-nmax, min(nmax - 1, nearest_int(iscale * x[i]))))
            sumlx += w[i] * x[i] * fl
            suml2 += w[i] * fl * fl
        if suml2 > f32(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(**JIT)
def make_qkx_quants(x, w, L, Laux, nmax, rmin, rdelta, nstep, use_mad):
    """The scale-and-min search: quants in [0, nmax] of (x - min) at nmax / (max - min), then nstep + 1 candidate
    scales (rmin + rdelta * step + nmax) / (max - min), each refit by weighted least squares (min clamped to <= 0),
    the first with the smallest weighted squared (use_mad: absolute) error winning. Returns (scale, -min)."""
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
        L[:n] = 0
        return f32(0.0), -lo
    fmax = f32(nmax)
    iscale = fmax / (hi - lo)
    scale = f32(1.0) / iscale
    best = f32(0.0)
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - lo))))
        diff = scale * f32(L[i]) + lo - x[i]
        best += w[i] * (abs(diff) if use_mad else diff * diff)
    if nstep < 1:
        return scale, -lo
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
                cur += w[i] * (abs(diff) if use_mad else diff * diff)
            if cur < best:
                L[:n] = Laux[:n]
                best = cur
                scale = this_scale
                lo = this_min
    return scale, -lo


@njit(**JIT)
def make_qp_quants(n, nmax, x, L, quant_weights):
    """ggml's make_qp_quants: unsigned quants in [0, nmax] of x[:n] (the k-quants' sub-block scales and mins) at
    nmax / max and 8 nearby scales, the smallest weighted squared error choosing one, then up to 5 passes moving
    single quants while sum(w x l)^2 / sum(w l^2) grows. Returns sumlx / suml2.

    L holds what the C's uint8_t array holds (quants & 0xFF), and reads it back as the C does: a negative x (a
    negative scale from make_qkx3_quants) wraps there, in the first error and in the refinement passes."""
    mx = f32(0.0)
    for i in range(n):
        mx = mx if mx > x[i] else x[i]  # MAX(max, x[i]): a NaN is replaced by the next value
    if mx < GROUP_MAX_EPS:
        L[:n] = 0
        return f32(0.0)
    fmax = f32(nmax)
    iscale = fmax / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = f32(1.0) / iscale
    best_mse = f32(0.0)
    for i in range(n):
        diff = x[i] - scale * f32(L[i])
        best_mse += quant_weights[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (f32(0.1) * f32(step) + fmax) / mx
        scale_is = f32(1.0) / iscale_is
        mse = f32(0.0)
        for i in range(n):
            diff = x[i] - scale_is * f32(min(nmax, nearest_int(iscale_is * x[i])))
            mse += quant_weights[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = suml2 = f32(0.0)
    for i in range(n):
        li = min(nmax, nearest_int(iscale * x[i]))
        L[i] = li & 0xFF
        w = quant_weights[i]
        sumlx += w * x[i] * f32(li)
        suml2 += w * f32(li) * f32(li)
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            fl = f32(L[i])
            slx = sumlx - w * x[i] * fl
            sl2 = suml2 - w * fl * fl
            if slx > f32(0.0) and sl2 > f32(0.0):
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w * x[i] * f32(new_l)
                    sl2 += w * f32(new_l) * f32(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if not n_changed:
            break
    return sumlx / suml2 if suml2 > f32(0.0) else f32(0.0)


@njit(**JIT)
def make_q3_quants(x, L, nmax):
    """ggml's make_q3_quants with do_rmse (the only way Q3_K calls it), weights x*x: quants nearest_int(-nmax / max
    * x) in [-nmax, nmax - 1], then up to 5 passes moving single quants to the least-squares level while
    sum(w x l)^2 / sum(w l^2) grows. L gets the quants offset by nmax; returns sumlx / suml2."""
    n = x.shape[0]
    mx = amax = f32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        L[:n] = 0
        return f32(0.0)
    iscale = f32(-nmax) / mx
    sumlx = suml2 = f32(0.0)
    for i in range(n):
        li = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = li
        w = x[i] * x[i]
        sumlx += w * x[i] * f32(li)
        suml2 += w * f32(li) * f32(li)
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fl = f32(L[i])
            slx = sumlx - w * x[i] * fl
            if slx > f32(0.0):
                sl2 = suml2 - w * fl * fl
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    slx += w * x[i] * f32(new_l)
                    sl2 += w * f32(new_l) * f32(new_l)
                    if sl2 > f32(0.0) and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if not n_changed:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > f32(0.0) else f32(0.0)
