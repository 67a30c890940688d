"""ggml's weighted scale searches (ggml-quants.c), shared by the legacy kernels (legacy.py) and the k-quants
(kquants.py, kquants_low.py): one copy of each algorithm, float32 in the C's order (cfloat.py's rules: no
fastmath, no FMA).

The k-quants call the lane forms, which run one search on many groups side by side: group k of a tile is column k
of xt [n, lanes] (its weights column k of wt), so the innermost loops run over lanes with no dependency and LLVM
turns them into vector instructions, while each lane does the C's float32 operations in the C's order (its sums
still left to right over its group). The C's branches become selects: a lane computes every candidate and keeps
the ones the C keeps, by the same strict comparisons; where the C stops early (an all-zero or flat group, a
refinement pass that changes nothing) the lane's result is replaced, or the extra passes provably change nothing.
Quants come back as float32 in Lt [n, lanes], rebuilt at the end from the winning candidate's iscale (and min):
the same float operations give the same integers, and no per-candidate copy is needed. `work` [LANE_ROWS, lanes]
holds the per-lane state.

- make_qx_lanes(xt, wt, Lt, out, work, nmax): ggml's make_qx_quants with rmse_type 1, the only one its quantizers
  call. wt: quant_weights where the C gets them, else x*x (the C computes x[i]*x[i] inline when qw is NULL: the
  same float32, so callers pass a tile either way). Lt gets the quants offset by nmax, out[k] the scale.
- make_qkx_lanes(xt, wt, Lt, Laux, out, work, nmax, rmin, rdelta, nstep, use_mad): ggml's make_qkx2_quants and
  make_qkx3_quants, which are one algorithm (qkx3 adds the NULL-weights case, x*x, which callers pass as weights,
  and tests `max <= min` where qkx2 tests `max == min`: the same, since min <= x[0] <= max and min is only ever
  raised to 0 when it is above 0). out[0] the scale, out[1] the_min = -min as the C's *the_min.
- make_q3_lanes(xt, Lt, Laux, out, work, nmax): ggml's make_q3_quants with do_rmse (Q3_K's only use).

Scalar forms, one group a call, for legacy.py's importance-weighted Q4_0/Q4_1/Q5_0/Q5_1 (a module the k-quant
work does not own; its blocks could be laned the same way): make_qx_quants(x, w, L, nmax) and make_qkx_quants(x,
w, L, Laux, nmax, rmin, rdelta, nstep, use_mad) -> (scale, the_min), the same algorithms, checked equal to the
lane forms bit for bit. And make_qp_quants(n, nmax, x, L, quant_weights): ggml's make_qp_quants, the unsigned
search the weighted k-quants run once per super-block over its 8 or 16 group scales and mins (weights: each
group's sum of value weights), under 2% of their time: not laned.

L and Laux (scalar forms) may be any integer arrays (int64 is convenient); they hold what the C's int8_t / uint8_t
arrays hold. Add further shared searches here, not a second copy in a kernel module.

Numba's cache does not see changes in this file from the kernels that inline it: after editing it, delete the
kernels' cache (weightsmith/quant/__pycache__/k*.nb?) or they keep running the old searches.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

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


# ---- The lane forms -------------------------------------------------------------------------------------------
# Every select is between values already loaded (a value loaded only in the else branch becomes a masked load), and
# what a lane keeps from step to step is written beside its old value, never over it: a select stored back where
# its old value was read compiles to a masked store, and AVX2's masked loads and stores cost some ten cycles each
# on Zen 3 (measured: the Q3_K refinement ran 2x slower with them). So the state rows come in pairs, cur and nxt,
# swapped after each step (`_swap`), and the refinement passes alternate two tiles of quants.

@intrinsic
def near_clamp(typingctx, v, lo, hi):
    """float32(max(lo, min(hi, nearest_int(v)))), cfloat.nearest_int's bits in int32 arithmetic (numba would widen
    it to int64, which halves the lanes of a vector): the same integers for every float32, NaN and inf included."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        b = builder.bitcast(builder.fadd(args[0], ir.Constant(ir.FloatType(), 12582912.0)), i32)
        b = builder.sub(builder.and_(b, ir.Constant(i32, 0x7FFFFF)), ir.Constant(i32, 0x400000))
        lo32, hi32 = builder.trunc(args[1], i32), builder.trunc(args[2], i32)
        b = builder.select(builder.icmp_signed("<", hi32, b), hi32, b)
        b = builder.select(builder.icmp_signed("<", b, lo32), lo32, b)
        return builder.sitofp(b, ir.FloatType())
    return types.float32(types.float32, types.int64, types.int64), codegen


