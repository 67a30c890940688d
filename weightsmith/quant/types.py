"""The quantized types weightsmith writes: block geometry (from gguf-py's table, the one ggml uses) and the
quantizer for each. Dequantization is gguf-py's."""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import BadInput, Unsupported
from . import kquants, legacy


@dataclass(frozen=True)
class QuantType:
    name: str
    quantize_blocks: Callable[[torch.Tensor], torch.Tensor]   # float32 [n, block] -> uint8 [n, type_size]

    @property
    def block(self) -> int:
        return _sizes(self.name)[0]

    @property
    def type_size(self) -> int:
        return _sizes(self.name)[1]


def _sizes(name: str) -> tuple[int, int]:
    import gguf
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]


REGISTRY = {t.name: t for t in [
    QuantType("Q8_0", legacy.q8_0),
    QuantType("Q4_0", legacy.q4_0),
    QuantType("Q4_1", legacy.q4_1),
    QuantType("Q5_0", legacy.q5_0),
    QuantType("Q5_1", legacy.q5_1),
    QuantType("Q4_K", kquants.q4_k),
    QuantType("Q5_K", kquants.q5_k),
    QuantType("Q6_K", kquants.q6_k),
]}


# llama-quantize's substitutes for a matrix whose rows do not split into 256-wide super-blocks; what still does
# not split into its blocks is written F16
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def for_row_length(name: str, n: int) -> str:
    """The type a matrix with rows of n values actually gets when `name` is asked for."""
    if n % get(name).block and name in FALLBACK:
        name = FALLBACK[name]
    return name if n % get(name).block == 0 else "F16"


def get(name: str) -> QuantType:
    try:
        return REGISTRY[name]
    except KeyError:
        raise Unsupported(f"quantized type {name} is not one weightsmith writes ({', '.join(REGISTRY)})") from None


def quantize(t: torch.Tensor, name: str, tensor_name: str = "tensor") -> np.ndarray:
    """A [rows, n] weight as ggml's bytes for type `name`: uint8 [rows, n / block * type_size]."""
    qt = get(name)
    x = t.to(torch.float32).contiguous()
    rows, n = x.reshape(-1, x.shape[-1]).shape
    if n % qt.block:
        raise BadInput(f"{tensor_name}: row length {n} is not a multiple of {name}'s block of {qt.block}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise BadInput(f"{tensor_name}: holds NaN or Inf (first at index {bad}); refusing to quantize it")
    out = qt.quantize_blocks(x.reshape(-1, qt.block))
    return out.reshape(rows, -1).numpy()


def dequantize(data: np.ndarray, name: str, shape) -> torch.Tensor:
    import gguf
    return torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name])).reshape(shape)
