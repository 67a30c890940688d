"""Calibration: text run through a checkpoint one transformer block at a time by the reference forward pass
(model.py), each block's matmul inputs handed to an observer. This is DESIGN.md's side road: it feeds the importance
matrix (per-column sums of squared activations) and GPTQ (input Hessians); it quantizes nothing itself.

Memory: one block of weights, the observers' statistics, the hidden states of every chunk ([chunks, ctx, dim]
float32, a file-backed mapping in the temp directory past `budget` bytes) and one small batch's intermediates
(BATCH_VALUES), never the whole model.
"""
from __future__ import annotations

import os
import tempfile

import torch

from ..formats.common import release_free_heap
from .model import SHARED_INPUTS, Rope, Weights, _batches, block_forward, chunk_batch

HIDDEN_BUDGET = 4 << 30  # bytes of hidden states kept in memory; more go to a file-backed mapping
# values of one FFN activation per batch of chunks (4 MB in f32): a block's matmuls over a few hundred tokens
# already run at full speed, and every intermediate is this small (SmolLM2 int4 GPTQ, 32 x 256 tokens: 52.8 s and
# 677 MB peak against 56.0 s and 926 MB with verify's 2**26)
BATCH_VALUES = 1 << 20


def hidden_store(shape: tuple[int, ...], dtype: torch.dtype, budget: int = HIDDEN_BUDGET) -> torch.Tensor:
    """An uninitialized tensor for the hidden states: in memory, or past budget mapped from a deleted temp file."""
    n = 1
    for d in shape:
        n *= d
    if n * torch.finfo(dtype).bits // 8 <= budget:
        return torch.empty(shape, dtype=dtype)
    fd, path = tempfile.mkstemp(prefix="weightsmith-hidden-")
    try:
        os.ftruncate(fd, n * torch.finfo(dtype).bits // 8)
        t = torch.from_file(path, shared=True, size=n, dtype=dtype)
    finally:
        os.close(fd)
        os.unlink(path)  # the mapping keeps the pages; nothing is left on disk when the process ends
    return t.view(shape)


@torch.no_grad()
def stream(ck, tokens: torch.Tensor, observe, replace=None, device=None, progress=None, budget: int = HIDDEN_BUDGET,
           output: bool = True):
    """Run tokens [n_chunks, ctx] through every block of ck in turn; return the last block's output (the hidden
    states before the output norm), [n_chunks, ctx, dim] on the CPU, for the caller's head (logits, output.weight's input).
    output=False: the caller has no head to feed (GPTQ of the blocks), so the last block's replaced weights are
    not run again (a thirtieth of SmolLM2's GPTQ passes) and None is returned.

    observe(i, names, x): every matmul input of block i, batch by batch (x [B, ctx, in]; names: the SHARED_INPUTS
    entry, the weights that read x). replace(i, w) -> dict | None, called once block i has seen every chunk:
    weights that replace w for computing the block's output (GPTQ returns the quantized block, so that each later
    block is calibrated on the errors the earlier ones make); None keeps w and the first pass's outputs.
    progress(i, n_layers) is called after each block."""
    weights = Weights(ck, device)
    cfg = ck.config
    n, ctx = tokens.shape
    rope = Rope.make(cfg, ctx, weights.device, weights.dtype)
    h = hidden_store((n, ctx, cfg.dim), weights.dtype, budget)
    batches = _batches(n, chunk_batch(cfg, ctx, BATCH_VALUES))
    dev = weights.device
    for s in batches:
        h[s] = weights.embed(tokens[s]).cpu()
    for i in range(cfg.n_layers):
        w = weights.block(i)

        def tap(names, x, i=i):
            observe(i, names, x)
        if replace is None:
            for s in batches:
                h[s] = block_forward(h[s].to(dev), w, cfg, rope, tap=tap).cpu()
        else:
            for s in batches:
                block_forward(h[s].to(dev), w, cfg, rope, tap=tap, tap_only=True)
            w = replace(i, w) or w
            if output or i < cfg.n_layers - 1:
                for s in batches:
                    h[s] = block_forward(h[s].to(dev), w, cfg, rope).cpu()
        del w
        release_free_heap()
        if progress:
            progress(i, cfg.n_layers)
    return h if output else None


__all__ = ["SHARED_INPUTS", "hidden_store", "stream"]
