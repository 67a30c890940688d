"""The quantized types weightsmith writes: block geometry (from gguf-py's table, the one ggml uses) and the
numba kernel for each (legacy.py, kquants.py). Dequantization is gguf-py's."""
from __future__ import annotations

import functools
import importlib
import threading
from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..errors import BadInput, Unsupported
from ..lazy import torch


@dataclass(frozen=True)
class QuantType:
    name: str
    module: str  # the kernel is weightsmith.quant.<module>.<name in lower case>, imported (compiled) on first use
    weighted: bool = True  # takes an importance matrix (its kernel <name>_w); False: ggml ignores one (Q8_0)

    @property
    def kernel(self):
        """(x float32 [n_blocks, block], out uint8 [n_blocks, type_size]) -> (err2, norm2, first bad index or -1)"""
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.name.lower())

    @property
    def weighted_kernel(self):
        """(x float32 [rows, n], importance float32 [n], out uint8 [rows, n / block * type_size]) -> (err2, norm2,
        first bad flat index or -1): ggml_quantize_chunk with quant_weights, whole rows (some types' weights depend
        on the row's mean square)."""
        kernel = getattr(importlib.import_module(f"{__package__}.{self.module}"), self.name.lower() + "_w", None)
        if kernel is None:  # ggml uses one here, and quantizing without it would not give llama-quantize's bytes
            raise Unsupported(f"quantizing {self.name} with an importance matrix is not implemented yet")
        return kernel

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
    QuantType("Q8_0", "legacy", weighted=False),
    QuantType("Q4_0", "legacy"),
    QuantType("Q4_1", "legacy"),
    QuantType("Q5_0", "legacy"),
    QuantType("Q5_1", "legacy"),
    QuantType("Q2_K", "kquants_low"),
    QuantType("Q3_K", "kquants_low"),
    QuantType("Q4_K", "kquants"),
    QuantType("Q5_K", "kquants"),
    QuantType("Q6_K", "kquants"),
    QuantType("IQ4_NL", "iquants"),
    QuantType("IQ4_XS", "iquants"),
]}


# llama-quantize's substitutes for a matrix whose rows do not split into 256-wide super-blocks; what still does
# not split into its blocks is written F16
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def for_row_length(name: str, n: int) -> str:
    """The type a matrix with rows of n values actually gets when `name` is asked for."""
    if dtypes.is_float(name):
        return name
    if n % get(name).block and name in FALLBACK:
        name = FALLBACK[name]
    return name if n % get(name).block == 0 else "F16"


def get(name: str) -> QuantType:
    try:
        return REGISTRY[name]
    except KeyError:
        raise Unsupported(f"quantized type {name} is not one weightsmith writes ({', '.join(REGISTRY)})") from None


CHUNK = 1 << 18  # values per task: a float32 slice (1 MB) stays in cache, and tasks are many enough to balance cores


def quantize(t, name: str, tensor_name: str = "tensor", imatrix=None) -> np.ndarray:
    """A [rows, n] weight as ggml's bytes for type `name`: uint8 [rows, n / block * type_size]."""
    return quantize_with_error(t, name, tensor_name, imatrix)[0]


