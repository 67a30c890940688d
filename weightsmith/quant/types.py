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
    # float32 [n, block] -> (uint8 [n, type_size], float32 [n, block] those bytes dequantize to)
    quantize_blocks: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

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


CHUNK = 1 << 18  # values per task: small enough to stay in cache, large enough to amortize torch's per-op cost


def quantize(t: torch.Tensor, name: str, tensor_name: str = "tensor") -> np.ndarray:
    """A [rows, n] weight as ggml's bytes for type `name`: uint8 [rows, n / block * type_size]."""
    return quantize_with_error(t, name, tensor_name)[0]


def quantize_with_error(t: torch.Tensor, name: str, tensor_name: str = "tensor") -> tuple[np.ndarray, float]:
    """quantize(), plus the relative RMS error of the values the bytes dequantize to."""
    qt = get(name)
    x = t.to(torch.float32).contiguous()
    rows, n = x.reshape(-1, x.shape[-1]).shape
    if n % qt.block:
        raise BadInput(f"{tensor_name}: row length {n} is not a multiple of {name}'s block of {qt.block}")
    blocks = x.reshape(-1, qt.block)
    out = torch.empty(blocks.shape[0], qt.type_size, dtype=torch.uint8)
    step = max(CHUNK // qt.block, 1)

    def task(i):  # one slice of blocks: its bytes into `out`, its squared error and squared norm (float64)
        b = blocks[i:i + step]
        if not torch.isfinite(b).all():  # checked here, where the slice is in cache
            bad = (~torch.isfinite(x.reshape(rows, n))).nonzero()[0].tolist()
            raise BadInput(f"{tensor_name}: holds NaN or Inf (first at index {bad}); refusing to quantize it")
        q, back = qt.quantize_blocks(b)
        out[i:i + step] = q
        return _squared_norms(back, b)

    sums = parallel_map(task, range(0, blocks.shape[0], step))
    return out.reshape(rows, -1).numpy(), _relative(sum(e for e, _ in sums), sum(s for _, s in sums))


def relative_error(back: torch.Tensor, x: torch.Tensor) -> float:
    """|back - x| / |x|, the figure the log prints for a quantized tensor."""
    return _relative(*_squared_norms(back, x))


def _relative(err2: float, norm2: float) -> float:
    return (err2 / max(norm2, 1e-300)) ** 0.5


def _squared_norms(back: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """|back - x|^2 and |x|^2: float32 norms (fast), in float64 where float32 squares could over- or underflow."""
    e, n = float(torch.dist(back, x)), float(torch.linalg.vector_norm(x))
    if not (1e-15 < n < 1e15 and e < 1e15):
        xd = x.double()
        return float((back.double() - xd).square().sum()), float(xd.square().sum())
    return e * e, n * n


def parallel_map(fn, items) -> list:
    """fn over items on all cores: threads (torch releases the GIL inside its ops) over single-threaded torch ops,
    so no core waits at an OpenMP barrier for another that the OS gave to someone else."""
    import os
    from concurrent.futures import ThreadPoolExecutor
    items = list(items)
    workers = min(len(items), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if workers <= 1:
        return [fn(i) for i in items]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


def dequantize(data: np.ndarray, name: str, shape) -> torch.Tensor:
    import gguf
    return torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name])).reshape(shape)
