"""int8 / int4 / w8a8 / fp8 round-to-nearest streamed in row pieces (compressed.quantize_rows, numba) against the
whole-tensor torch quantization (compressed.quantize, itself checked against compressed-tensors in
test_compressed.py and test_w8a8_fp8.py): the same bytes piece by piece, on awkward rows, in every source dtype;
and whole conversions cut into many pieces equal to one-piece conversions and to the torch result, file for file.
"""
import subprocess
import sys

import numpy as np
import pytest
import torch
from oracles import hf_state

from weightsmith import dtypes
from weightsmith.convert import pipeline
from weightsmith.errors import BadInput
from weightsmith.quant import compressed

DT = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
SCHEMES = ["INT8", "INT4", "INT4-G32", "INT8-G64", "W8A8", "FP8"]
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")


def awkward(n_in: int, dt: torch.dtype) -> torch.Tensor:
    """37 rows (prime: no piece size divides them) of n_in values in dtype dt, the edge cases one per row."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(37, n_in, generator=g) * 10.0 ** torch.randint(-4, 3, (37, 1), generator=g).float()
    tiny = torch.finfo(dt).tiny  # the smallest normal: below it, dt's subnormals
    w[0] = 0
    w[1] = -0.0
    w[2, ::3] = -0.0
    w[3] = 3.0
    w[4] = torch.randn(n_in, generator=g) * tiny           # subnormal values in dt
    w[5] = torch.randn(n_in, generator=g) * tiny * 2 ** -6  # subnormal, and a scale that is 0 in dt (eps)
    w[6] = torch.arange(n_in) % 16 - 8.0                    # integers: halfway ties for int4
    w[7, ::2] = -w[7, 1::2]
    w[8, :n_in // 2] = 0                                    # a zero group beside a normal one
    w[9] = torch.linspace(-1, 1, n_in) * torch.finfo(dt).max / 2 if dt != torch.float32 else w[9] * 1e30
    w[10, 0] = -1.0                                         # a lone negative extreme (-amax / scale: -qrange)
    w[10, 1:] = 0.5
    return w.to(dt)


def torch_result(x: torch.Tensor, s, float_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = compressed.quantize(x, s, float_dtype)
    return _bits(p.packed), _bits(p.scale)


def _bits(t) -> torch.Tensor:
    """Any tensor or array as its raw bytes (fp8, bf16 and float compared bit for bit: -0.0 is not 0.0)."""
    t = dtypes.to_torch(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t.contiguous()
    return t.reshape(t.shape[0], -1).view(torch.uint8)


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("src,float_dtype", [("F32", "F32"), ("BF16", "BF16"), ("F16", "F16"),
                                             ("F32", "BF16"), ("F32", "F16"), ("BF16", "F16")])
def test_pieces_equal_whole_tensor_torch(name, src, float_dtype):
    """Rows 37 = 5 + 1 + 13 + 18; width 576 (SmolLM2's: int4's group falls back to 64). src != float_dtype: the
    values are rounded to the scale's dtype first, as quantize's w.to(dt) rounds them."""
    s = compressed.get(name)
    x = awkward(576, DT[src])
    if DT[float_dtype] == torch.float16 and src != "F16":  # keep the values within float16's range
        x = x.float().clamp(-6e4, 6e4).to(x.dtype)
    want_q, want_s = torch_result(x, s, float_dtype)
    a = dtypes.to_numpy(x)
    pieces = [compressed.quantize_rows(a[r0:r1], s, float_dtype) for r0, r1 in [(0, 5), (5, 6), (6, 19), (19, 37)]]
    got_q = torch.cat([_bits(p.packed) for p, _, _ in pieces])
    got_s = torch.cat([_bits(p.scale) for p, _, _ in pieces])
    for p, _, _ in pieces:
        fmt = compressed.FORMATS[s.format]
        assert p.packed.dtype == dtypes.numpy_dtype(fmt.storage) and p.scale.dtype == dtypes.numpy_dtype(float_dtype)
    assert torch.equal(got_q, want_q)
    assert torch.equal(got_s, want_s)
    # the error figure: the same sums as the torch dequantization gives
    p = compressed.quantize(x, s, float_dtype)
    back, xf = compressed.dequantize(p.packed, p.scale, s).double(), x.double()
    e2, n2 = sum(e for _, e, _ in pieces), sum(v for _, _, v in pieces)
    assert e2 == pytest.approx(float((back - xf).square().sum()), rel=1e-9)
    assert n2 == pytest.approx(float(xf.square().sum()), rel=1e-9)


@pytest.mark.parametrize("name", ["INT8", "INT4", "FP8"])
def test_non_finite_refused(name):
    s = compressed.get(name)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(6, 256)
        x[4, 200] = bad
        with pytest.raises(BadInput, match=r"blk.0.x.weight: holds NaN or Inf \(first at index \[4, 200\]\)"):
            compressed.quantize_rows(x.numpy(), s, "F32", "blk.0.x.weight")
    x = torch.ones(3, 256)
    x[1, 7] = 1e5  # finite in float32, beyond float16: the scale's dtype cannot hold it
    with pytest.raises(BadInput, match=r"\[1, 7\]"):
        compressed.quantize_rows(x.numpy(), s, "F16")


CASES = [("llama1", torch.bfloat16, "int4"),     # 4 heads of 16 rows; group 64 and (down_proj) 128
         ("llama2_70b", torch.float16, "int8"),  # GQA 32/4 heads of 8 rows
         ("llama2_70b", torch.bfloat16, "int4-g32"),
         ("llama32", torch.float32, "w8a8"),
         ("llama32", torch.bfloat16, "fp8")]


@pytest.mark.parametrize("family,dtype,type_", CASES)
def test_conversion_in_many_pieces(built, tmp_path, monkeypatch, family, dtype, type_):
    """PIECE_VALUES cut so that every matrix goes in several pieces (rope q/k: whole heads, one or two at a time;
    the others in runs of rows that do not divide their count): the files are byte for byte those of one piece per
    tensor, and every quantized weight is compressed.quantize's of the source's (HF-order) weight."""
    src = built.hf(family, dtype=dtype)
    one = tmp_path / "one"
    pipeline.convert(src, one, type_=type_, quiet=True)
    monkeypatch.setattr(pipeline, "PIECE_VALUES", 1500)
    many = tmp_path / "many"
    pipeline.convert(src, many, type_=type_, quiet=True)
    files = sorted(p.name for p in one.iterdir())
    assert files == sorted(p.name for p in many.iterdir())
    for f in files:
        assert (one / f).read_bytes() == (many / f).read_bytes(), f

    s = compressed.get(type_)
    name = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]
    before, after = hf_state(src), hf_state(many)
    n_layers = 2
    for i in range(n_layers):
        for proj in PROJ:
            m = f"model.layers.{i}.{proj}"
            want = compressed.quantize(before[m + ".weight"], s, name)
            for k, v in want.parts().items():
                assert _bits(after[f"{m}.{k}"]).equal(_bits(v)), (m, k)


def test_round_to_nearest_imports_no_torch(built, tmp_path):
    """A bf16 -> int8 conversion runs in numpy and numba alone: importing torch would cost a second and ~300 MB."""
    src = built.hf("llama2_70b", dtype=torch.bfloat16)
    code = ("import sys; from weightsmith.convert import pipeline; "
            f"pipeline.convert({str(src)!r}, {str(tmp_path / 'out')!r}, type_='int8', quiet=True); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_roundings_equal_torch():
    """The kernel's float32 -> bf16 / f16 rounding and e4m3fn conversion against torch's: on every 1021st float32
    bit pattern (4.2M of them, every exponent), every bf16 and f16 value, and the halfway points between them (the
    whole float32 range was checked once: identical)."""
    from numba import njit
    from weightsmith.quant import compressed_rows as k

    @njit
    def kernel(x, r16, rbf, f8, v8):
        for i in range(x.shape[0]):
            r16[i] = k.rnd(x[i], k.F16)
            rbf[i] = k.rnd(x[i], k.BF16)
            if abs(x[i]) <= np.float32(448.0):
                f8[i], v8[i] = k.fp8(x[i])

    bits = np.arange(0, 1 << 32, 1021, dtype=np.int64).astype(np.uint32)
    grid = [torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(d).float() for d in (torch.float16,
                                                                                                 torch.bfloat16)]
    x = torch.cat([torch.from_numpy(bits.view(np.float32)), *grid,
                   *((g[1:] + g[:-1]) / 2 for g in (gg.sort().values for gg in grid))])
    x = x[torch.isfinite(x)]
    r16, rbf, v8 = (torch.empty_like(x) for _ in range(3))
    f8 = torch.zeros(x.shape, dtype=torch.uint8)
    kernel(x.numpy(), r16.numpy(), rbf.numpy(), f8.numpy(), v8.numpy())
    as_int = lambda t: t.view(torch.int32)  # noqa: E731  (-0.0 and 0.0 differ)
    assert torch.equal(as_int(r16), as_int(x.to(torch.float16).float()))
    assert torch.equal(as_int(rbf), as_int(x.to(torch.bfloat16).float()))
    m = x.abs() <= 448
    want = x[m].to(torch.float8_e4m3fn)
    assert torch.equal(f8[m], want.view(torch.uint8))
    assert torch.equal(as_int(v8[m]), as_int(want.float()))
