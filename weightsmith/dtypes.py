"""The one dtype table: weightsmith's type names (safetensors' spelling) <-> torch dtypes."""
import torch

from .errors import BadInput, Unsupported

# name -> torch dtype. The names are safetensors' and the log's ("type F16").
FLOAT_TYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
# Integer tensors a checkpoint may also hold: compressed-tensors' packed int4/int8 weights and their shapes.
INT_TYPES = {
    "I32": torch.int32,
    "I64": torch.int64,
}
STORAGE_TYPES = {**FLOAT_TYPES, **INT_TYPES}
TYPE_BY_TORCH = {v: k for k, v in FLOAT_TYPES.items()}


def is_float(name: str) -> bool:
    """F32/F16/BF16; anything else a reader reports (GGUF's Q4_1, Q8_0, ...) is quantized and dequantizes to F32."""
    return name in FLOAT_TYPES


def torch_dtype(name: str) -> torch.dtype:
    try:
        return STORAGE_TYPES[name]
    except KeyError:
        raise Unsupported(f"tensor type {name} is not supported (expected one of {', '.join(STORAGE_TYPES)})") from None


def type_name(dtype: torch.dtype) -> str:
    try:
        return TYPE_BY_TORCH[dtype]
    except KeyError:
        raise BadInput(f"tensor dtype {dtype} is not a float type weightsmith reads (F32, F16, BF16)") from None


def itemsize(name: str) -> int:
    return torch_dtype(name).itemsize


def cast(t: torch.Tensor, name: str) -> torch.Tensor:
    """Cast to the target type directly (bf16 -> f16 without an f32 detour; torch converts elementwise)."""
    dt = torch_dtype(name)
    return t if t.dtype == dt else t.to(dt)
