"""GPTQ (Frantar et al. 2022, arXiv:2210.17323) for compressed-tensors' symmetric int4/int8 and, with a grid in
place of the scheme, inside the ggml block types (ggml_grid.Grid): array functions only.

Given a Linear weight W [out, in] and its input Hessian H = 2/N sum_t x_t x_t^T (N calibration tokens, Hessian
below), columns are quantized one at a time and each one's rounding error is spread over the columns not yet
quantized, weighted by the upper Cholesky factor U of H^-1 (the paper's Algorithm 1, with its lazy batches of 128
columns: a column's error reaches the columns of its own batch at once, the later ones in one matmul at its end).
What llm-compressor's GPTQModifier does, step for step:
  - dead inputs (diag(H) == 0: a column no token ever activates) get H[j, j] = 1 and W[:, j] = 0;
  - dampening: `damp` times the mean of diag(H) added to the diagonal; where H + damp still cannot be factored,
    ten times more until it can (the caller is told how much: never a silent round-to-nearest);
  - activation order `static`: columns in decreasing diag(H) (stable sort), with the scales of the declared
    scheme computed first on the original weights in their natural groups, so the stored tensors need no g_idx;
    `none`: natural order, and a group's scale is computed when its first column comes up, on the weights as
    the earlier columns' errors left them (the paper's reference code; llm-compressor 0.14 instead takes these
    scales, too, from the original weights); per-channel scales (int8) always come from the original weights;
  - scales are compressed-tensors' (compressed.scales: min-max symmetric, in the model's float dtype; or the
    scheme's mse observer, compressed.observed_scales, each column's error weighted by diag(H)), and each
    column is q = clamp(round(w / scale), qmin, qmax), half to even, so the integers mean exactly q * scale.
A ggml grid changes only where the scales come from and how a column is rounded: natural order, each block's
stored fields fixed by the type's own quantizer when its first column comes up, each value rounded to the nearest
point of the grid those fields define (ggml_grid's docstring); the Hessian, dampening, dead columns, lazy batches
and error feedback are the ones above.
Nothing here runs a model: verify.calibrate streams the activations, convert.gptq_stream drives both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from .. import dtypes
from ..errors import BadInput
from . import compressed
from .cfloat import JIT
from .ggml_grid import nearest
from .types import _cores, parallel_map

BLOCK = 128          # columns per lazy batch
MAX_DAMP = 100.0     # dampening (fraction of the mean diagonal) beyond which a Hessian is given up on
ACTORDERS = ("static", "none")
OUTPUT_LOSS_ROWS = 2048  # output_losses on at most this many rows (evenly strided), scaled to all of them
HESSIAN_BAND = 144       # rows of the Hessian's upper triangle accumulated per matmul, at least


class Hessian:
    """The running sum of x x^T over every row x of the inputs (tokens) one Linear sees, in float32."""

    def __init__(self, n: int, device=None):
        self.sum = torch.zeros(n, n, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, x: torch.Tensor):
        """sum x x^T is symmetric: only its upper block triangle is accumulated (torch has no syrk), in bands of
        about n / 8 rows (a band of at least HESSIAN_BAND): 0.64x the time of the whole product at n = 1536 and
        0.73x at 576 (512 tokens, 2 cores). matrix() mirrors it."""
        x = x.reshape(-1, x.shape[-1]).to(self.sum.device, torch.float32)
        n = x.shape[1]
        band = max(HESSIAN_BAND, -(-n // 8))
        for i in range(0, n, band):
            self.sum[i:i + band, i:].addmm_(x[:, i:i + band].T, x[:, i:])
        self.count += x.shape[0]

    def matrix(self) -> torch.Tensor:
        """H = 2/N sum x x^T: tr(dW H dW^T) / 2 is then the mean squared output error a change dW causes."""
        if self.count == 0:
            raise BadInput("GPTQ needs calibration tokens: none reached this layer")
        H = torch.triu(self.sum)
        H += torch.triu(self.sum, 1).T
        return H.mul_(2.0 / self.count)


@dataclass
class Result:
    q: torch.Tensor        # int16 [out, in], the integers in the original column order (a grid's: level indices)
    scale: torch.Tensor | None  # [out, in / group] (or [out, 1]) in the model's float dtype; None for a grid
    loss: float            # GPTQ's own figure: sum of err^2 / 2 (the damped Hessian's output error)
    damp: float            # the dampening used (a fraction of mean diag(H)): more than asked when needed
    dead: int              # input columns no token activated
    lam: float = 0.0       # what the dampening added to each diagonal entry (damp x the mean diagonal)
    dead_cols: torch.Tensor | None = None  # bool [in], in the original order: the dead columns
    data: np.ndarray | None = None        # a grid's bytes (ggml_grid.Grid.pack)
    values: torch.Tensor | None = None    # a grid's: float32 [out, in], the values GPTQ rounded to (data's)

    def output_loss(self, w: torch.Tensor, deq: torch.Tensor) -> float:
        """tr(dw H dw^T) / 2 of this result's own change dw = w - deq (deq: its dequantized values), from GPTQ's
        loss, which is exactly the quadratic form of the Hessian GPTQ factored (each column's step is exact for a
        quadratic; tests/test_gptq checks it): H + lam I, with a dead column's weights zeroed first and its
        diagonal 1 + lam. Taking those parts off gives the figure for H itself without output_losses' [out, in]
        x [in, in] matmul: lam |dw|^2 / 2 over the live columns, (1 + lam) |deq|^2 / 2 over the dead ones (zero
        but for a grid whose point nearest 0 is not 0)."""
        dead = self.dead_cols.to(w.device)
        live = (w[:, ~dead] - deq[:, ~dead]).double().pow(2).sum()
        gone = deq[:, dead].double().pow(2).sum()
        return self.loss - (self.lam * float(live) + (1 + self.lam) * float(gone)) / 2

    def packed(self, s: compressed.Scheme) -> compressed.Packed:
        return compressed.pack(self.q, self.scale, s)

    def dequantized(self, s: compressed.Scheme) -> torch.Tensor:
        """q * scale in float32, as compressed-tensors decompresses it."""
        return compressed.dequantize(self.packed(s).packed, self.scale, s)


_NO_LEVELS = np.empty(0, np.float32)


@dataclass
class Factor:
    """What GPTQ takes from one input Hessian, whatever weight it quantizes: the column order, the dead columns and
    the upper Cholesky factor U of the damped inverse in that order. Computed once per Hessian (factor()) and
    shared by the weights that read the same input (q/k/v, gate/up): the factorization was 11% of GPTQ's time
    when done for each of them."""
    col: torch.Tensor     # the order columns are quantized in (original indices)
    dead: torch.Tensor    # bool [in], in that order: columns no token activated
    U: torch.Tensor       # [in, in], in that order
    damp: float           # the dampening used: more than asked when needed
    actorder: str
    diag: torch.Tensor    # diag(H) in the original order: the mse observer's column weights
    lam: float = 0.0      # what the dampening added to each diagonal entry


def factor(H: torch.Tensor, damp: float = 0.01, actorder: str = "static", dtype=torch.float32) -> Factor:
    """H [in, in] (Hessian.matrix()) prepared for quantize(): activation order `static` sorts the columns by
    decreasing diag(H) (stable), `none` keeps them; dead columns get H[j, j] = 1; then _inverse_factor."""
    if actorder not in ACTORDERS:
        raise BadInput(f"--actorder {actorder}: one of {', '.join(ACTORDERS)}")
    if not torch.isfinite(H).all():
        raise BadInput("GPTQ: the calibration activations are not finite (NaN or Inf in the Hessian)")
    col = torch.arange(H.shape[0], device=H.device)
    diag = torch.diagonal(H).to(dtype).clone()
    if actorder == "static":
        col = torch.argsort(diag, descending=True, stable=True)
        H = H.to(dtype)[col][:, col]
    else:
        H = H.to(dtype).clone()
    dead = torch.diagonal(H) == 0
    H.diagonal()[dead] = 1
    U, used, lam = _inverse_factor(H, damp)
    return Factor(col, dead, U, used, actorder, diag, lam)


def quantize(w: torch.Tensor, H: torch.Tensor | Factor, s, float_dtype=None, damp: float = 0.01,
             actorder: str = "static", block: int = BLOCK, dtype=torch.float32) -> Result:
    """GPTQ of one weight w [out, in] against H [in, in] (Hessian.matrix(), or its factor(), which damp and
    actorder then come from). float_dtype: the model's (scales are stored in it); dtype: the working precision
    (float32 as llm-compressor; float64 in the tests).

    s: a compressed-tensors scheme, or a grid (ggml_grid.Grid: a ggml block type's, the same algorithm with its
    columns rounded to the grid its quantizer fixes for each block when the block's first column comes up, in
    natural order only: actorder must be none)."""
    actorder = H.actorder if isinstance(H, Factor) else actorder
    grid = None if isinstance(s, compressed.Scheme) else s
    if grid is not None and actorder != "none":
        raise BadInput("GPTQ in a ggml block type runs in natural column order (a block's scales are fixed before "
                       "its columns are rounded): --actorder none")
    f = H if isinstance(H, Factor) else factor(H.to(w.device), damp, actorder, dtype)
    n_out, n_in = w.shape
    G = grid.group if grid else compressed.group_size(s, n_in)
    W = w.to(dtype).clone()
    static = actorder == "static"
    scale = None
    if grid is None:
        dt = float_dtype if isinstance(float_dtype, torch.dtype) else dtypes.torch_dtype(float_dtype)
        if G is None or static:  # per channel, or static groups: every scale from the original weights
            scale = compressed.observed_scales(w, s, dt, G or n_in, f.diag)
        else:              # filled as each group comes up
            scale = torch.empty(n_out, n_in // G, dtype=dt, device=W.device)
    col, dead, U = f.col.to(W.device), f.dead.to(W.device), f.U.to(W.device, dtype)
    if static:
        W = W[:, col]
    group = col.cpu() // G if G else torch.zeros(n_in, dtype=torch.long)  # each column's scale (original group)
    W[:, dead] = 0
    Q = torch.empty_like(W)
    V = torch.empty(n_out, n_in, dtype=torch.float32) if grid else None  # a grid's values, as rounded
    losses = torch.zeros((), dtype=dtype, device=W.device)
    # lazy batches a multiple of the group (powers of two): a group never straddles two batches; a grid whose
    # quantizer reads the whole row: one block a batch, so that the row is up to date when the block comes up
    step = G if grid and grid.row_context else max(block, G or 0)
    if grid:
        qmin = qmax = 0
    else:
        qmin, qmax = (np.dtype(str(dtype).removeprefix("torch.")).type(v) for v in (s.qmin, s.qmax))
    for i1 in range(0, n_in, step):
        i2 = min(i1 + step, n_in)
        # the batch's own columns, one at a time, in the numba kernel on the CPU (wherever W lives)
        W1, U1 = W[:, i1:i2].cpu().clone(), U[i1:i2, i1:i2].cpu().contiguous()
        Q1, Err1 = torch.empty_like(W1), torch.zeros_like(W1)
        # the columns a scale is known for: the whole batch, or (actorder none) one group, its scale computed
        # from the weights as the batch's earlier columns left them
        parts = range(0, i2 - i1, G) if G and not static else [0]
        for c0 in parts:
            c1 = c0 + G if G and not static else i2 - i1
            if grid:
                row = torch.cat((V[:, :i1], W[:, i1:].cpu().float()), 1) if grid.row_context else None
                A, B = grid.fix(i1 + c0, W1[:, c0:c1], row)
                S1, B1, levels = torch.from_numpy(A), B, grid.levels
            else:
                if G and not static:
                    scale[:, (i1 + c0) // G] = compressed.observed_scales(
                        W1[:, c0:c1], s, dt, G, f.diag[i1 + c0:i1 + c1])[:, 0].to(scale.device)
                S1 = scale.cpu()[:, group[i1 + c0:i1 + c1]].to(dtype).contiguous()
                B1, levels = _NO_LEVELS.reshape(1, 0), _NO_LEVELS
            n = -(-n_out // _row_tasks(n_out, c1 - c0))  # rows per task
            parallel_map(lambda r: _columns(W1[r:r + n].numpy(), U1.numpy(), S1[r:r + n].numpy(),
                                            B1[r:r + n], levels, Q1[r:r + n].numpy(), Err1[r:r + n].numpy(),
                                            c0, c1, qmin, qmax),
                         range(0, n_out, n))
        Q[:, i1:i2] = Q1.to(Q.device)
        if grid:
            V[:, i1:i2] = W1.float()  # the kernel left each rounded column's grid value there
        Err1 = Err1.to(W.device)
        losses += Err1.pow(2).sum() / 2
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if static:
        Q = Q[:, torch.argsort(col)]
    dead_cols = f.diag == 0
    if grid:
        return Result(Q.to(torch.int16).cpu(), None, float(losses), f.damp, int(dead.sum()), f.lam, dead_cols,
                      data=grid.pack(Q.cpu()), values=V)
    return Result(Q.to(torch.int16), scale, float(losses), f.damp, int(dead.sum()), f.lam, dead_cols)


ROW_WORK = 1 << 20  # multiply-adds per task at least: a thread per core only where each has this much to do


def _row_tasks(n_out: int, n_cols: int) -> int:
    """How many row ranges the column kernel is split into (rows are independent: each its own GPTQ)."""
    return max(1, min(_cores(), n_out * n_cols * 64 // ROW_WORK, n_out))


@njit(**JIT)
def _columns(W1, U1, S1, B1, levels, Q1, E1, c0, c1, qmin, qmax):
    """GPTQ's inner loop (the paper's Algorithm 1) over columns c0..c1 of one lazy batch, row by row (each row of W
    is quantized independently; U1 is shared): column i is rounded, and its error, divided by U1[i, i], is taken
    off the batch's later columns times U1's row i. The same operations in the same order as torch's elementwise
    ones, in the arrays' own dtype (float32 or float64).
    Rounding: with no levels, to the scale S1[:, i - c0] (q = clamp(round(w / scale)), half to even); with levels
    (a ggml grid), to the nearest of S1 * levels[k] + B1 in float32 (ggml_grid.nearest), the column left holding
    that value. Q1, E1: the integers (level indices) and the scaled errors, per column. One kernel call instead of
    a few torch ops per column: those ops on a few hundred values each cost their thread wake-ups more than their
    arithmetic."""
    width = W1.shape[1]
    grid = levels.shape[0] > 0
    for r in range(W1.shape[0]):
        for i in range(c0, c1):
            sc = S1[r, i - c0]
            w = W1[r, i]
            if grid:
                kq, v = nearest(w, sc, B1[r, i - c0], levels)
                err = (w - v) / U1[i, i]
                Q1[r, i] = kq
                W1[r, i] = v
            else:
                q = min(max(np.rint(w / sc), qmin), qmax)
                err = (w - q * sc) / U1[i, i]
                Q1[r, i] = q
            E1[r, i] = err
            for k in range(i + 1, width):
                W1[r, k] -= err * U1[i, k]


def _inverse_factor(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float, float]:
    """The upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, the damp it took (the one asked for, or
    ten times more each time H + damp cannot be factored: a Hessian that is singular in floating point) and what
    that added to the diagonal.
    U without forming the inverse: with J the reversal, J Hd J = C C^T (C lower) gives Hd = R R^T, R = J C J upper,
    so Hd^-1 = (R^-1)^T R^-1 and U = R^-1 = J C^-1 J (the unique factor: C's diagonal is positive). One Cholesky
    and one triangular inverse, half the work of factor, invert, factor again (llm-compressor's), and closer to the
    float64 result (1.1e-7 against 2.6e-7 relative, a 1536-wide Hessian)."""
    mean = torch.diagonal(H).mean()
    frac = damp
    while True:
        Hd = H.flip(0, 1)
        Hd.diagonal().add_(frac * mean)
        C, info = torch.linalg.cholesky_ex(Hd)
        del Hd  # a 1536-wide Hessian's copies are 9.4 MB each, and GPTQ's peak memory is here
        if int(info) == 0:
            U = _lower_inverse(C).flip(0, 1)
            if torch.isfinite(U).all():
                return U, frac, float(frac * mean)
        if frac >= MAX_DAMP:
            raise BadInput(f"GPTQ: the Hessian cannot be factored even with dampening {frac:g} x its mean diagonal")
        frac = frac * 10 if frac > 0 else 1e-4


def _lower_inverse(C: torch.Tensor, bands: int = 4) -> torch.Tensor:
    """C^-1 of a lower triangular C, a band of columns at a time: the inverse is lower triangular, so columns
    j0.. solve only C[j0:, j0:] (about half the work of one solve against the whole identity: 1536 wide, 43 ms)."""
    n = C.shape[0]
    X = torch.zeros_like(C)
    step = -(-n // bands)
    for j0 in range(0, n, step):
        j1 = min(j0 + step, n)
        eye = torch.eye(n - j0, j1 - j0, dtype=C.dtype, device=C.device)
        X[j0:, j0:j1] = torch.linalg.solve_triangular(C[j0:, j0:], eye, upper=False)
    return X


def output_losses(H: torch.Tensor, *dws: torch.Tensor) -> list[float]:
    """tr(dw H dw^T) / 2 for each dw: the mean over calibration tokens of |dw x|^2 (H = Hessian.matrix()). One
    matmul for all of them, on an evenly strided OUTPUT_LOSS_ROWS of the rows (scaled up) when there are more, in
    float32 (float64 when a dw is): log figures, a few percent of GPTQ's time this way instead of 14% (three
    float64 matmuls; SmolLM2 int4 GPTQ profile). Rows are not sampled more sparsely: a few outlier rows carry much
    of the error (SmolLM2 at 512 rows read 1346 for an exact 7201)."""
    n = dws[0].shape[0]
    step = -(-n // OUTPUT_LOSS_ROWS)
    dt = torch.float64 if any(d.dtype == torch.float64 for d in dws) else torch.float32
    D = torch.cat([d[::step].to(H.device, dt) for d in dws])
    per_row = ((D @ H.to(dt)) * D).sum(1) / 2 * (n / dws[0][::step].shape[0])
    return [float(p.sum()) for p in per_row.split(D.shape[0] // len(dws))]


def output_loss(dw: torch.Tensor, H: torch.Tensor) -> float:
    """output_losses of one dw."""
    return output_losses(H, dw)[0]
