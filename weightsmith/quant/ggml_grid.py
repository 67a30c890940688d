"""The ggml block types as GPTQ's grid (quant.gptq.quantize with a Grid in place of a compressed-tensors scheme).

GPTQ rounds one column at a time, and a ggml block (32 contiguous columns of a row for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/
IQ4_NL, 256 for the k-quants and IQ4_XS) shares stored fields (d, dmin, sub-block scales and mins) that must be
known before its first column is rounded. So, columns in natural order:

- when GPTQ reaches a block's first column, the type's own quantizer (quant.types, with the importance weights the
  imatrix path would hand it: the per-column mean of x^2, i.e. diag(H) / 2) quantizes the block's *current* values
  (the earlier columns' errors already spread into them); of its bytes only the stored fields are kept: they define
  the block's grid, each value j taking A_j * level_k + B_j for an index k (A_j = d, d * sc, B_j = 0, m, -dmin * m,
  in the float32 operations and order of ggml's dequantize_row_*; levels: k - offset, or kvalues_iq4nl for IQ4);
- each column is then rounded to the nearest point of that grid (the lowest index on ties), and its error spread
  as GPTQ does (quant.gptq's kernel);
- at the end the indices are packed into the blocks' bytes beside the fields, so the bytes dequantize (gguf-py,
  llama.cpp) to exactly the values GPTQ rounded to.

Q4_0/Q4_1/Q5_0/Q5_1's importance-weighted quantizers weight a value by qw * sqrtf(sigma2 + x^2) with sigma2 the
mean square of the whole *row*: for them the row GPTQ has when the block comes up (the values already rounded,
then the current ones) gives sigma2 (row_context). The k-quants' and IQ4's sigma2 is their super-block's own.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import BadInput
from . import types
from .cfloat import JIT, f32, fp16_value
from .iquants import KVALUES_IQ4NL
from .kquants import _pack_q4, _pack_q5, _pack_q6, _scale_min_k4
from .kquants_low import _pack_2bit, _pack_q3, _q2_group_scales, _q3_group_scales
from .legacy import _pack_five, _pack_nibbles, row_sigma2, weighted_rows

KINDS = {n: i for i, n in enumerate(
    ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"])}
Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS = range(12)


def _uniform(lo: int, hi: int) -> np.ndarray:
    return np.arange(lo, hi + 1, dtype=np.float32)


# index k of a value -> its level, as the dequantizer multiplies it by A (ascending in k)
LEVELS = {
    "Q8_0": _uniform(-128, 127), "Q4_0": _uniform(-8, 7), "Q4_1": _uniform(0, 15), "Q5_0": _uniform(-16, 15),
    "Q5_1": _uniform(0, 31), "Q2_K": _uniform(0, 3), "Q3_K": _uniform(-4, 3), "Q4_K": _uniform(0, 15),
    "Q5_K": _uniform(0, 31), "Q6_K": _uniform(-32, 31),
    "IQ4_NL": KVALUES_IQ4NL.astype(np.float32), "IQ4_XS": KVALUES_IQ4NL.astype(np.float32),
}
ROW_CONTEXT = {"Q4_0", "Q4_1", "Q5_0", "Q5_1"}  # importance-weighted with the row's mean square


@njit(**JIT)
def _fp16(o, k):
    return fp16_value(np.int64(o[k]) | (np.int64(o[k + 1]) << 8))


@njit(**JIT)
def block_grid(kind, o, A, B):
    """One block's stored fields (bytes o) as each value's A and B (float32: value = A * level + B)."""
    B[:] = f32(0.0)
    if kind <= Q5_1 or kind == IQ4_NL:
        d = _fp16(o, 0)
        A[:] = d
        if kind == Q4_1 or kind == Q5_1:
            B[:] = _fp16(o, 2)                       # y = x * d + m
    elif kind == Q2_K:
        dl, ml = np.empty(16, np.float32), np.empty(16, np.float32)
        _q2_group_scales(o, _fp16(o, 80), _fp16(o, 82), dl, ml)
        for g in range(16):
            A[16 * g:16 * g + 16] = dl[g]
            B[16 * g:16 * g + 16] = -ml[g]           # y = dl * q - ml
    elif kind == Q3_K:
        dl = np.empty(16, np.float32)
        _q3_group_scales(o, _fp16(o, 108), dl)
        for g in range(16):
            A[16 * g:16 * g + 16] = dl[g]
    elif kind == Q4_K or kind == Q5_K:
        d, dmin = _fp16(o, 0), _fp16(o, 2)
        for g in range(8):
            sc, m = _scale_min_k4(o, g)
            A[32 * g:32 * g + 32] = d * f32(sc)
            B[32 * g:32 * g + 32] = -(dmin * f32(m))  # y = d1 * q - m1
    elif kind == Q6_K:
        d = _fp16(o, 208)
        for g in range(16):
            sc = ((np.int64(o[192 + g]) & 0xFF) ^ 0x80) - 0x80
            A[16 * g:16 * g + 16] = d * f32(sc)      # y = d * sc * q, left to right
    else:  # IQ4_XS
        d = _fp16(o, 0)
        sh = np.int64(o[2]) | (np.int64(o[3]) << 8)
        for b in range(8):
            ls = ((np.int64(o[4 + b // 2]) >> (4 * (b % 2))) & 0xF) | (((sh >> (2 * b)) & 3) << 4)
            A[32 * b:32 * b + 32] = d * f32(ls - 32)


@njit(**JIT)
def _nibbles(k, o, at, nb):
    """nb blocks of 32 4-bit indices, ggml's order: byte at + 16b + j = k[32b + j] | k[32b + 16 + j] << 4."""
    for b in range(nb):
        _pack_nibbles(k[32 * b:32 * b + 32], o, at + 16 * b)


