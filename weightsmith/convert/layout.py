"""Tensor layout across formats: the one rope q/k permutation and Meta's model-parallel merge/split.

Canonical q/k rows are Meta's interleaved rotary pairs (GGUF shares them). HF half-splits each head:
HF row order within a head is [x0, x2, x4, ..., x1, x3, x5, ...] of Meta's [x0, x1, x2, x3, ...].
"""
from __future__ import annotations

import numpy as np

from ..errors import BadInput
from ..lazy import torch


def rope_to_hf(w, n_heads: int):
    """Meta/GGUF interleaved -> HF half-split, of a numpy array or torch tensor. n_heads is n_kv_heads for k."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rope_from_hf(w, n_heads: int):
    """HF half-split -> Meta/GGUF interleaved: the exact inverse of rope_to_hf."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rope_heads(role: str | None, config) -> int | None:
    """How many heads a rope-carrying tensor splits into (kv heads for k), None when it carries no rope."""
    return {"q": config.n_heads, "k": config.n_kv_heads, None: None}[role]


# --- Meta model parallelism -------------------------------------------------------------------------------

def embed_axis(shard_shape: tuple[int, ...], n_shards: int, dim: int) -> int:
    """Which axis tok_embeddings is split on, read from one shard's shape.

    Llama 1/2 use ParallelEmbedding (split along dim: shard is [vocab, dim/n]); Llama 3 uses
    VocabParallelEmbedding (split along vocab: shard is [vocab/n, dim]).
    """
    if n_shards == 1:
        return 0
    if shard_shape[1] == dim:
        return 0
    if shard_shape[1] * n_shards == dim:
        return 1
    raise BadInput(f"tok_embeddings shard shape {list(shard_shape)} fits neither a vocab split nor a dim split "
                   f"of dim={dim} over {n_shards} shards")


def merge_axis(mp, shard_shape, n_shards: int, dim: int) -> int | None:
    if mp == "embed":
        return embed_axis(shard_shape, n_shards, dim)
    return mp


def merged_shape(axis: int | None, shapes: list[tuple[int, ...]], name: str) -> tuple[int, ...]:
    first = shapes[0]
    for s in shapes[1:]:
        same = [d for i, d in enumerate(s) if i != axis] == [d for i, d in enumerate(first) if i != axis]
        if len(s) != len(first) or not same:
            raise BadInput(f"{name}: model-parallel shards disagree in shape ({[list(x) for x in shapes]})")
    if axis is None:
        return first
    return tuple(sum(s[axis] for s in shapes) if i == axis else d for i, d in enumerate(first))


def merge(axis: int | None, parts: list[torch.Tensor], name: str) -> torch.Tensor:
    if axis is None:
        for p in parts[1:]:
            if not torch.equal(p, parts[0]):
                raise BadInput(f"{name}: replicated tensor differs between model-parallel shards")
        return parts[0]
    return torch.cat(parts, dim=axis)


def split_axis(mp, embed_split_dim: int) -> int | None:
    return embed_split_dim if mp == "embed" else mp


def row_bands(shard_rows: list[int], r0: int, r1: int) -> list[tuple[int, int, int]]:
    """Where rows [r0, r1) of a matrix split by rows across shards (of shard_rows rows each) lie: (shard, a, b),
    rows [a, b) of that shard's own, for each shard holding any of them."""
    bands, start = [], 0
    for k, n in enumerate(shard_rows):
        a, b = max(r0 - start, 0), min(r1 - start, n)
        if a < b:
            bands.append((k, a, b))
        start += n
    return bands


# --- Llama 3.1 rope scaling ---------------------------------------------------------------------------------

def llama3_rope_factors(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1 rope scaling (GGUF's rope_freqs.weight), float32: 1 for high
    frequencies, `factor` for low ones, a smooth blend between (Meta's apply_scaling, in float64)."""
    factor, low, high = scaling["factor"], scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    with np.errstate(all="ignore"):  # a file's theta of 0 or a scaling's factor of 0: inf/NaN, which match nothing
        freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        wavelen = 2 * np.pi / freqs
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = 1.0 / ((1 - smooth) / factor + smooth)
        out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, blended))
        return out.astype(np.float32)


# The Llama 3.x releases' settings, tried in turn to name a rope_freqs tensor found in a GGUF file.
LLAMA3_SCALINGS = [{"rope_type": "llama3", "factor": f, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192} for f in (8.0, 32.0, 16.0, 4.0, 2.0, 64.0)]


def llama3_scaling_from_factors(factors: np.ndarray, head_dim: int, theta: float) -> dict | None:
    if factors.size != head_dim // 2:  # one factor per rotary pair (and no head_dim-sized work on a mismatch)
        return None
    for s in LLAMA3_SCALINGS:
        want = llama3_rope_factors(head_dim, theta, s)
        if want.shape == factors.shape and np.allclose(factors.astype(np.float32), want, rtol=1e-4, atol=1e-8):
            return dict(s)
    return None
