"""What every reader returns: a config, tokenizer files and lazy tensors under canonical names."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .lazy import torch

from .config import ModelConfig
from .convert import mapping


@dataclass
class TensorRef:
    """A tensor not yet read. load() returns it in canonical layout (Meta/GGUF rope order): a float tensor of the
    source dtype, or a quantized one dequantized to f32."""
    name: str                      # as stored in the source file
    canonical: str
    shape: tuple[int, ...]         # PyTorch order, [out, in]
    dtype: str                     # F32, F16, BF16, or a ggml type name (Q4_1, Q8_0, ...) for GGUF sources
    nbytes: int
    load: Callable[[], torch.Tensor] = field(repr=False)
    raw: Callable[[], object] | None = field(default=None, repr=False)  # stored bytes of a quantized tensor (GGUF)
    # rows(r0, r1): rows [r0, r1) of load() read alone, as a numpy array (dtypes.NUMPY_TYPES: bf16 as uint16 bits),
    # for readers that can (a rope tensor's range is whole heads); conversions stream through it without torch
    rows: Callable[[int, int], np.ndarray] | None = field(default=None, repr=False)


@dataclass
class Checkpoint:
    format: str                    # "hf" | "meta" | "gguf"
    path: Path
    config: ModelConfig
    tensors: list[TensorRef]       # canonical writing order
    tokenizer_files: dict[str, Path] = field(default_factory=dict)  # file name -> path, carried to the output
    aux_files: dict[str, Path] = field(default_factory=dict)        # other files carried within the same format
    info: dict = field(default_factory=dict)                        # format-specific facts for inspect
    integrity_check: Callable[[], None] | None = field(default=None, repr=False)  # e.g. Meta's checklist.chk md5s
    name: str | None = None                                         # the model's name, when the file says
    # the convert.tokenizer.Vocab the file holds (GGUF), built on first use of .vocab: inspect never needs it
    read_vocab: Callable[[], object | None] | None = field(default=None, repr=False)

    @functools.cached_property
    def vocab(self) -> object | None:
        return self.read_vocab() if self.read_vocab else None

    @property
    def n_params(self) -> int:
        return sum(numel(t.shape) for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)




def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def order(refs: dict[str, TensorRef], config: ModelConfig) -> list[TensorRef]:
    """Refs in canonical writing order; a tied checkpoint's stored lm_head copy is dropped (the model ignores it)."""
    return [refs[n] for n in mapping.canonical_order(config.n_layers, config.tied_embeddings)]