@njit(**JIT)
def pack_block(kind, o, k, L):
    """Indices k (int64, one block's) into its bytes o beside the stored fields; L: float32 scratch of the block."""
    if kind == Q8_0:
        for j in range(32):
            o[2 + j] = (k[j] - 128) & 0xFF
    elif kind == Q4_0 or kind == IQ4_NL:
        _nibbles(k, o, 2, 1)
    elif kind == Q4_1:
        _nibbles(k, o, 4, 1)
    elif kind == Q5_0:
        _pack_five(k, o, 2)
    elif kind == Q5_1:
        _pack_five(k, o, 4)
    elif kind == IQ4_XS:
        _nibbles(k, o, 8, 8)
    else:
        for j in range(256):
            L[j] = f32(k[j])
        if kind == Q2_K:
            _pack_2bit(L, o, 16)
        elif kind == Q3_K:
            _pack_q3(L, o)
        elif kind == Q4_K:
            _pack_q4(L, o)
        elif kind == Q5_K:
            _pack_q5(L, o)
        else:
            _pack_q6(L, o)


@njit(**JIT)
def _grids(kind, data, A, B):
    """block_grid for one block column: data [rows, type_size] -> A, B [rows, block]."""
    for r in range(data.shape[0]):
        block_grid(kind, data[r], A[r], B[r])


@njit(**JIT)
def _pack(kind, data, Q, bs):
    """pack_block over every block of every row: data [rows, n / bs * type_size], Q [rows, n] indices."""
    nb = Q.shape[1] // bs
    ts = data.shape[1] // nb
    k = np.empty(bs, np.int64)
    L = np.empty(bs, np.float32)
    for r in range(Q.shape[0]):
        for b in range(nb):
            for j in range(bs):
                k[j] = np.int64(Q[r, bs * b + j])
            pack_block(kind, data[r, ts * b:ts * b + ts], k, L)


