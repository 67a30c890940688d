"""The numba quantizers' plumbing: C float conversions, input dtypes, row chunks, NaN/Inf detection."""
import numpy as np
import pytest
import torch
from numba import njit

from weightsmith.errors import BadInput
from weightsmith.quant import cfloat, types


@njit
def _fp16_bits_all(x, out):
    for i in range(x.shape[0]):
        out[i] = cfloat.fp16_bits(x[i])


@njit
def _fp16_values_all(h, out):
    for i in range(h.shape[0]):
        out[i] = cfloat.fp16_value(h[i])


def test_fp16_conversion_matches_numpy():
    """Round to nearest even, overflow to inf, subnormals, signed zeros: every float32 within 2000 ulps of each
    power of two and of half's rounding thresholds, both signs; a NaN keeps its sign and payload's top, quietened
    (F16C's vcvtps2ph)."""
    starts = [e << 23 for e in range(256)] + [0x477FF000, 0x33000000, 0x38800000, 0x387FF000]
    u = np.concatenate([np.arange(max(s - 2000, 0), min(s + 2000, 0x80000000)) for s in starts])
    u = np.concatenate([u, u | 0x80000000]).astype(np.uint32)
    x = u.view(np.float32)
    got = np.empty(len(x), np.int64)
    _fp16_bits_all(x, got)
    nan = np.isnan(x)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.array_equal(got[nan], ((u[nan] >> 16) & 0x8000) | 0x7E00 | ((u[nan] & 0x7FFFFF) >> 13))
    h = np.arange(1 << 16)
    back = np.empty(len(h), np.float32)
    _fp16_values_all(h, back)
    want = h.astype(np.uint16).view(np.float16).astype(np.float32)
    assert np.array_equal(back.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_1", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_quantize_as_their_float32(type_name, dtype):
    x = torch.randn(48, 1024, generator=torch.Generator().manual_seed(1)).to(dtype)
    x[3, :256] = 0
    assert np.array_equal(types.quantize(x, type_name), types.quantize(x.float(), type_name))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q5_K"])
def test_row_chunks_equal_whole_tensor(type_name, monkeypatch):
    monkeypatch.setattr(types, "CHUNK", 4096)  # several slices per chunk, the last one short
    x = torch.randn(70, 768, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    whole, err = types.quantize_with_error(x, type_name)
    out = np.empty_like(whole)
    sums = [types.quantize_into(x[r:r + 16], type_name, out[r:r + 16]) for r in range(0, 70, 16)]
    assert np.array_equal(out, whole)
    assert types.relative(sum(e for e, _ in sums), sum(n for _, n in sums)) == pytest.approx(err, rel=1e-12)


def test_quantize_into_checks_out():
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        types.quantize_into(torch.zeros(4, 64), "Q8_0", np.empty((4, 67), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        types.quantize_into(torch.zeros(4, 64), "Q8_0", np.empty((4, 136), np.uint8)[:, ::2])


@pytest.mark.parametrize("type_name", list(types.REGISTRY))
def test_first_bad_value_is_named(type_name, monkeypatch):
    """Slices stop at their first NaN or Inf; the message names the matrix's first, whichever slice finds it."""
    monkeypatch.setattr(types, "CHUNK", 1024)
    x = torch.randn(32, 512)
    x[25, 3] = float("nan")
    x[7, 300] = float("-inf")
    x[7, 400] = float("nan")
    with pytest.raises(BadInput, match=r"blk\.0\.ffn_up\.weight: holds NaN or Inf \(first at index \[7, 300\]\)"):
        types.quantize(x.to(torch.bfloat16), type_name, "blk.0.ffn_up.weight")