LANE_ROWS = 32  # rows of per-lane state the lane searches use in `work` [LANE_ROWS, lanes]


def lane_work(lanes: int):
    """Scratch for the lane searches (numba callers: np.empty((LANE_ROWS, lanes), np.float32))."""
    return np.empty((LANE_ROWS, lanes), np.float32)


@njit(**JIT)
def _qx_sums(xt, wt, iscale, slx, sl2, nmax):
    """Each lane's sum(w x l) and sum(w l^2) for l = its quants at iscale, left to right as the C sums."""
    n, m = xt.shape
    for k in range(m):
        slx[k] = sl2[k] = f32(0.0)
    for i in range(n):
        for k in range(m):
            l = near_clamp(iscale[k] * xt[i, k], -nmax, nmax - 1)
            slx[k] += wt[i, k] * xt[i, k] * l
            sl2[k] += wt[i, k] * l * l


@njit(**JIT)
def _amax_step(xt, i, cur, nxt):
    """Value i of each lane into its running (x of largest |x|, largest |x|) in rows 0, 1: a strictly larger |x|
    replaces them (the first one of ties stays)."""
    for k in range(xt.shape[1]):
        v, mx, amax = xt[i, k], cur[0, k], cur[1, k]
        bigger = abs(v) > amax
        nxt[0, k] = v if bigger else mx
        nxt[1, k] = abs(v) if bigger else amax


@njit(**JIT)
def _signed_amax(xt, pair):
    """Each lane's largest |x| and the x it came from, in pair[0] rows 0, 1 (pair [2, 2, lanes]; pair[1] scratch)."""
    pair[0, :2] = f32(0.0)
    for i in range(xt.shape[0]):
        _amax_step(xt, i, pair[i % 2], pair[1 - i % 2])
    if xt.shape[0] % 2:
        pair[0, :2] = pair[1, :2]


@njit(**JIT)
def _swap(pair, now):
    """pair[now] is a step's state, pair[1 - now] its successor's."""
    return pair[now], pair[1 - now]


@njit(**JIT)
def make_qx_lanes(xt, wt, Lt, out, work, nmax):
    """make_qx_quants on each column of xt (weights wt): Lt the quants offset by nmax, out[k] the scale."""
    n, m = xt.shape
    amaxes = work[0:4].reshape((2, 2, m))
    _signed_amax(xt, amaxes)
    mx, amax = work[0], work[1]
    iscale, slx, sl2 = work[4], work[5], work[6]
    state = work[8:14].reshape((2, 3, m))  # per lane: the winner's iscale, its scale, its sumlx * scale
    for k in range(m):
        iscale[k] = f32(-nmax) / mx[k]
    _qx_sums(xt, wt, iscale, slx, sl2, nmax)
    for k in range(m):
        scale = slx[k] / sl2[k] if sl2[k] != f32(0.0) else f32(0.0)  # C's `suml2 ?`: NaN counts as true
        state[0, 0, k], state[0, 1, k], state[0, 2, k] = iscale[k], scale, scale * slx[k]
    now = 0
    for step in range(-9, 10):
        if step == 0:
            continue
        for k in range(m):
            iscale[k] = -(f32(nmax) + f32(0.1) * f32(step)) / mx[k]
        _qx_sums(xt, wt, iscale, slx, sl2, nmax)
        cur, nxt = _swap(state, now)
        for k in range(m):
            a, b, bis, scale, best = slx[k], sl2[k], cur[0, k], cur[1, k], cur[2, k]
            win = (b > f32(0.0)) & (a * a > best * b)
            s = a / b
            nxt[0, k] = iscale[k] if win else bis
            nxt[1, k] = s if win else scale
            nxt[2, k] = s * a if win else best
        now = 1 - now
    bis, scale = state[now, 0], state[now, 1]
    for k in range(m):
        sc = scale[k]
        out[k] = f32(0.0) if amax[k] < GROUP_MAX_EPS else sc
    for i in range(n):
        for k in range(m):
            l = near_clamp(bis[k] * xt[i, k], -nmax, nmax - 1) + f32(nmax)
            Lt[i, k] = f32(0.0) if amax[k] < GROUP_MAX_EPS else l


