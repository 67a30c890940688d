"""dtypes.cast, the float casts a conversion streams through (numpy arrays, BF16 as uint16 bits, numba kernels),
against torch's casts and gguf-py's bfloat16 rounding, bit for bit."""
import numpy as np
import pytest
import torch

from weightsmith import dtypes

TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _f32_edges() -> np.ndarray:
    """Every float32 within 600 ulps of each power of two and of half's and bfloat16's rounding thresholds (ties
    included), both signs, plus inf and NaNs with payloads."""
    starts = [e << 23 for e in range(256)] + [0x477FF000, 0x33000000, 0x38800000, 0x387FF000, 0x7F7F8000]
    u = np.concatenate([np.arange(max(s - 600, 0), min(s + 600, 0x7F800001)) for s in starts])
    u = np.concatenate([u, [0x7FC00000, 0x7F800001, 0x7FA12345, 0x7FFFFFFF]])
    u = np.concatenate([u, u | 0x80000000])
    return np.concatenate([u, np.zeros(-len(u) % 4, u.dtype)]).astype(np.uint32).view(np.float32)  # rows of 4


def _sources():
    halves = np.arange(1 << 16, dtype=np.uint16)
    return {"BF16": halves, "F16": halves.view(np.float16), "F32": _f32_edges()}


@pytest.mark.parametrize("src", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("dst", ["F32", "F16", "BF16"])
def test_cast_matches_torch(src, dst):
    """All 65,536 bfloat16 and half values and the float32 rounding edges: the same bits as torch's .to(), NaN
    payloads included, except float32 NaN -> bfloat16, which torch spells 0x7FC0 or 0xFFFF by code path; there
    the bits are gguf-py's (sign and payload top kept, quietened), which is what llama.cpp's converter writes."""
    a = _sources()[src]
    got = dtypes.cast(a.reshape(-1, 4)[:, ::-1], dst)  # a strided view: cast copies, keeping the shape
    assert got.shape == (a.size // 4, 4) and dtypes.of_array(got) == dst
    want = dtypes.to_numpy(dtypes.to_torch(np.ascontiguousarray(a.reshape(-1, 4)[:, ::-1])).to(TORCH[dst]))
    bits = {4: np.uint32, 2: np.uint16}[got.itemsize]
    g, w = got.view(bits).reshape(-1), want.view(bits).reshape(-1)
    nan = np.isnan(dtypes.cast(a.reshape(-1, 4)[:, ::-1], "F32")).reshape(-1)
    if dst == "BF16" and src != "BF16":
        import gguf
        f = dtypes.cast(a, "F32")
        ref = gguf.quants.quantize(f.reshape(-1, 4), gguf.GGMLQuantizationType.BF16).view(np.uint16)
        assert np.array_equal(dtypes.cast(a, "BF16").reshape(-1), ref.reshape(-1))
        assert np.array_equal(g[~nan], w[~nan])
    else:
        assert np.array_equal(g, w)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dst", ["F32", "F16", "BF16"])
def test_integer_tensors_cast_like_torch(dtype, dst):
    """A checkpoint may store a tensor as I32/I64: its values, converted as torch converts them."""
    info = np.iinfo(dtype)
    a = np.concatenate([np.arange(-70000, 70000, 7), [info.min, info.max, 2**24 + 1, 65520, -65519, 0]]).astype(dtype)
    got = dtypes.cast(a.reshape(-1, 2), dst)
    want = dtypes.to_numpy(torch.from_numpy(a.reshape(-1, 2)).to(TORCH[dst]))
    assert got.shape == want.shape and np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_cast_same_type_is_the_array_and_torch_round_trip():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert dtypes.cast(a, "BF16") is a
    t = dtypes.to_torch(a)
    assert t.dtype == torch.bfloat16 and t.data_ptr() == a.ctypes.data
    assert dtypes.to_numpy(t) is not a and np.shares_memory(dtypes.to_numpy(t), a)
    i8 = np.array([-128, -3, 0, 5, 127], np.int8)  # I8 (W8A8 weights) casts as torch casts it
    assert np.array_equal(dtypes.cast(i8, "F16"), torch.from_numpy(i8).to(torch.float16).numpy())
