"""C's float conversions, reproduced exactly in torch (float32 arithmetic is IEEE in both)."""
import torch


def roundf(x: torch.Tensor) -> torch.Tensor:
    """C roundf: nearest, halves away from zero (torch.round goes to even). Exact: the fraction is exact in float."""
    t = torch.trunc(x)
    return t + torch.sign(x) * ((x - t).abs() >= 0.5)


def c_trunc_add(x: torch.Tensor, c: float) -> torch.Tensor:
    """(int)(x + c) with x + c rounded once to float32, as C computes it."""
    return torch.trunc(x + torch.tensor(c, dtype=torch.float32))


def fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """GGML_FP32_TO_FP16 (round to nearest even, inf on overflow) as little-endian bytes, shape [..., 2]."""
    return x.to(torch.float16).view(torch.uint8).reshape(*x.shape, 2)