@njit(**JIT)
def _range_step(xt, i, cur, nxt):
    """Value i of each lane into its running min and max (rows 0, 1), replaced only by a strictly smaller / larger
    value as the C's `if (x[i] < min) min = x[i]` does (it tells -0 from 0)."""
    for k in range(xt.shape[1]):
        v, lo, hi = xt[i, k], cur[0, k], cur[1, k]
        nxt[0, k] = v if v < lo else lo
        nxt[1, k] = v if v > hi else hi


@njit(**JIT)
def make_qkx_lanes(xt, wt, Lt, Laux, out, work, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx_quants on each column of xt (weights wt): Lt the quants, out[0, k] the scale, out[1, k] the_min
    (-min). Laux [n, lanes]: scratch for each candidate's quants."""
    n, m = xt.shape
    ranges = work[0:4].reshape((2, 2, m))
    sum_w, sum_x, hi, flat, iscale, sl, sl2, sxl, cs, cm, ok = (work[4], work[5], work[6], work[7], work[8],
                                                               work[9], work[10], work[11], work[12], work[13],
                                                               work[14])
    state = work[15:25].reshape((2, 5, m))  # per lane: its min so far, the winner's iscale, min, error, scale
    for k in range(m):
        ranges[0, 0, k] = ranges[0, 1, k] = xt[0, k]
        sum_w[k] = wt[0, k]
        sum_x[k] = sum_w[k] * xt[0, k]
    for i in range(1, n):
        _range_step(xt, i, ranges[(i - 1) % 2], ranges[i % 2])
        for k in range(m):
            sum_w[k] += wt[i, k]
            sum_x[k] += wt[i, k] * xt[i, k]
    lo0, hi0 = ranges[(n - 1) % 2, 0], ranges[(n - 1) % 2, 1]
    fmax = f32(nmax)
    lo = state[0, 0]
    for k in range(m):
        v, h = lo0[k], hi0[k]
        lo[k] = f32(0.0) if v > f32(0.0) else v
        hi[k] = h
        flat[k] = f32(1.0) if h == lo[k] else f32(0.0)  # the C returns here: no quants, no scale
        iscale[k] = fmax / (h - lo[k])
        cs[k] = f32(1.0) / iscale[k]  # the first guess's scale
        sl[k] = f32(0.0)
    for i in range(n):
        for k in range(m):
            diff = cs[k] * near_clamp(iscale[k] * (xt[i, k] - lo[k]), 0, nmax) + lo[k] - xt[i, k]
            sl[k] += wt[i, k] * (abs(diff) if use_mad else diff * diff)
    for k in range(m):
        state[0, 1, k], state[0, 2, k], state[0, 3, k], state[0, 4, k] = iscale[k], lo[k], sl[k], cs[k]
    now = 0
    for step in range(nstep + 1 if nstep >= 1 else 0):
        # lo is each lane's best min so far: ggml updates it when a candidate wins, later candidates start from it
        cur, nxt = _swap(state, now)
        lo = cur[0]
        for k in range(m):
            iscale[k] = (rmin + rdelta * f32(step) + fmax) / (hi[k] - lo[k])
            sl[k] = sl2[k] = sxl[k] = f32(0.0)
        for i in range(n):
            for k in range(m):
                l = near_clamp(iscale[k] * (xt[i, k] - lo[k]), 0, nmax)
                Laux[i, k] = l
                sl[k] += wt[i, k] * l
                sl2[k] += wt[i, k] * l * l
                sxl[k] += wt[i, k] * l * xt[i, k]
        for k in range(m):
            a, b, c, w, x = sl[k], sl2[k], sxl[k], sum_w[k], sum_x[k]
            D = w * b - a * a
            this_scale = (w * c - x * a) / D
            this_min = (b * x - a * c) / D
            clamped = this_min > f32(0.0)
            cs[k] = c / b if clamped else this_scale
            cm[k] = f32(0.0) if clamped else this_min
            ok[k] = f32(1.0) if D > f32(0.0) else f32(0.0)  # the C looks at the candidate only then
            sl[k] = f32(0.0)  # its error
        for i in range(n):
            for k in range(m):
                diff = cs[k] * Laux[i, k] + cm[k] - xt[i, k]
                sl[k] += wt[i, k] * (abs(diff) if use_mad else diff * diff)
        for k in range(m):
            err, cur_lo, bis, blo, best, sc = sl[k], lo[k], cur[1, k], cur[2, k], cur[3, k], cur[4, k]
            win = (ok[k] != f32(0.0)) & (err < best)
            nxt[0, k] = cm[k] if win else cur_lo
            nxt[1, k] = iscale[k] if win else bis
            nxt[2, k] = cur_lo if win else blo
            nxt[3, k] = err if win else best
            nxt[4, k] = cs[k] if win else sc
        now = 1 - now
    lo, bis, blo, scale = state[now, 0], state[now, 1], state[now, 2], state[now, 4]
    for k in range(m):
        is_flat, sc, h, mn = flat[k] != f32(0.0), scale[k], hi[k], lo[k]
        out[0, k] = f32(0.0) if is_flat else sc
        out[1, k] = -h if is_flat else -mn  # a flat lane's min is its max
    for i in range(n):
        for k in range(m):
            l = near_clamp(bis[k] * (xt[i, k] - blo[k]), 0, nmax)
            Lt[i, k] = f32(0.0) if flat[k] != f32(0.0) else l


@njit(**JIT)
def _q3_move(xt, i, L_in, L_out, cur, nxt, changed, nmax):
    """One refinement move of make_q3_quants on value i of each lane: the quant the least-squares scale asks for,
    taken when it raises sum(w x l)^2 / sum(w l^2); the lane's sums (rows 0, 1) go from cur to nxt."""
    for k in range(xt.shape[1]):
        v, fl, sumlx, suml2 = xt[i, k], L_in[i, k], cur[0, k], cur[1, k]
        w = v * v
        slx = sumlx - w * v * fl
        sl2 = suml2 - w * fl * fl
        new_l = near_clamp(v * sl2 / slx, -nmax, nmax - 1)
        t1 = slx + w * v * new_l
        t2 = sl2 + w * new_l * new_l
        take = (slx > f32(0.0)) & (new_l != fl) & (t2 > f32(0.0)) & (t1 * t1 * suml2 > sumlx * sumlx * t2)
        L_out[i, k] = new_l if take else fl
        nxt[0, k] = t1 if take else sumlx
        nxt[1, k] = t2 if take else suml2
        changed[k] = changed[k] + (f32(1.0) if take else f32(0.0))


@njit(**JIT)
def make_q3_lanes(xt, Lt, Laux, out, work, nmax):
    """make_q3_quants on each column of xt: Lt the quants offset by nmax, out[k] the scale (Laux: scratch). A lane
    runs the refinement passes until one changes no lane's quants, or 5, where the C stops after one that changes
    nothing in its group: such a pass leaves the lane as it was, so the next ones do the same."""
    n, m = xt.shape
    amaxes = work[0:4].reshape((2, 2, m))
    _signed_amax(xt, amaxes)
    mx, amax = work[0], work[1]
    iscale, changed = work[4], work[5]
    sums = work[8:12].reshape((2, 2, m))
    slx, sl2 = sums[0, 0], sums[0, 1]
    for k in range(m):
        iscale[k] = f32(-nmax) / mx[k]
        slx[k] = sl2[k] = f32(0.0)
    for i in range(n):
        for k in range(m):
            v = xt[i, k]
            l = near_clamp(iscale[k] * v, -nmax, nmax - 1)
            Lt[i, k] = l
            w = v * v
            slx[k] += w * v * l
            sl2[k] += w * l * l
    src, dst = Lt, Laux
    now = 0
    for itry in range(5):
        changed[:] = f32(0.0)
        for i in range(n):
            _q3_move(xt, i, src, dst, sums[now], sums[1 - now], changed, nmax)
            now = 1 - now
        src, dst = dst, src
        if changed.max() == f32(0.0):
            break
    slx, sl2 = sums[now, 0], sums[now, 1]
    for k in range(m):
        a, b = slx[k], sl2[k]
        scale = a / b if b > f32(0.0) else f32(0.0)
        out[k] = f32(0.0) if amax[k] < GROUP_MAX_EPS else scale
    for i in range(n):
        for k in range(m):
            l = src[i, k] + f32(nmax)
            Lt[i, k] = f32(0.0) if amax[k] < GROUP_MAX_EPS else l


@njit(**JIT)
def tile_columns(src, g0, gl, xt):
    """Groups g0, g0 + 1, ... of gl values of src (wrapping around its end: an importance matrix serves every
    row) into the columns of the tile xt [gl, lanes]."""
    groups = src.shape[0] // gl
    for k in range(xt.shape[1]):
        c = (g0 + k) % groups * gl
        for i in range(gl):
            xt[i, k] = src[c + i]


@njit(**JIT)
def sum_lanes(xt, out):
    """Each column's sum, left to right."""
    n, m = xt.shape
    for k in range(m):
        out[k] = f32(0.0)
    for i in range(n):
        for k in range(m):
            out[k] += xt[i, k]