@njit(**JIT)
def nearest(w, a, b, levels):
    """The index k whose grid value a * levels[k] + b (float32 operations) is nearest w, the lowest on ties, and that
    value: bisection on (w - b) / a, then the candidates around it compared exactly (float32 rounding can move the
    nearest by one level; the candidates reach two beyond). a == 0: every index gives b; 0."""
    n = levels.shape[0]
    if a == f32(0.0):
        return 0, f32(a * levels[0]) + b
    t = (w - b) / a
    lo, hi = 0, n
    while lo < hi:  # the first level above t
        mid = (lo + hi) // 2
        if levels[mid] > t:
            hi = mid
        else:
            lo = mid + 1
    best, bv, be = 0, f32(0.0), np.inf
    for k in range(max(lo - 2, 0), min(lo + 2, n)):
        v = f32(a * levels[k]) + b
        e = abs(w - v)
        if e < be:
            best, bv, be = k, v, e
    return best, bv


@njit(**JIT)
def _row_sigma2s(rows, out):
    for r in range(rows.shape[0]):
        out[r] = row_sigma2(rows[r])


class Grid:
    """The grid of one matrix [n_out, n_in] in ggml type `name` (one a preset chose for it), with importance qw
    (float32 [n_in], the imatrix entry; ignored by types that take none): GPTQ calls fix() at each block's first
    column and pack() at the end. `data` holds the bytes."""

    def __init__(self, name: str, n_out: int, n_in: int, importance=None):
        qt = types.get(name)
        if n_in % qt.block:
            raise ValueError(f"{name}: rows of {n_in} do not split into blocks of {qt.block}")
        self.name, self.kind, self.group, self.type_size = name, KINDS[name], qt.block, qt.type_size
        self.levels = LEVELS[name]
        self.importance = (None if importance is None or not qt.weighted
                           else np.ascontiguousarray(importance, dtype=np.float32).reshape(-1))
        if self.importance is not None and self.importance.shape[0] != n_in:
            raise ValueError(f"importance of {self.importance.shape[0]} values for rows of {n_in}")
        self.row_context = name in ROW_CONTEXT and self.importance is not None
        self.data = np.zeros((n_out, n_in // qt.block * qt.type_size), np.uint8)

    def fix(self, j0: int, cols, row=None) -> tuple[np.ndarray, np.ndarray]:
        """The block of columns j0 .. j0 + group: the type's quantizer on their current values cols [n_out, group]
        (row: the rows as GPTQ has them now, for row_context types) fixes its stored fields; returns the grid's
        A, B [n_out, group] float32."""
        G, ts = self.group, self.type_size
        x = np.ascontiguousarray(_numpy(cols), dtype=np.float32)
        out = np.empty((x.shape[0], ts), np.uint8)
        qw = None if self.importance is None else np.ascontiguousarray(self.importance[j0:j0 + G])
        if self.row_context:
            r = np.ascontiguousarray(_numpy(row), dtype=np.float32)
            sigma2 = np.empty(r.shape[0], np.float32)
            _row_sigma2s(r, sigma2)
            if weighted_rows(x, qw, sigma2, out, self.kind - Q4_0)[2] >= 0:  # legacy's Q4_0 .. Q5_1 numbering
                raise BadInput("GPTQ: a block's values are not finite (NaN or Inf)")
        else:
            types.quantize_into(x, self.name, out, "gptq block", qw)
        b = j0 // G
        self.data[:, b * ts:(b + 1) * ts] = out
        A, B = np.empty_like(x), np.empty_like(x)
        _grids(self.kind, out, A, B)
        return A, B

    def pack(self, Q) -> np.ndarray:
        """The indices Q [n_out, n_in] (each value's k) into the blocks' bytes: uint8 [n_out, n_in / block *
        type_size], ggml's layout."""
        _pack(self.kind, self.data, np.ascontiguousarray(_numpy(Q), dtype=np.int64), self.group)
        return self.data


def _numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
