"""C's float conversions, reproduced exactly in torch (float32 arithmetic is IEEE in both)."""
import torch


HALF_BELOW = torch.tensor(0.49999997, dtype=torch.float32)  # the float just below 0.5


def roundf(x: torch.Tensor) -> torch.Tensor:
    """C roundf: nearest, halves away from zero (torch.round goes to even).

    trunc(x + copysign(0.49999997f, x)), with the add rounded once to float32: a fraction >= 0.5 carries over (an
    exact .5 lands halfway between two floats and rounds to the even, whole one), a fraction below 0.5 does not
    (its sum stays below the next integer by more than half a unit), and from 2^23 up every float is an integer."""
    return torch.trunc(x + torch.copysign(HALF_BELOW, x))


def c_trunc_add(x: torch.Tensor, c: float) -> torch.Tensor:
    """(int)(x + c) with x + c rounded once to float32, as C computes it."""
    return torch.trunc(x + torch.tensor(c, dtype=torch.float32))


def fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """GGML_FP32_TO_FP16 (round to nearest even, inf on overflow) as little-endian bytes, shape [..., 2]."""
    return x.to(torch.float16).view(torch.uint8).reshape(*x.shape, 2)


def f16(x: torch.Tensor) -> torch.Tensor:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)): the float32 value a stored half gives back."""
    return x.to(torch.float16).to(torch.float32)