def quantize_with_error(t, name: str, tensor_name: str = "tensor", imatrix=None) -> tuple[np.ndarray, float]:
    """quantize(), plus the relative RMS error of the values the bytes dequantize to."""
    qt = get(name)
    x = t.reshape(-1, t.shape[-1])
    out = np.empty((x.shape[0], x.shape[1] // qt.block * qt.type_size), dtype=np.uint8)
    return out, relative(*quantize_into(x, name, out, tensor_name, imatrix))


def quantize_into(x, name: str, out: np.ndarray, tensor_name: str = "tensor", imatrix=None) -> tuple[float, float]:
    """Rows x [rows, n] (a float array, BF16 as uint16 bits, or a torch tensor) as type `name`'s bytes, written
    into out (uint8 [rows, n / block * type_size], C-contiguous); returns |dequantized - x|^2 and |x|^2 (float64)
    for the relative error. imatrix: the importance of each of the n columns (llama.cpp's per-column mean of
    squared activations), for the types that use one; ignored by the others, as ggml ignores it.

    Converted to float32 slice by slice, in the worker threads: a float32 copy of the whole matrix never exists."""
    qt = get(name)
    rows, n = x.shape
    if n % qt.block:
        raise BadInput(f"{tensor_name}: row length {n} is not a multiple of {name}'s block of {qt.block}")
    if out.dtype != np.uint8 or out.shape != (rows, n // qt.block * qt.type_size) or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous uint8 {(rows, n // qt.block * qt.type_size)}, "
                         f"not {out.dtype} {out.shape}")
    floats = _float32_slices(np.ascontiguousarray(dtypes.to_numpy(x)).reshape(-1))
    if imatrix is not None and qt.weighted:
        kernel, unit, units = qt.weighted_kernel, n, rows        # whole rows per task
        weights = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if weights.shape[0] != n:
            raise BadInput(f"{tensor_name}: the importance matrix has {weights.shape[0]} values, the rows {n}")
        per_unit = out
        args = (weights,)
    else:
        kernel, unit = qt.kernel, qt.block                       # blocks per task
        per_unit = out.reshape(-1, qt.type_size)
        units = per_unit.shape[0]
        args = ()
    step = max(CHUNK // unit, 1)

    def task(u0):
        u1 = min(u0 + step, units)
        err2, norm2, bad = kernel(floats(u0 * unit, u1 * unit).reshape(-1, unit), *args, per_unit[u0:u1])
        return err2, norm2, u0 * unit + bad if bad >= 0 else -1

    sums = parallel_map(task, range(0, units, step))
    bad = [b for _, _, b in sums if b >= 0]
    if bad:  # each slice stops at its first; the first slice's is the matrix's
        raise BadInput(f"{tensor_name}: holds NaN or Inf (first at index {list(divmod(min(bad), n))}); "
                       "refusing to quantize it")
    return sum(e for e, _, _ in sums), sum(s for _, s, _ in sums)


def _float32_slices(flat: np.ndarray):
    """(start, stop) -> flat[start:stop] as float32: a view of float32, widened from bf16 (uint16 bits) or f16 by a
    numba kernel into the thread's scratch, cast by numpy for anything else (float64)."""
    if flat.dtype == np.float32:
        return lambda s0, s1: flat[s0:s1]
    if flat.dtype in (np.uint16, np.float16):
        from .cfloat import widen
        bits, bf16 = flat.view(np.uint16), flat.dtype == np.uint16

        def widened(s0, s1):
            dst = _scratch(s1 - s0)
            widen(bits[s0:s1], dst, bf16)
            return dst
        return widened
    return lambda s0, s1: flat[s0:s1].astype(np.float32)


_SCRATCH = threading.local()


def _scratch(n: int) -> np.ndarray:
    """This thread's float32 buffer of n values, reused slice after slice (a task quantizes its slice before it
    takes the next): no allocation per slice, none left in the thread's heap."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.buf = np.empty(max(n, CHUNK), np.float32)
    return buf[:n]


def relative(err2: float, norm2: float) -> float:
    """The relative RMS error from quantize_into's (or squared_norms') sums, summed over row chunks."""
    return (err2 / max(norm2, 1e-300)) ** 0.5


def squared_norms(back: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """|back - x|^2 and |x|^2: float32 norms (fast), in float64 where float32 squares could over- or underflow."""
    e, n = float(torch.dist(back, x)), float(torch.linalg.vector_norm(x))
    if not (1e-15 < n < 1e15 and e < 1e15):
        xd = x.double()
        return float((back.double() - xd).square().sum()), float(xd.square().sum())
    return e * e, n * n


def parallel_map(fn, items) -> list:
    """fn over items on all cores, in threads: the numba kernels release the GIL."""
    items = list(items)
    if len(items) <= 1 or _cores() <= 1:
        return [fn(i) for i in items]
    return list(_pool().map(fn, items))


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _pool():
    """One thread per core for the whole process: a streamed conversion calls parallel_map for every piece."""
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(_cores(), thread_name_prefix="quantize")


def dequantize(data: np.ndarray, name: str, shape) -> torch.Tensor:
    import gguf
    return torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name])).reshape(shape)
