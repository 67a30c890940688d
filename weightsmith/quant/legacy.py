"""ggml's legacy block types, 32 weights a block, vectorized over all blocks at once. Each function mirrors
quantize_row_*_ref in ggml-quants.c step for step (float32 throughout), so the bytes are libggml's.

Input: float32 [n_blocks, 32]. Output: uint8 [n_blocks, type_size], and the values those bytes dequantize to
(float32 [n_blocks, 32], as ggml's dequantize_row_* computes them), for the log's error figure.
"""
import torch

from .rounding import c_trunc_add, f16, fp16_bytes, roundf


def _signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude, sign kept; the first one on ties (ggml's `if (amax < fabsf(v))` from +0.0).

    From the row's max and min (fast reductions); only rows where +a and -a tie look up which comes first."""
    hi, lo = x.amax(dim=1), x.amin(dim=1)
    out = torch.where(hi >= -lo, hi, lo)
    out = torch.where(out == 0, 0.0, out)  # an all-zero row gives +0.0 even when it holds -0.0s
    ties = ((hi == -lo) & (hi != 0)).nonzero().squeeze(1)
    if len(ties):
        t = x[ties]
        out[ties] = t.gather(1, t.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    return out


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """ggml's `d ? 1.0f/d : 0.0f`."""
    return torch.where(d != 0, 1.0 / d, 0.0)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Low nibble from the first half of the block, high nibble from the second: qs[j] = q[j] | q[j+16] << 4."""
    half = q.shape[1] // 2
    return ((q[:, :half] & 0x0F) | ((q[:, half:] & 0x0F) << 4)).to(torch.uint8)


def _high_bits(q: torch.Tensor) -> torch.Tensor:
    """Bit 4 of each of the 32 values as one little-endian uint32: bit j of qh is bit 4 of q[j]."""
    bits = ((q >> 4) & 1).to(torch.uint8).view(-1, 4, 8)
    out = bits[..., 0].clone()
    for j in range(1, 8):
        out |= bits[..., j] << j
    return out


def q8_0(x: torch.Tensor):
    d = x.abs().amax(dim=1) / 127
    q = roundf(x * _inverse(d)[:, None])
    return torch.cat([fp16_bytes(d), q.to(torch.int8).view(torch.uint8)], dim=1), f16(d)[:, None] * q


def q4_0(x: torch.Tensor):
    d = _signed_absmax(x) / -8
    q = c_trunc_add(x * _inverse(d)[:, None], 8.5).clamp(max=15)
    return torch.cat([fp16_bytes(d), _pack_nibbles(q.to(torch.int32))], dim=1), f16(d)[:, None] * (q - 8)


def _min_max(x: torch.Tensor, levels: int):
    lo, hi = x.amin(dim=1), x.amax(dim=1)
    d = (hi - lo) / levels
    return lo, d, (x - lo[:, None]) * _inverse(d)[:, None]


def _with_min(d, lo, q):
    return f16(d)[:, None] * q + f16(lo)[:, None]


def q4_1(x: torch.Tensor):
    lo, d, scaled = _min_max(x, 15)
    q = c_trunc_add(scaled, 0.5).clamp(max=15)
    return torch.cat([fp16_bytes(d), fp16_bytes(lo), _pack_nibbles(q.to(torch.int32))], dim=1), _with_min(d, lo, q)


def q5_0(x: torch.Tensor):
    d = _signed_absmax(x) / -16
    q = c_trunc_add(x * _inverse(d)[:, None], 16.5).clamp(max=31)
    qi = q.to(torch.int32)
    return torch.cat([fp16_bytes(d), _high_bits(qi), _pack_nibbles(qi)], dim=1), f16(d)[:, None] * (q - 16)


def q5_1(x: torch.Tensor):
    lo, d, scaled = _min_max(x, 31)
    q = c_trunc_add(scaled, 0.5)
    qi = q.to(torch.int32)
    return torch.cat([fp16_bytes(d), fp16_bytes(lo), _high_bits(qi), _pack_nibbles(qi)], dim=1), _with_min(d, lo, q)
