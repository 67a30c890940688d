"""The one dtype table: weightsmith's type names (safetensors' spelling) <-> torch dtypes and numpy dtypes.

Tensors stream through a conversion as numpy arrays (torch is imported only to read or write a .pth, to unpack
int8/int4/w8a8/fp8 sources, and to run a model, GPTQ's included): numpy has no bfloat16, so a BF16 array holds its values' bits as uint16, a
dtype nothing else uses.
"""
from __future__ import annotations

import numpy as np

from .errors import BadInput, Unsupported
from .lazy import torch

# name -> (torch dtype's name, bytes per element). The names are safetensors' and the log's ("type F16").
FLOAT_TYPES = {
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
}
# Integer tensors a checkpoint may also hold: compressed-tensors' packed int4/int8 weights and their shapes, its
# int8 (W8A8) weights.
INT_TYPES = {
    "I32": ("int32", 4),
    "I64": ("int64", 8),
    "I8": ("int8", 1),
}
# compressed-tensors' fp8 weights (FP8_DYNAMIC); numpy has no float8: arrays hold the bits, as uint8
FP8_TYPES = {"F8_E4M3": ("float8_e4m3fn", 1)}
# name -> the numpy dtype an array of it has (BF16: its bits)
NUMPY_TYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64,
               "I8": np.int8, "F8_E4M3": np.uint8}
STORAGE_TYPES = {**FLOAT_TYPES, **INT_TYPES, **FP8_TYPES}
# torch's legacy storage classes, as a .pth pickle names them (GLOBAL torch.FloatStorage), -> (torch dtype's name,
# bytes per element): torch.storage._dtype_to_storage_type_map() read backwards, for reading a .pth without torch.
STORAGE_CLASSES = {
    "DoubleStorage": ("float64", 8), "FloatStorage": ("float32", 4), "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1), "BoolStorage": ("bool", 1),
    "ComplexDoubleStorage": ("complex128", 16), "ComplexFloatStorage": ("complex64", 8),
    "QInt8Storage": ("qint8", 1), "QInt32Storage": ("qint32", 4), "QUInt8Storage": ("quint8", 1),
    "QUInt4x2Storage": ("quint4x2", 1), "QUInt2x4Storage": ("quint2x4", 1),
}


def is_float(name: str) -> bool:
    """F32/F16/BF16; anything else a reader reports (GGUF's Q4_1, Q8_0, ...) is quantized and dequantizes to F32."""
    return name in FLOAT_TYPES


def _entry(name: str) -> tuple[str, int]:
    try:
        return STORAGE_TYPES[name]
    except KeyError:
        raise Unsupported(f"tensor type {name} is not supported (expected one of {', '.join(STORAGE_TYPES)})") from None


def torch_name(name: str) -> str:
    """torch's name for the type ("bfloat16"), as HF's config.json spells it, without importing torch."""
    return _entry(name)[0]


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, torch_name(name))


def type_name(dtype: torch.dtype | str) -> str:
    """F32/F16/BF16 for a torch float dtype or its name ("bfloat16", as STORAGE_CLASSES spells it)."""
    attr = str(dtype).removeprefix("torch.")
    for name, (a, _) in FLOAT_TYPES.items():
        if a == attr:
            return name
    raise BadInput(f"tensor dtype torch.{attr} is not a float type weightsmith reads (F32, F16, BF16)")


def itemsize(name: str) -> int:
    return _entry(name)[1]


def numpy_dtype(name: str) -> np.dtype:
    _entry(name)
    return np.dtype(NUMPY_TYPES[name])


def of_array(a: np.ndarray) -> str:
    """The type name of an array's values (uint16: BF16 bits)."""
    for name, dt in NUMPY_TYPES.items():
        if a.dtype == dt:
            return name
    raise Unsupported(f"array dtype {a.dtype} is not one weightsmith converts ({', '.join(NUMPY_TYPES)})")


def to_numpy(t) -> np.ndarray:
    """A torch tensor's values as a numpy array sharing its memory (bf16 as uint16 bits); arrays pass as they are."""
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().cpu()
    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).numpy()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A numpy array (uint16: BF16 bits) as a torch tensor sharing its memory."""
    if a.dtype == np.uint16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def cast(a: np.ndarray, name: str) -> np.ndarray:
    """An array of F32/F16/BF16 values as type `name`, converted elementwise with no f32 copy of the whole
    (bf16 -> f16 in one pass); rounding to nearest even as torch and ggml round, NaN kept as a quiet NaN."""
    src = of_array(a)
    if src == name:
        return a
    if src in INT_TYPES or src in FP8_TYPES:  # integers, fp8 bits: through float32, as torch converts them
        f = to_torch(a).view(torch_dtype(src)).float().numpy() if src in FP8_TYPES else a.astype(np.float32)
        return f if name == "F32" else cast(f, name)
    from .quant import cfloat
    x = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(x.shape, numpy_dtype(name))
    if name == "F32":
        cfloat.widen(x.view(np.uint16), out, src == "BF16")
    elif src == "BF16" and name == "F16":
        cfloat.bf16_to_fp16(x, out.view(np.uint16))
    else:  # to F16 or BF16 from F32 (or from F16 to BF16: through F32, exact)
        f = x if src == "F32" else cast(x, "F32")
        (cfloat.fp16_from_f32 if name == "F16" else cfloat.bf16_from_f32)(f, out.view(np.uint16))
    return out.reshape(a.shape)
