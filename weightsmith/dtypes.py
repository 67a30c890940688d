"""The one dtype table: weightsmith's type names (safetensors' spelling) <-> torch dtypes."""
from __future__ import annotations

from .errors import BadInput, Unsupported
from .lazy import torch

# name -> (torch dtype's name, bytes per element). The names are safetensors' and the log's ("type F16").
FLOAT_TYPES = {
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
}
# Integer tensors a checkpoint may also hold: compressed-tensors' packed int4/int8 weights and their shapes.
INT_TYPES = {
    "I32": ("int32", 4),
    "I64": ("int64", 8),
}
STORAGE_TYPES = {**FLOAT_TYPES, **INT_TYPES}
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


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, _entry(name)[0])


def type_name(dtype: torch.dtype | str) -> str:
    """F32/F16/BF16 for a torch float dtype or its name ("bfloat16", as STORAGE_CLASSES spells it)."""
    attr = str(dtype).removeprefix("torch.")
    for name, (a, _) in FLOAT_TYPES.items():
        if a == attr:
            return name
    raise BadInput(f"tensor dtype torch.{attr} is not a float type weightsmith reads (F32, F16, BF16)")


def itemsize(name: str) -> int:
    return _entry(name)[1]


def cast(t: torch.Tensor, name: str) -> torch.Tensor:
    """Cast to the target type directly (bf16 -> f16 without an f32 detour; torch converts elementwise)."""
    dt = torch_dtype(name)
    return t if t.dtype == dt else t.to(dt)
